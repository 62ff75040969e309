"""Time the reference's whole COCO keypoint metric (mmpose 1.3.2 ``CocoMetric`` + xtcocotools).

Re-creates, step by step, what ``CocoMetric.compute_metrics`` does with per-instance top-down
predictions (docs/topdown-semantics.md §7; written from that description, not from mmpose's
code) and times each step:

1. ``load_gt``: xtcocotools ``COCO(ann_file)`` (the metric does this when it is built);
2. ``group``: instances grouped by image (first appearance), sorted by id, repeated ids dropped;
3. ``rescore``: box score x mean of the keypoint scores above 0.2, one keypoint at a time in
   Python over NumPy scalars, as the metric loops;
4. ``nms``: per-image OKS-NMS at 0.9, the order from NumPy's default ``argsort`` (or a stable
   one with ``--stable-sort``), the OKS of the kept pose against the rest one pose at a time;
5. ``results``: the COCO results list (``keypoints``, ``score``, ``bbox`` xywh, ``image_id``,
   ``category_id``);
6. ``json``: ``json.dump(results, f, sort_keys=True, indent=4)``;
7. ``cocoeval``: ``loadRes`` + ``COCOeval(gt, dt, 'keypoints', sigmas, use_area=True)``,
   ``useSegm = None``, evaluate, accumulate, summarize.

Needs NumPy 1.x and xtcocotools 1.14.3 (the reference's environment), not nextpose. Input: a
``.npz`` of predictions with ``ids, img_ids, category_ids`` (N,), ``keypoints`` (N, K, 2)
float32 image pixels, ``keypoint_scores`` (N, K) float32, ``bboxes`` (N, 4) float32 xyxy,
``bbox_scores`` (N,) float32 and ``areas`` (N,) float32 (crop-scale products)::

    /path/to/np1-env/bin/python benchmarks/reference_pipeline.py GT.json PRED.npz OUT.json

Prints one JSON object: ``stats`` (the ten numbers), ``seconds`` per step, ``results`` (count).
"""

import argparse
import contextlib
import io
import json
import time
from collections import defaultdict

import numpy as np

# The COCO-17 sigmas as the reference's dataset metainfo holds them (float32).
# (fl32(0.026), not fl32(.26) / fl32(10): they differ in the last bit for 5 keypoints)
SIGMAS = np.array(
    [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087,
     .089, .089],
    dtype=np.float32,
)  # fmt: skip


def _oks_one_by_one(g, others, a_g, a_others, variances):
    """float32 OKS of flat pose ``g`` (3K,) against each row of ``others`` (M, 3K), one at a
    time, all keypoints (the reference's NMS OKS, same NumPy-1 scalar arithmetic)."""
    gx, gy = g[0::3], g[1::3]
    out = np.zeros(len(others), dtype=np.float32)
    for m in range(len(others)):
        dx = others[m, 0::3] - gx
        dy = others[m, 1::3] - gy
        scale = (a_g + a_others[m]) / 2 + np.spacing(1)
        e = (dx**2 + dy**2) / variances / scale / 2
        out[m] = np.sum(np.exp(-e)) / len(e)
    return out


def _nms(instances, threshold, stable):
    scores = np.array([inst["score"] for inst in instances])
    flat = np.array([inst["keypoints"].flatten() for inst in instances])
    areas = np.array([inst["area"] for inst in instances])
    variances = (SIGMAS * 2) ** 2
    order = (np.argsort(scores, kind="stable") if stable else scores.argsort())[::-1]
    keep = []
    while len(order) > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        oks = _oks_one_by_one(flat[i], flat[rest], areas[i], areas[rest], variances)
        order = rest[np.where(oks <= threshold)[0]]
    return keep


def run(gt_file: str, pred_file: str, out_file: str, stable: bool = False) -> dict:
    from xtcocotools.coco import COCO
    from xtcocotools.cocoeval import COCOeval

    seconds = {}
    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(gt_file)
    seconds["load_gt"] = time.perf_counter() - t

    p = np.load(pred_file)
    ids, img_ids, cats = p["ids"].tolist(), p["img_ids"].tolist(), p["category_ids"].tolist()
    kpts, kpt_scores, boxes = p["keypoints"], p["keypoint_scores"], p["bboxes"]
    box_scores, areas = p["bbox_scores"], p["areas"]
    num_keypoints = kpts.shape[1]

    t = time.perf_counter()
    per_image = defaultdict(list)
    for n in range(len(ids)):
        xywh = boxes[n : n + 1].copy()
        xywh[:, 2] = xywh[:, 2] - xywh[:, 0]
        xywh[:, 3] = xywh[:, 3] - xywh[:, 1]
        per_image[img_ids[n]].append(
            {
                "id": ids[n],
                "img_id": img_ids[n],
                "category_id": cats[n],
                "keypoints": kpts[n],
                "keypoint_scores": kpt_scores[n],
                "bbox_score": box_scores[n],
                "bbox": xywh[0],
                "area": areas[n],
            }
        )
    for img_id, group in per_image.items():
        group = sorted(group, key=lambda inst: inst["id"])
        for j in range(len(group) - 1, 0, -1):
            if group[j]["id"] == group[j - 1]["id"]:
                del group[j]
        per_image[img_id] = group
    seconds["group"] = time.perf_counter() - t

    t = time.perf_counter()
    for group in per_image.values():
        for inst in group:
            inst["keypoints"] = np.concatenate(
                [inst["keypoints"], inst["keypoint_scores"][:, None]], axis=-1
            )
            total, count = 0, 0
            for k in range(num_keypoints):
                s = inst["keypoint_scores"][k]
                if s > 0.2:
                    total += s
                    count += 1
            if count != 0:
                total /= count
            inst["score"] = inst["bbox_score"] * total
    seconds["rescore"] = time.perf_counter() - t

    t = time.perf_counter()
    kept = {
        img_id: [group[i] for i in _nms(group, 0.9, stable)] for img_id, group in per_image.items()
    }
    seconds["nms"] = time.perf_counter() - t

    t = time.perf_counter()
    results = []
    for group in kept.values():
        flat = np.array([inst["keypoints"] for inst in group]).reshape(-1, num_keypoints * 3)
        for inst, row in zip(group, flat, strict=True):
            results.append(
                {
                    "image_id": inst["img_id"],
                    "category_id": inst["category_id"],
                    "keypoints": row.tolist(),
                    "score": float(inst["score"]),
                    "bbox": inst["bbox"].tolist(),
                }
            )
    seconds["results"] = time.perf_counter() - t

    t = time.perf_counter()
    with open(out_file, "w") as f:
        json.dump(results, f, sort_keys=True, indent=4)
    seconds["json"] = time.perf_counter() - t

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        dets = coco.loadRes(out_file)
        ev = COCOeval(coco, dets, "keypoints", SIGMAS, True)
        ev.params.useSegm = None
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    seconds["cocoeval"] = time.perf_counter() - t
    return {
        "stats": [float(s) for s in ev.stats],
        "seconds": seconds,
        "results": len(results),
        "numpy": np.__version__,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("gt_file")
    parser.add_argument("pred_file", help=".npz of per-instance predictions")
    parser.add_argument("out_file", help="where the results JSON is written")
    parser.add_argument(
        "--stable-sort",
        action="store_true",
        help="order NMS by a stable argsort instead of NumPy's default (ties only)",
    )
    args = parser.parse_args()
    print(json.dumps(run(args.gt_file, args.pred_file, args.out_file, args.stable_sort)))
