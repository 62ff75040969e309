"""COCO keypoint evaluation as the reference's CocoMetric does it (spec 7.1-7.6).

Per-instance predictions are grouped by image, de-duplicated by instance id, rescored
(``bbox_keypoint`` mode), thinned by OKS-NMS per image, written as a COCO results list and scored
with pycocotools' ``COCOeval`` (``iouType='keypoints'``), set up to behave like the reference's
xtcocotools: float32 sigmas, ground truth ignored when no keypoint has ``v > 0``, detections whose
keypoint scores are all ``<= 0`` dropped, at most 20 detections per image, and results that carry a
``bbox`` so that a detection's area (for the medium/large ranges) is its box area.
"""

import contextlib
import io
import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..data.coco import is_json_number
from ..keypoints import COCO_KEYPOINTS
from .oks_nms import oks_nms, rescore, soft_oks_nms

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
    """One evaluated person instance, as the metric receives it (spec 7.1).

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
    """float32 product ``w * h`` of a (2,) crop scale (padded, aspect-fixed), px^2 (spec 7.1)."""
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
) -> list[dict[str, Any]]:
    """COCO keypoint results after grouping, rescoring and per-image NMS (spec 7.2-7.5).

    Args:
        predictions: per-instance records, in dataset order.
        nms: ``"oks"`` (greedy), ``"soft_oks"`` (Gaussian decay, at most 20 per image) or
            ``"none"``.
        nms_threshold: OKS threshold of ``"oks"``; decay parameter of ``"soft_oks"``.
        score_threshold: keypoint scores count in the instance score only when ``> threshold``.
        sigmas: (K,) OKS sigmas; the COCO-17 float32 sigmas when omitted.

    Returns:
        One dict per kept instance (``image_id, category_id, keypoints`` as K*3 floats,
        ``score, bbox`` as xywh), images in first-appearance order, each image in keep order.
    """
    if nms not in ("oks", "soft_oks", "none"):
        raise ValueError(f"nms must be 'oks', 'soft_oks' or 'none', got {nms!r}")
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
                keep = oks_nms(kpts, scores, areas, sig, nms_threshold)
            else:
                keep = soft_oks_nms(kpts, scores, areas, sig, sigma=nms_threshold)
        results.extend(_result_entry(group[i], scores[i]) for i in keep)
    return results


def write_results(results: list[dict[str, Any]], path: str | Path) -> Path:
    """Write a results list as the reference does: JSON, sorted keys, indent 4, no final newline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, sort_keys=True, indent=4)
    return path


def _sigmas(sigmas: np.ndarray | Sequence[float] | None) -> np.ndarray:
    if sigmas is None:
        return COCO_KEYPOINTS.sigmas_array()
    return np.asarray(sigmas, dtype=np.float32).reshape(-1)


def _zero_metrics(reason: str) -> dict[str, float]:
    warnings.warn(f"COCO keypoint evaluation: {reason}; all metrics are 0", stacklevel=3)
    return dict.fromkeys(METRIC_NAMES, 0.0)


