"""Time nextpose's COCO keypoint metric against plain pycocotools on a synthetic data set.

Builds a random (seeded) COCO person-keypoints ground truth (default 5000 images, about 20 person
predictions per image, so ~100k detections), then times in the same process:

* ``nextpose``: :func:`nextpose.evaluation.evaluate_predictions` (grouping, rescoring, OKS-NMS,
  results list, pycocotools COCOeval set up like the reference's xtcocotools);
* ``pycocotools``: plain ``COCO`` + ``loadRes`` + ``COCOeval(iouType='keypoints')`` on the same
  results list that nextpose scored (no rescoring or NMS, pycocotools' own defaults).

Usage::

    python benchmarks/bench_metric.py                # 5000 images
    python benchmarks/bench_metric.py --images 200   # quick check
"""

import argparse
import contextlib
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from nextpose.evaluation import PosePrediction, build_results, evaluate_predictions, write_results
from nextpose.keypoints import COCO_KEYPOINTS

K = COCO_KEYPOINTS.num_keypoints


def synthetic_dataset(
    n_images: int, dets_per_image: int, seed: int = 0
) -> tuple[dict, list[PosePrediction]]:
    """A random COCO keypoint ground truth and per-instance predictions (noisy GT + clutter)."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    ann_id = 1
    det_id = 0
    for img_id in range(1, n_images + 1):
        w, h = 640, 480
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h})
        people = []
        for _ in range(rng.integers(0, 7)):
            bw, bh = rng.uniform(20, 300), rng.uniform(40, 400)
            bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
            xy = np.stack([rng.uniform(bx, bx + bw, K), rng.uniform(by, by + bh, K)], axis=1)
            v = rng.choice([0, 1, 2], size=K, p=[0.2, 0.1, 0.7])
            xy[v == 0] = 0
            kpts = np.concatenate([np.round(xy, 2), v[:, None]], axis=1)
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": img_id,
                    "category_id": 1,
                    "iscrowd": int(rng.random() < 0.02),
                    "area": float(bw * bh * rng.uniform(0.4, 0.8)),
                    "bbox": [float(bx), float(by), float(bw), float(bh)],
                    "keypoints": kpts.reshape(-1).tolist(),
                    "num_keypoints": int(np.count_nonzero(v)),
                }
            )
            people.append((np.array([bx, by, bx + bw, by + bh]), xy))
            ann_id += 1
        for j in range(dets_per_image):
            if people and j < 2 * len(people):  # two noisy copies of each person
                box, xy = people[j % len(people)]
                noise = rng.normal(0, rng.uniform(1, 15), size=(K, 2))
                kpts = xy + noise
                box = box + rng.normal(0, 5, size=4)
                scores = rng.uniform(0.1, 1.0, K)
            else:  # clutter
                bw, bh = rng.uniform(20, 300), rng.uniform(40, 400)
                bx, by = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
                box = np.array([bx, by, bx + bw, by + bh])
                kpts = np.stack([rng.uniform(bx, bx + bw, K), rng.uniform(by, by + bh, K)], 1)
                scores = rng.uniform(0.0, 0.5, K)
            bw, bh = box[2] - box[0], box[3] - box[1]
            sw, sh = 1.25 * bw, 1.25 * bh
            sw, sh = (sw, sw / 0.75) if sw > sh * 0.75 else (sh * 0.75, sh)
            predictions.append(
                PosePrediction(
                    id=det_id,
                    img_id=img_id,
                    keypoints=kpts,
                    keypoint_scores=scores,
                    bbox_xyxy=box,
                    bbox_score=rng.uniform(0.3, 1.0),
                    area=np.float32(sw) * np.float32(sh),
                )
            )
            det_id += 1
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    return gt, predictions


def plain_pycocotools(results: list[dict], ann_file: Path) -> list[float]:
    """Plain pycocotools keypoint evaluation of a results list (its default parameters)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, iouType="keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(s) for s in ev.stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images (5000)")
    parser.add_argument("--dets", type=int, default=20, help="predictions per image (20)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-python",
        help="a Python with xtcocotools 1.14.3 (NumPy 1.x): also time the reference's COCOeval "
        "on the same results file (benchmarks/reference_metric.py) and compare the numbers",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt, predictions = synthetic_dataset(args.images, args.dets, args.seed)
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT people, "
        f"{len(predictions)} predictions ({time.perf_counter() - t0:.1f} s to build)"
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "gt.json"
        ann_file.write_text(json.dumps(gt))
        numbers = {}
        for evaluator in ("faster_coco_eval", "pycocotools"):
            t0 = time.perf_counter()
            numbers[evaluator] = evaluate_predictions(
                predictions, ann_file, out_dir=Path(tmp) / evaluator, evaluator=evaluator
            )
            rows.append((f"nextpose whole metric ({evaluator})", time.perf_counter() - t0))
        t0 = time.perf_counter()
        results = build_results(predictions)  # the list nextpose scored (after NMS)
        rows.append(("  of which rescoring + OKS-NMS", time.perf_counter() - t0))
        t0 = time.perf_counter()
        write_results(results, Path(tmp) / "r.json")
        rows.append(("  of which writing the results JSON", time.perf_counter() - t0))
        t0 = time.perf_counter()
        with open(Path(tmp) / "slow.json", "w") as f:
            json.dump(results, f, sort_keys=True, indent=4)
        rows.append(("  (json.dump indent=4, as before)", time.perf_counter() - t0))
        t0 = time.perf_counter()
        plain = plain_pycocotools(results, ann_file)
        rows.append(("plain pycocotools COCOeval", time.perf_counter() - t0))
        ref = None
        if args.reference_python:
            script = Path(__file__).with_name("reference_metric.py")
            out = subprocess.run(
                [args.reference_python, str(script), str(ann_file), str(Path(tmp) / "r.json")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            ref = json.loads(out.stdout)
            rows.append(("reference xtcocotools COCOeval (same file)", ref["seconds"]))

    print(f"results after OKS-NMS: {len(results)}")
    fast = rows[0][1]
    for name, seconds in rows:
        print(f"{name:45s} {seconds:8.2f} s   x{seconds / fast:6.2f} of nextpose")
    same = numbers["faster_coco_eval"] == numbers["pycocotools"]
    print(f"faster_coco_eval and pycocotools evaluators: identical numbers: {same}")
    if ref is not None:
        equal = list(numbers["faster_coco_eval"].values()) == ref["stats"]
        print(f"all ten numbers equal to xtcocotools: {equal}")
    ours = numbers["faster_coco_eval"]
    diff = max(abs(a - b) for a, b in zip(ours.values(), plain, strict=True))
    print(f"largest difference to plain pycocotools (its own sigmas and area rules): {diff:.3g}")


if __name__ == "__main__":
    main()
