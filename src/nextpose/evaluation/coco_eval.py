"""COCO keypoint evaluation as the reference's CocoMetric does it (§7.1-7.6).

Per-instance predictions are grouped by image, de-duplicated by instance id, rescored
(``bbox_keypoint`` mode), thinned by OKS-NMS per image, written as a COCO results list and scored
with pycocotools' ``COCOeval`` (``iouType='keypoints'``), set up to behave like the reference's
xtcocotools: float32 sigmas, ground truth ignored when no keypoint has ``v > 0``, detections whose
keypoint scores are all ``<= 0`` dropped, at most 20 detections per image, and results that carry a
``bbox`` so that a detection's area (for the medium/large ranges) is its box area.
"""

import contextlib
import functools
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data.coco import are_json_numbers, is_json_number, load_json
from ..errors import AnnotationError, InputError, require
from ..fileio import atomic_write_text
from ..keypoints import COCO_KEYPOINTS
from .oks_nms import TIE_ORDERS, TieOrder, oks_nms, pairwise_prefix_sums, rescore, soft_oks_nms

METRIC_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
"""Keys of the metric dict, in pycocotools' ``stats`` order (mmpose: ``AP``, ``AP .5``, ...)."""

MMPOSE_METRIC_NAMES = {
    "AP": "coco/AP",
    "AP50": "coco/AP .5",
    "AP75": "coco/AP .75",
    "APm": "coco/AP (M)",
    "APl": "coco/AP (L)",
    "AR": "coco/AR",
    "AR50": "coco/AR .5",
    "AR75": "coco/AR .75",
    "ARm": "coco/AR (M)",
    "ARl": "coco/AR (L)",
}
"""Our metric names -> the names the reference reports."""

NmsMode = Literal["oks", "soft_oks", "none"]


@dataclass
class PosePrediction:
    """One evaluated person instance, as the metric receives it (§7.1). Its numbers are kept in
    float32, the model's output type, which the metric's arithmetic follows; float64 values are
    rounded to float32 first (the reference would compute on float64 inputs in float64).

    Attributes:
        id: instance id (annotation id for ground-truth boxes, running detection index otherwise);
            used to sort and de-duplicate inside an image.
        img_id: COCO image id.
        keypoints: (K, 2) float32 image pixels.
        keypoint_scores: (K,) float32 confidences.
        bbox_xyxy: (4,) float32 person box, image pixels.
        bbox_score: detector score (float32 value), 1 for ground-truth boxes.
        area: float32 product of the crop scale (padded, aspect-fixed), px^2; the OKS-NMS area.
        category_id: COCO category written to the results.
    """

    id: int
    img_id: int
    keypoints: np.ndarray
    keypoint_scores: np.ndarray
    bbox_xyxy: np.ndarray
    bbox_score: float
    area: float
    category_id: int = 1

    def __post_init__(self) -> None:
        self.keypoints = np.asarray(self.keypoints, dtype=np.float32).reshape(-1, 2)
        self.keypoint_scores = np.asarray(self.keypoint_scores, dtype=np.float32).reshape(-1)
        self.bbox_xyxy = np.asarray(self.bbox_xyxy, dtype=np.float32).reshape(4)
        self.bbox_score = float(np.float32(self.bbox_score))
        self.area = float(np.float32(self.area))
        if len(self.keypoint_scores) != len(self.keypoints):
            raise ValueError(
                f"instance {self.id}: {len(self.keypoints)} keypoints but "
                f"{len(self.keypoint_scores)} keypoint scores"
            )


def scale_area(scale: Sequence[float] | np.ndarray) -> float:
    """float32 product ``w * h`` of a (2,) crop scale (padded, aspect-fixed), px^2 (§7.1)."""
    s = np.asarray(scale, dtype=np.float32).reshape(2)
    return float(s[0] * s[1])