def _load_ground_truth(ann_file: str | Path) -> Any:
    """pycocotools COCO object whose ``num_keypoints`` is recomputed as the count of ``v > 0``.

    xtcocotools ignores a ground truth with no labelled keypoint by counting ``v > 0`` itself;
    pycocotools trusts the ``num_keypoints`` field, so the two agree once the field is rewritten.
    """
    from pycocotools.coco import COCO

    from ..data.coco import AnnotationError, _load_json

    dataset = _load_json(Path(ann_file), "annotation")
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise AnnotationError(f"{ann_file}: not a COCO annotation file (no 'images' list)")
    for ann in dataset.get("annotations", []):
        if "keypoints" in ann:
            ann["num_keypoints"] = int(np.count_nonzero(np.asarray(ann["keypoints"])[2::3] > 0))
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def evaluate_results(
    results: list[dict[str, Any]],
    ann_file: str | Path,
    sigmas: np.ndarray | Sequence[float] | None = None,
) -> dict[str, float]:
    """Score COCO keypoint results against a ground-truth file with pycocotools (spec 7.6).

    Args:
        results: dicts with ``image_id, category_id, keypoints`` (K*3), ``score`` and, as the
            reference writes them, ``bbox`` (xywh; its area is the detection area for M/L).
        ann_file: COCO person-keypoints annotation file.
        sigmas: (K,) OKS sigmas; the COCO-17 float32 sigmas when omitted.

    Returns:
        ``AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl`` as floats (-1 where the area range
        has no ground truth). All zeros, with a warning, when no result has a positive keypoint
        score.
    """
    from pycocotools.cocoeval import COCOeval

    sig = _sigmas(sigmas)
    _check_results(results, len(sig))
    # The reference's COCOeval skips detections with no positive keypoint score.
    kept = [dict(r) for r in results if any(v > 0 for v in r["keypoints"][2::3])]
    if not kept:
        return _zero_metrics(
            "no predictions" if not results else "no prediction has a keypoint score > 0"
        )
    coco_gt = _load_ground_truth(ann_file)
    unknown = {r["image_id"] for r in kept} - set(coco_gt.getImgIds())
    if unknown:
        raise ValueError(f"results refer to images not in {ann_file}: {sorted(unknown)[:5]}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes(kept)
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        coco_eval.params.kpt_oks_sigmas = sig
        coco_eval.params.maxDets = [20]
        coco_eval.params.useSegm = None
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return {name: float(v) for name, v in zip(METRIC_NAMES, coco_eval.stats, strict=True)}


def _check_results(results: Any, k: int, source: str = "results") -> None:
    """Reject what pycocotools would crash on or misread: each result needs an ``image_id``,
    ``keypoints`` (3K finite numbers) and a finite ``score``."""
    if not isinstance(results, list):
        raise ValueError(f"{source}: COCO keypoint results are a JSON list")
    for i, r in enumerate(results):
        ok = (
            isinstance(r, dict)
            and isinstance(r.get("image_id"), int)
            and isinstance(r.get("keypoints"), list)
            and len(r["keypoints"]) == 3 * k
            and all(map(is_json_number, r["keypoints"]))
            and is_json_number(r.get("score"))
        )
        if not ok:
            raise ValueError(
                f"{source}: result {i} must be {{'image_id': int, 'keypoints': [{3 * k} finite "
                f"numbers: x, y, score per keypoint], 'score': number}}, got {r!r:.100}"
            )


def evaluate_predictions(
    predictions: Iterable[PosePrediction],
    ann_file: str | Path,
    out_dir: str | Path | None = None,
    nms: NmsMode = "oks",
    nms_threshold: float = 0.9,
    score_threshold: float = 0.2,
    sigmas: np.ndarray | Sequence[float] | None = None,
) -> dict[str, float]:
    """The reference's CocoMetric: rescoring, per-image NMS, results file, COCO keypoint AP/AR.

    Args:
        predictions: per-instance records (:class:`PosePrediction`), in dataset order.
        ann_file: COCO person-keypoints annotation file (ground truth).
        out_dir: when given, the results are written to ``out_dir/keypoints.json``.
        nms, nms_threshold, score_threshold, sigmas: see :func:`build_results`.

    Returns:
        The ten metrics of :func:`evaluate_results`; zeros and a warning for no predictions.
    """
    sig = _sigmas(sigmas)
    results = build_results(predictions, nms, nms_threshold, score_threshold, sig)
    if out_dir is not None:
        write_results(results, Path(out_dir) / "keypoints.json")
    return evaluate_results(results, ann_file, sig)


def score_results_file(
    results_json: str | Path,
    ann_file: str | Path,
    sigmas: np.ndarray | Sequence[float] | None = None,
) -> dict[str, float]:
    """Score a COCO keypoint results file without a model (see :func:`evaluate_results`)."""
    from ..data.coco import _load_json

    results = _load_json(Path(results_json), "results")
    _check_results(results, len(_sigmas(sigmas)), str(results_json))
    return evaluate_results(results, ann_file, sigmas)