def predictions_from_arrays(
    ids: Sequence[int] | np.ndarray,
    img_ids: Sequence[int] | np.ndarray,
    keypoints: np.ndarray,
    keypoint_scores: np.ndarray,
    bboxes: np.ndarray,
    bbox_scores: np.ndarray,
    scales: np.ndarray,
    category_ids: Sequence[int] | np.ndarray | None = None,
) -> list[PosePrediction]:
    """Per-instance records from batched arrays (e.g. a ``Poses`` plus ids).

    Args:
        ids, img_ids: (N,) instance ids and image ids.
        keypoints: (N, K, 2) image pixels; keypoint_scores: (N, K).
        bboxes: (N, 4) xyxy; bbox_scores: (N,).
        scales: (N, 2) padded, aspect-fixed crop scales (their product is the NMS area).
        category_ids: (N,) categories, all 1 when omitted.
    """
    kpts = np.asarray(keypoints, dtype=np.float32)
    scores = np.asarray(keypoint_scores, dtype=np.float32)
    boxes = np.asarray(bboxes, dtype=np.float32).reshape(-1, 4)
    box_scores = np.asarray(bbox_scores, dtype=np.float32).reshape(-1)
    sc = np.asarray(scales, dtype=np.float32).reshape(-1, 2)
    n = len(kpts)
    cats = [1] * n if category_ids is None else list(category_ids)
    lengths = {len(ids), len(img_ids), len(scores), len(boxes), len(box_scores), len(sc), len(cats)}
    if lengths != {n}:
        raise ValueError("predictions_from_arrays: all inputs need one entry per instance")
    areas = sc[:, 0] * sc[:, 1]
    return [
        PosePrediction(
            id=int(ids[i]),
            img_id=int(img_ids[i]),
            keypoints=kpts[i],
            keypoint_scores=scores[i],
            bbox_xyxy=boxes[i],
            bbox_score=box_scores[i],
            area=areas[i],
            category_id=int(cats[i]),
        )
        for i in range(n)
    ]


def group_by_image(predictions: Iterable[PosePrediction]) -> dict[int, list[PosePrediction]]:
    """Group by image (first-appearance order), sort each group by id, drop repeated ids (7.2).

    The sort is stable; of two instances with the same id in one image the later one is dropped.
    """
    groups: dict[int, list[PosePrediction]] = {}
    for p in predictions:
        groups.setdefault(p.img_id, []).append(p)
    for img_id, group in groups.items():
        group = sorted(group, key=lambda p: p.id)
        groups[img_id] = [p for j, p in enumerate(group) if j == 0 or p.id != group[j - 1].id]
    return groups


def _result_entry(p: PosePrediction, score: float) -> dict[str, Any]:
    x1, y1, x2, y2 = p.bbox_xyxy
    xywh = np.array([x1, y1, x2 - x1, y2 - y1], dtype=np.float32)
    kpts = np.concatenate([p.keypoints, p.keypoint_scores[:, None]], axis=1)
    return {
        "image_id": p.img_id,
        "category_id": p.category_id,
        "keypoints": kpts.reshape(-1).tolist(),
        "score": float(score),
        "bbox": xywh.tolist(),
    }


def build_results(
    predictions: Iterable[PosePrediction],
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
    score_threshold: float = 0.2,
    sigmas: np.ndarray | None = None,
    tie_order: TieOrder = "stable",
) -> list[dict[str, Any]]:
    """COCO keypoint results after grouping, rescoring and per-image NMS (§7.2-7.5).

    Args:
        predictions: per-instance records, in dataset order.
        nms: ``"oks"`` (greedy), ``"soft_oks"`` (Gaussian decay, at most 20 per image) or
            ``"none"``.
        nms_threshold: OKS threshold of ``"oks"``; decay parameter of ``"soft_oks"``.
        score_threshold: keypoint scores count in the instance score only when ``> threshold``.
        sigmas: (K,) OKS sigmas; the COCO-17 float32 sigmas when omitted.
        tie_order: how NMS orders instances of one image with exactly equal scores:
            ``"stable"`` (default; highest index first, the same on every machine) or
            ``"numpy"`` (NumPy's default argsort, as the reference; depends on the CPU's SIMD
            sort and the NumPy version). Only ties change anything, and they practically only
            occur between instances scored 0 (no keypoint above ``score_threshold``).

    Returns:
        One dict per kept instance (``image_id, category_id, keypoints`` as K*3 floats,
        ``score, bbox`` as xywh), images in first-appearance order, each image in keep order.
    """
    if nms not in ("oks", "soft_oks", "none"):
        raise InputError(f"nms must be 'oks', 'soft_oks' or 'none', got {nms!r}")
    if tie_order not in TIE_ORDERS:
        raise InputError(f"tie_order must be one of {TIE_ORDERS}, got {tie_order!r}")
    sig = _sigmas(sigmas)
    results: list[dict[str, Any]] = []
    for group in group_by_image(predictions).values():
        k = len(group[0].keypoints)
        if any(len(p.keypoints) != k for p in group) or k != len(sig):
            raise ValueError(
                f"image {group[0].img_id}: every instance needs {len(sig)} keypoints "
                "(one per OKS sigma)"
            )
        kpt_scores = np.stack([p.keypoint_scores for p in group])
        box_scores = np.array([p.bbox_score for p in group], dtype=np.float32)
        scores = rescore(kpt_scores, box_scores, score_threshold)
        if nms == "none":
            keep = np.arange(len(group))
        else:
            kpts = np.stack([p.keypoints for p in group])
            areas = np.array([p.area for p in group], dtype=np.float32)
            if nms == "oks":
                keep = oks_nms(kpts, scores, areas, sig, nms_threshold, tie_order=tie_order)
            else:
                keep = soft_oks_nms(
                    kpts, scores, areas, sig, sigma=nms_threshold, tie_order=tie_order
                )
        results.extend(_result_entry(group[i], scores[i]) for i in keep)
    return results


_RESULT_KEYS = ("bbox", "category_id", "image_id", "keypoints", "score")


def _dumps_results(results: list[dict[str, Any]]) -> str | None:
    """``json.dumps(results, sort_keys=True, indent=4)`` for build_results' entries, ~2x faster.

    Python's json module drops to its pure-Python encoder whenever ``indent`` is set; here each
    number is written with ``float.__repr__``/``int.__repr__`` (what json writes for finite
    numbers) and joined with the same separators. Returns None for anything else (another key set,
    a non-float coordinate, NaN/inf), which the caller then writes with json itself.
    """
    if not results:
        return "[]"
    fl, it = float.__repr__, int.__repr__
    sep = ",\n            "
    parts = []
    try:
        for r in results:
            if len(r) != 5 or tuple(sorted(r)) != _RESULT_KEYS:
                return None
            if type(r["image_id"]) is not int or type(r["category_id"]) is not int:
                return None
            if not r["bbox"] or not r["keypoints"]:
                return None
            bbox = sep.join(map(fl, r["bbox"]))
            kpts = sep.join(map(fl, r["keypoints"]))
            score = fl(r["score"])
            if "n" in bbox or "n" in kpts or "n" in score:  # nan, inf: json writes NaN, Infinity
                return None
            parts.append(
                '    {\n        "bbox": [\n            '
                + bbox
                + '\n        ],\n        "category_id": '
                + it(r["category_id"])
                + ',\n        "image_id": '
                + it(r["image_id"])
                + ',\n        "keypoints": [\n            '
                + kpts
                + '\n        ],\n        "score": '
                + score
                + "\n    }"
            )
    except TypeError:  # a number that is not a float (or an int where one is expected)
        return None
    return "[\n" + ",\n".join(parts) + "\n]"


def write_results(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Write a results list as the reference does: JSON, sorted keys, indent 4, no final newline.

    The bytes are those of ``json.dump(results, f, sort_keys=True, indent=4)``; the results of
    :func:`build_results` take a fast path that writes the same text.
    """
    text = _dumps_results(results)
    if text is None:
        text = json.dumps(results, sort_keys=True, indent=4)
    return atomic_write_text(path, text)


def _sigmas(sigmas: np.ndarray | Sequence[float] | None) -> np.ndarray:
    if sigmas is None:
        return COCO_KEYPOINTS.sigmas_array()
    return np.asarray(sigmas, dtype=np.float32).reshape(-1)


# ---- ground truth and results, checked and prepared for COCOeval -------------------------------

Evaluator = Literal["auto", "faster_coco_eval", "pycocotools"]
EVALUATORS = ("auto", "faster_coco_eval", "pycocotools")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _numbers(value: Any, n: int | None = None, at_least: int | None = None) -> bool:
    """A list of finite JSON numbers (exactly ``n`` long, or at least ``at_least``)."""
    if not isinstance(value, list):
        return False
    if (n is not None and len(value) != n) or (at_least is not None and len(value) < at_least):
        return False
    return are_json_numbers(value)


def prepare_ground_truth(data: Any, source: str, num_keypoints: int = 17) -> dict[str, Any]:
    """A COCO keypoint ground truth, checked, in the form the evaluators are given.

    The reference's xtcocotools reads what pycocotools and faster-coco-eval read differently; the
    prepared copy makes them agree with it:

    * annotation ids are renumbered ``1..n`` in file order. pycocotools (and faster-coco-eval)
      mark a detection as matched by storing the ground truth's id and reading non-zero as
      "matched", so a detection matched to annotation id 0 would count as a false positive;
      xtcocotools marks unmatched with -1 and scores it as a true positive. Negative ids, which
      xtcocotools itself scores as false positives, are refused;
    * a missing ``iscrowd`` is 0 (xtcocotools sets it to False when loading);
    * ``num_keypoints`` is recomputed as the count of ``v > 0`` (xtcocotools ignores a ground
      truth by that count; the others trust the field).

    Everything the evaluation reads is checked (:class:`AnnotationError` naming ``source``, the
    entry and the problem): ``images`` with integer ids, a ``categories`` list, and per annotation
    an integer ``id``/``image_id``/``category_id``, ``keypoints`` (3K finite numbers), ``area``
    (a finite number), ``bbox`` (4 finite numbers) and ``iscrowd`` (a number or boolean;
    non-zero is a crowd, as in xtcocotools) if given.
    Other fields (``segmentation``: polygons or RLE) play no part in keypoint evaluation.
    """
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{source}: not a COCO annotation file (no 'images' list)")
    categories = data.get("categories")
    if not isinstance(categories, list):
        raise AnnotationError(
            f"{source}: no 'categories' list (COCO evaluation scores each category listed there, "
            "e.g. [{'id': 1, 'name': 'person'}])"
        )
    cats = []
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not _is_int(cat.get("id")):
            raise AnnotationError(
                f"{source}: categories[{i}] needs an integer 'id', got {cat!r:.80}"
            )
        cats.append(dict(cat))
    images, image_ids = [], set()
    for i, img in enumerate(data["images"]):
        image_id = img.get("id") if isinstance(img, dict) else None
        if not _is_int(image_id):
            raise AnnotationError(f"{source}: images[{i}] needs an integer 'id', got {img!r:.80}")
        if image_id in image_ids:
            raise AnnotationError(f"{source}: images[{i}]: duplicate image id {image_id}")
        image_ids.add(image_id)
        images.append({k: img[k] for k in ("id", "width", "height") if k in img})
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise AnnotationError(f"{source}: 'annotations' must be a list")
    k3 = 3 * num_keypoints
    anns, seen = [], {}
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            raise AnnotationError(f"{source}: annotations[{i}] is not an object: {ann!r:.80}")
        ann_id = ann.get("id")
        where = f"{source}: annotations[{i}] (id {ann_id!r:.40})"
        if not _is_int(ann_id):
            raise AnnotationError(f"{where}: needs an integer 'id'")
        if ann_id < 0:
            raise AnnotationError(
                f"{where}: negative annotation id; the reference's COCOeval scores detections "
                "matched to it as false positives. Number annotations from 0 or 1"
            )
        if ann_id in seen:
            raise AnnotationError(
                f"{where}: duplicate annotation id (annotations[{seen[ann_id]}] has it too)"
            )
        seen[ann_id] = i
        image_id = ann.get("image_id")
        if not _is_int(image_id) or image_id not in image_ids:
            raise AnnotationError(
                f"{where}: 'image_id' {image_id!r:.40} is not the integer id of an image "
                "in 'images'"
            )
        if not _is_int(ann.get("category_id")):
            raise AnnotationError(f"{where}: needs an integer 'category_id'")
        kpts = ann.get("keypoints")
        if not _numbers(kpts, k3):
            raise AnnotationError(
                f"{where}: 'keypoints' must be {k3} finite numbers (x, y, v per keypoint), "
                f"got {kpts!r:.80}"
            )
        area = ann.get("area")
        if not is_json_number(area):
            raise AnnotationError(
                f"{where}: 'area' must be a finite number (the OKS scale), got {area!r:.80}"
            )
        bbox = ann.get("bbox")
        if not _numbers(bbox, 4):
            raise AnnotationError(
                f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {bbox!r:.80}"
            )
        iscrowd = ann.get("iscrowd", 0)
        if not (isinstance(iscrowd, bool) or is_json_number(iscrowd)):
            raise AnnotationError(
                f"{where}: 'iscrowd' must be 0 or 1 (a number), got {iscrowd!r:.40}"
            )
        anns.append(
            {
                "id": i + 1,
                "image_id": image_id,
                "category_id": ann["category_id"],
                # floats: a list of Python ints beyond int64 would become an object array
                "keypoints": [float(v) for v in kpts],
                "num_keypoints": sum(1 for v in kpts[2::3] if v > 0),
                "area": float(area),
                "bbox": [float(v) for v in bbox],
                "iscrowd": int(bool(iscrowd)),  # non-zero is a crowd, as in xtcocotools
            }
        )
    return {"images": images, "annotations": anns, "categories": cats}


def read_ground_truth(ann_file: str | Path, num_keypoints: int = 17) -> dict[str, Any]:
    """The ground truth of ``ann_file`` checked and prepared as the metric uses it (see
    :func:`prepare_ground_truth`); an :class:`AnnotationError` names what is wrong."""
    return prepare_ground_truth(
        load_json(Path(ann_file), "annotation"), str(ann_file), num_keypoints
    )


def _check_results(results: Any, k: int, source: str = "results") -> None:
    """Reject what the evaluators would crash on or misread, naming ``source`` and the entry.

    Each result needs an integer ``image_id`` and ``category_id``, ``keypoints`` (3K finite
    numbers) and a finite ``score``. When the first result has a non-empty ``bbox`` the reference
    takes every result's detection area from its box, so then every result needs a ``bbox`` of 4
    finite numbers (more are ignored, as the reference does).
    """
    if not isinstance(results, list):
        raise AnnotationError(f"{source}: COCO keypoint results are a JSON list")
    first = results[0] if results else None
    uses_bbox = isinstance(first, dict) and "bbox" in first and first["bbox"] != []
    for i, r in enumerate(results):
        ok = (
            isinstance(r, dict)
            and _is_int(r.get("image_id"))
            and _numbers(r.get("keypoints"), 3 * k)
            and is_json_number(r.get("score"))
        )
        if not ok:
            raise AnnotationError(
                f"{source}: result {i} must be {{'image_id': int, 'keypoints': [{3 * k} finite "
                f"numbers: x, y, score per keypoint], 'score': number}}, got {r!r:.100}"
            )
        if not _is_int(r.get("category_id")):
            raise AnnotationError(
                f"{source}: result {i} needs an integer 'category_id', got "
                f"{r.get('category_id')!r:.40}"
            )
        if uses_bbox and not _numbers(r.get("bbox"), at_least=4):
            raise AnnotationError(
                f"{source}: result {i}: 'bbox' must be [x, y, w, h] (finite numbers; result 0 has "
                f"one, so every result needs one), got {r.get('bbox')!r:.80}"
            )


def fast_evaluator_available() -> bool:
    """Whether faster-coco-eval (``pip install "nextpose[fast-eval]"``) can be imported."""
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_evaluator(evaluator: str) -> str:
    if evaluator not in EVALUATORS:
        raise InputError(f"evaluator must be one of {EVALUATORS}, got {evaluator!r}")
    if evaluator == "auto":
        return "faster_coco_eval" if fast_evaluator_available() else "pycocotools"
    if evaluator == "faster_coco_eval" and not fast_evaluator_available():
        require("faster_coco_eval", "fast-eval", "evaluator='faster_coco_eval'")
    return evaluator


def _stats_pycocotools(gt: dict, dets: list[dict], sig: np.ndarray) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = sig
        coco_eval.params.maxDets = [20]
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return np.asarray(coco_eval.stats[:10], dtype=np.float64)


def _quiet(*args: Any, **kwargs: Any) -> None:
    return None


def _keypoint_oks(coco_eval: Any, img_id: int, cat_id: int) -> np.ndarray | list:
    """faster-coco-eval's ``computeOks`` for one image, bit for bit, vectorised over its ground
    truth (its own loops over ground truth and detections with ``np.sum`` per pair).

    Returns the (D, G) float64 OKS of the image's first ``maxDets`` detections (stable
    descending score) against its ground truth, or ``[]`` when either is empty, as it does.
    """
    p = coco_eval.params
    gts = coco_eval.gt_dataset.get(img_id, cat_id)
    dts = coco_eval.dt_dataset.get(img_id, cat_id)
    order = np.argsort([-d["score"] for d in dts], kind="mergesort")
    dts = [dts[i] for i in order][: p.maxDets[-1]]
    if len(gts) == 0 or len(dts) == 0:
        return []
    variances = (p.kpt_oks_sigmas * 2) ** 2
    d = np.asarray([dt["keypoints"] for dt in dts])
    g = np.asarray([gt["keypoints"] for gt in gts])
    xd, yd = d[:, None, 0::3], d[:, None, 1::3]  # (D, 1, K)
    xg, yg, vg = g[None, :, 0::3], g[None, :, 1::3], g[:, 2::3]  # (1, G, K), (G, K)
    labelled = vg > 0
    counts = np.count_nonzero(labelled, axis=1)
    dx, dy = xd - xg, yd - yg  # (D, G, K)
    unlabelled = counts == 0
    if unlabelled.any():  # distance to the ground-truth box doubled on each side instead
        bb = np.asarray([gt["bbox"] for gt in gts], dtype=np.float64)[None, :, :, None]
        x0, x1 = bb[:, :, 0] - bb[:, :, 2], bb[:, :, 0] + bb[:, :, 2] * 2
        y0, y1 = bb[:, :, 1] - bb[:, :, 3], bb[:, :, 1] + bb[:, :, 3] * 2
        z = np.zeros_like(dx)
        bx = np.maximum(z, x0 - xd) + np.maximum(z, xd - x1)
        by = np.maximum(z, y0 - yd) + np.maximum(z, yd - y1)
        dx[:, unlabelled], dy[:, unlabelled] = bx[:, unlabelled], by[:, unlabelled]
    if coco_eval.use_area:
        scale = np.asarray([gt["area"] for gt in gts], dtype=np.float64)
    else:
        scale = np.asarray([gt["bbox"][3] * gt["bbox"][2] * 0.53 for gt in gts], np.float64)
    e = (dx**2 + dy**2) / variances / (scale[None, :, None] + np.spacing(1)) / 2
    t = np.exp(-e)
    # Each pair sums the terms of the labelled keypoints (all K for an unlabelled ground
    # truth), packed to the front of the row in keypoint order, as the row NumPy sums.
    k = t.shape[2]
    used = labelled | unlabelled[:, None]
    n_used = np.where(unlabelled, k, counts)
    pos = np.argsort(~used, axis=1, kind="stable")  # used keypoints first, in order
    packed = np.take_along_axis(t, pos[None], axis=2)
    packed[:, np.arange(k)[None, :] >= n_used[:, None]] = 0.0
    rows = packed.reshape(-1, k)
    total = pairwise_prefix_sums(np.ascontiguousarray(rows), np.tile(n_used, len(dts)))
    return total.reshape(len(dts), len(gts)) / n_used[None, :]


def _stats_faster(gt: dict, dets: list[dict], sig: np.ndarray) -> np.ndarray:
    """faster-coco-eval's OKS and per-image matching (C++), then xtcocotools' accumulation.

    faster-coco-eval's own accumulation computes precision as ``tp / (tp + fp)``; xtcocotools
    (and pycocotools) divide by ``tp + fp + 2^-52``, which moves AP in the last bits. The
    per-image matches are read back and accumulated exactly as xtcocotools does (:func:`_summary`).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    coco_gt = COCO(gt, print_function=_quiet)
    coco_dt = coco_gt.loadRes(dets)
    coco_eval = COCOeval_faster(
        coco_gt, coco_dt, iouType="keypoints", kpt_oks_sigmas=sig, use_area=True,
        print_function=_quiet, separate_eval=True,
    )  # fmt: skip
    # xtcocotools scores every listed category (faster-coco-eval: those with annotations).
    coco_eval.params.catIds = sorted(coco_gt.getCatIds())
    coco_eval.params.maxDets = [20]
    coco_eval.computeOks = functools.partial(_keypoint_oks, coco_eval)
    coco_eval.evaluate()
    p = coco_eval.params
    n_img, n_area = len(p.imgIds), len(p.areaRng)
    states = [e.__getstate__() for e in coco_eval._evalImgs_cpp]
    per_ka = [
        [states[(c * n_area + a) * n_img : (c * n_area + a + 1) * n_img] for a in range(n_area)]
        for c in range(len(p.catIds))
    ]
    return _summary(per_ka, len(p.iouThrs), np.asarray(p.recThrs, dtype=np.float64))


def _precision_recall(states: list[tuple], t_count: int, rec_thrs: np.ndarray):
    """xtcocotools' accumulate for one category and area range: (T, R) precision, (T,) recall,
    or None when the range has no ground truth that is not ignored (the entries stay -1)."""
    gt_ig = [ig for st in states for ig in st[3]]
    npig = len(gt_ig) - sum(gt_ig)
    if npig == 0:
        return None
    counts = np.array([len(st[2]) for st in states], dtype=np.int64)
    n = int(counts.sum())
    r_count = len(rec_thrs)
    if n == 0:
        return np.zeros((t_count, r_count)), np.zeros(t_count)
    scores = np.fromiter((v for st in states for v in st[2]), np.float64, n)
    matches = np.fromiter((v for st in states for v in st[0]), np.int64, n * t_count)
    ignores = np.fromiter((v for st in states for v in st[4]), bool, n * t_count)
    # Column j of the (T, n) matrices: image i's detection d sits at T*offset_i + t*D_i + d.
    offsets = np.repeat(np.cumsum(counts) - counts, counts)
    local = np.arange(n) - offsets
    per_image = np.repeat(counts, counts)
    index = t_count * offsets + np.arange(t_count)[:, None] * per_image + local
    order = np.argsort(-scores, kind="mergesort")
    dtm = matches[index][:, order]
    dt_ig = ignores[index][:, order]
    tps = np.logical_and(dtm > 0, np.logical_not(dt_ig))
    fps = np.logical_and(dtm == 0, np.logical_not(dt_ig))
    tp = np.cumsum(tps, axis=1).astype(np.float64)
    fp = np.cumsum(fps, axis=1).astype(np.float64)
    rc = tp / npig
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # p[i-1] = max(p[i-1], p[i])
    precision = np.zeros((t_count, r_count))
    for t in range(t_count):
        inds = np.searchsorted(rc[t], rec_thrs, side="left")
        valid = inds < n
        precision[t, valid] = pr[t, inds[valid]]
    return precision, rc[:, -1].copy()


def _summary(per_ka: list[list[list[tuple]]], t_count: int, rec_thrs: np.ndarray) -> np.ndarray:
    """The ten keypoint numbers from per-image matches, computed as xtcocotools' accumulate and
    summarize do (same arrays, same -1 entries, same means)."""
    k_count, a_count = len(per_ka), len(per_ka[0]) if per_ka else 3
    precision = -np.ones((t_count, len(rec_thrs), k_count, a_count, 1))
    recall = -np.ones((t_count, k_count, a_count, 1))
    for k, per_a in enumerate(per_ka):
        for a, states in enumerate(per_a):
            out = _precision_recall(states, t_count, rec_thrs)
            if out is not None:
                precision[:, :, k, a, 0], recall[:, k, a, 0] = out

    def mean(s: np.ndarray) -> float:
        return -1.0 if len(s[s > -1]) == 0 else float(np.mean(s[s > -1]))

    t50, t75 = 0, 5  # linspace(0.5, 0.95, 10)[0] == 0.5, [5] == 0.75
    stats = []
    for a in (0, 0, 0, 1, 2):
        stats.append(precision[:, :, :, a, 0])
    stats[1], stats[2] = precision[[t50], :, :, 0, 0], precision[[t75], :, :, 0, 0]
    rec = [recall[:, :, 0, 0], recall[[t50], :, 0, 0], recall[[t75], :, 0, 0]]
    rec += [recall[:, :, 1, 0], recall[:, :, 2, 0]]
    return np.array([mean(s) for s in stats + rec])


def _stats_without_detections(gt: dict) -> np.ndarray:
    """What COCOeval gives with no detection: 0 where an area range has a ground truth that is
    not ignored (crowd, or no labelled keypoint), -1 where it has none."""
    listed = {c["id"] for c in gt["categories"]}
    out = []
    for lo, hi in ((0.0, 1e10), (32.0**2, 96.0**2), (96.0**2, 1e10)):
        present = any(
            not a["iscrowd"] and a["num_keypoints"] > 0 and lo <= a["area"] <= hi
            for a in gt["annotations"]
            if a["category_id"] in listed
        )
        out.append(0.0 if present else -1.0)
    all_, medium, large = out
    return np.array([all_, all_, all_, medium, large, all_, all_, all_, medium, large])


def evaluate_results(
    results: list[dict[str, Any]],
    ann_file: str | Path,
    sigmas: np.ndarray | Sequence[float] | None = None,
    evaluator: Evaluator = "auto",
    *,
    ground_truth: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Score COCO keypoint results against a ground-truth file as the reference does (§7.6).

    Args:
        results: dicts with ``image_id, category_id, keypoints`` (K*3), ``score`` and, as the
            reference writes them, ``bbox`` (xywh; its area is the detection area for M/L).
        ann_file: COCO person-keypoints annotation file (checked and prepared by
            :func:`prepare_ground_truth`).
        sigmas: (K,) OKS sigmas; the COCO-17 float32 sigmas when omitted.
        evaluator: ``"faster_coco_eval"`` (C++ matching and accumulation; the optional
            ``fast-eval`` extra), ``"pycocotools"``, or ``"auto"``: the first when installed.
            Both give the same ten numbers (set up like xtcocotools: float32 sigmas, ground truth
            ignored when no keypoint has ``v > 0``, detections whose keypoint scores are all
            ``<= 0`` dropped, at most 20 detections per image, detection area = box area).
        ground_truth: ``ann_file`` as :func:`read_ground_truth` returns it, when read already
            (the file is then not read again).

    Returns:
        ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` as floats; -1 where the area range
        has no ground truth, as the reference reports. With no result that has a positive keypoint
        score a warning is given and the numbers are 0 (or -1 for ranges without ground truth).
    """
    sig = _sigmas(sigmas)
    which = _resolve_evaluator(evaluator)
    _check_results(results, len(sig))
    gt = read_ground_truth(ann_file, len(sig)) if ground_truth is None else ground_truth
    known = {img["id"] for img in gt["images"]}
    unknown = {r["image_id"] for r in results} - known
    if unknown:
        raise AnnotationError(f"results refer to images not in {ann_file}: {sorted(unknown)[:5]}")
    # The reference's COCOeval skips detections with no positive keypoint score.
    kept = [dict(r) for r in results if any(v > 0 for v in r["keypoints"][2::3])]
    if not kept:
        warnings.warn(
            "COCO keypoint evaluation: "
            + ("no predictions" if not results else "no prediction has a keypoint score > 0")
            + "; AP and AR are 0 (-1 for area ranges without ground truth)",
            stacklevel=2,
        )
        stats = _stats_without_detections(gt)
    elif which == "faster_coco_eval":
        try:
            stats = _stats_faster(gt, kept, sig)
        except (AttributeError, TypeError, IndexError):
            if evaluator != "auto":
                raise
            # A faster-coco-eval whose internals differ from the 1.x this was written for.
            stats = _stats_pycocotools(gt, [dict(r) for r in kept], sig)
    else:
        stats = _stats_pycocotools(gt, kept, sig)
    return {name: float(v) for name, v in zip(METRIC_NAMES, stats, strict=True)}


def evaluate_predictions(
    predictions: Iterable[PosePrediction],
    ann_file: str | Path,
    out_dir: str | Path | None = None,
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
    score_threshold: float = 0.2,
    sigmas: np.ndarray | Sequence[float] | None = None,
    tie_order: TieOrder = "stable",
    evaluator: Evaluator = "auto",
    *,
    ground_truth: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The reference's CocoMetric: rescoring, per-image NMS, results file, COCO keypoint AP/AR.

    Args:
        predictions: per-instance records (:class:`PosePrediction`), in dataset order.
        ann_file: COCO person-keypoints annotation file (ground truth).
        out_dir: when given, the results are written to ``out_dir/keypoints.json``.
        nms, nms_threshold, score_threshold, sigmas, tie_order: see :func:`build_results`.
        evaluator, ground_truth: see :func:`evaluate_results`.

    Returns:
        The ten metrics of :func:`evaluate_results`; zeros and a warning for no predictions.
    """
    sig = _sigmas(sigmas)
    _resolve_evaluator(evaluator)  # refuse a bad choice before the work
    results = build_results(predictions, nms, nms_threshold, score_threshold, sig, tie_order)
    metrics = evaluate_results(results, ann_file, sig, evaluator, ground_truth=ground_truth)
    if out_dir is not None:  # once scored: a ground truth the metric refuses replaces nothing
        write_results(results, Path(out_dir) / "keypoints.json")
    return metrics


def score_results_file(
    results_json: str | Path,
    ann_file: str | Path,
    sigmas: np.ndarray | Sequence[float] | None = None,
    evaluator: Evaluator = "auto",
) -> dict[str, float]:
    """Score a COCO keypoint results file without a model (see :func:`evaluate_results`)."""
    results = load_json(Path(results_json), "results")
    num_keypoints = len(_sigmas(sigmas))
    _check_results(results, num_keypoints, str(results_json))
    gt = read_ground_truth(ann_file, num_keypoints)
    known = {img["id"] for img in gt["images"]}
    first = next((i for i, r in enumerate(results) if r["image_id"] not in known), None)
    if first is not None:
        unknown = sorted({r["image_id"] for r in results} - known)
        raise AnnotationError(
            f"{results_json}: result {first} is of image_id {results[first]['image_id']}, not "
            f"in {ann_file} ({len(unknown)} unknown image ids: {unknown[:5]})"
        )
    return evaluate_results(results, ann_file, sigmas, evaluator, ground_truth=gt)
