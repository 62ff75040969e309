"""Time nextpose's whole COCO keypoint metric against the reference's and plain pycocotools.

Builds a random (seeded) COCO person-keypoints ground truth and per-instance predictions
(default 5000 images, 0-6 people and 20 predictions per image, 100k predictions; the issue's
heavy set: ``--images 1000 --people 30 60 --dets 100``), then times in one run:

* ``reference`` (with ``--reference-python``, a NumPy-1 Python with xtcocotools 1.14.3): the
  reference's whole pipeline, step by step (benchmarks/reference_pipeline.py: mmpose 1.3.2
  ``CocoMetric``'s rescoring, per-image OKS-NMS, results list, ``json.dump(indent=4)``,
  xtcocotools COCOeval), on the same predictions;
* ``nextpose``: :func:`nextpose.evaluation.evaluate_predictions` with each evaluator (grouping,
  rescoring, OKS-NMS, ``keypoints.json``, COCOeval set up like the reference's xtcocotools);
* ``pycocotools``: plain ``COCO`` + ``loadRes`` + ``COCOeval(iouType='keypoints')`` on the same
  results list that nextpose scored (no rescoring or NMS, pycocotools' own defaults).

It checks that the ten numbers are equal and that nextpose's results file is byte-identical to
the reference's. ``--ties F`` instead compares both tie orders on a set where a fraction F of the
predictions score 0; ``--components`` times the replaced parts (OKS, JSON writer) old vs new.

Usage::

    python benchmarks/bench_metric.py --reference-python /path/to/np1-env/bin/python
    python benchmarks/bench_metric.py --images 1000 --people 30 60 --dets 100 --reference-python ...
    python benchmarks/bench_metric.py --images 300 --ties 0.3 --reference-python ...
    python benchmarks/bench_metric.py --images 200 --people 30 60 --dets 100 --components
    python benchmarks/bench_metric.py --images 200   # quick check, nextpose and pycocotools only
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
from nextpose.evaluation.coco_eval import (
    _dumps_results,
    _keypoint_oks,
    _quiet,
    prepare_ground_truth,
)
from nextpose.keypoints import COCO_KEYPOINTS

K = COCO_KEYPOINTS.num_keypoints


def synthetic_dataset(
    n_images: int,
    dets_per_image: int,
    seed: int = 0,
    people_range: tuple[int, int] = (0, 6),
) -> tuple[dict, list[PosePrediction]]:
    """A random COCO keypoint ground truth and per-instance predictions (noisy GT + clutter).

    Each image has ``people_range[0]..people_range[1]`` ground-truth people and ``dets_per_image``
    predictions: the first ``min(dets_per_image, 2 * people)`` are noisy copies of the people in
    turn, the rest clutter."""
    rng = np.random.default_rng(seed)
    images, annotations, predictions = [], [], []
    ann_id = 1
    det_id = 0
    for img_id in range(1, n_images + 1):
        w, h = 640, 480
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h})
        people = []
        for _ in range(rng.integers(people_range[0], people_range[1] + 1)):
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


def prediction_arrays(predictions: list[PosePrediction]) -> dict[str, np.ndarray]:
    """The predictions as the arrays ``benchmarks/reference_pipeline.py`` reads (one row each)."""
    return {
        "ids": np.array([p.id for p in predictions], np.int64),
        "img_ids": np.array([p.img_id for p in predictions], np.int64),
        "category_ids": np.array([p.category_id for p in predictions], np.int64),
        "keypoints": np.stack([p.keypoints for p in predictions]).astype(np.float32),
        "keypoint_scores": np.stack([p.keypoint_scores for p in predictions]).astype(np.float32),
        "bboxes": np.stack([p.bbox_xyxy for p in predictions]).astype(np.float32),
        "bbox_scores": np.array([p.bbox_score for p in predictions], np.float32),
        "areas": np.array([p.area for p in predictions], np.float32),
    }


def run_reference(python: str, ann_file: Path, pred_file: Path, out: Path, stable: bool) -> dict:
    """benchmarks/reference_pipeline.py under ``python``: its ten numbers and step times."""
    script = Path(__file__).with_name("reference_pipeline.py")
    cmd = [python, str(script), str(ann_file), str(pred_file), str(out)]
    cmd += ["--stable-sort"] if stable else []
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def tie_study(gt: dict, predictions: list[PosePrediction], python: str) -> None:
    """Both tie orders of nextpose against the reference's NMS with NumPy's default argsort
    and with a stable one: AP differences and whether the results files are identical."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ann_file, pred_file = tmp / "gt.json", tmp / "predictions.npz"
        ann_file.write_text(json.dumps(gt))
        np.savez(pred_file, **prediction_arrays(predictions))
        files, stats = {}, {}
        for stable in (False, True):
            name = "reference, " + ("stable argsort" if stable else "NumPy default argsort")
            files[name] = tmp / f"ref{int(stable)}.json"
            ref = run_reference(python, ann_file, pred_file, files[name], stable)
            stats[name] = ref["stats"]
            numpy_ref = ref["numpy"]
        for order in ("stable", "numpy"):
            name = f"nextpose, tie_order={order!r}"
            stats[name] = list(
                evaluate_predictions(
                    predictions, ann_file, out_dir=tmp / order, tie_order=order
                ).values()
            )
            files[name] = tmp / order / "keypoints.json"
        texts = {name: path.read_bytes() for name, path in files.items()}
        results = json.loads(texts["nextpose, tie_order='stable'"])
    scores = np.array([r["score"] for r in results])
    print(
        f"{len(results)} results after OKS-NMS, {int(np.sum(scores == 0))} of them scored 0; "
        f"reference NumPy {numpy_ref}, nextpose NumPy {np.__version__}"
    )
    base = "reference, stable argsort"
    for name in stats:
        diff = max(abs(a - b) for a, b in zip(stats[name], stats[base], strict=True))
        same = texts[name] == texts[base]
        print(f"{name:42s} AP {stats[name][0]:.12f}  max |diff| to {base}: {diff:.3g}, "
              f"results file identical: {same}")  # fmt: skip
    a, b = "nextpose, tie_order='numpy'", "reference, NumPy default argsort"
    diff = max(abs(x - y) for x, y in zip(stats[a], stats[b], strict=True))
    print(f"{a} against {b}: max |diff| {diff:.3g}, results identical: {texts[a] == texts[b]}")


def components(gt: dict, predictions: list[PosePrediction], repeats: int = 3) -> None:
    """Interleaved A/B (best of ``repeats``) of the two parts nextpose replaced: faster-coco-eval's
    per-pair keypoint OKS against nextpose's per-image one, ``json.dumps(indent=4)`` against
    nextpose's writer; both pairs give identical results (asserted)."""
    from faster_coco_eval import COCO, COCOeval_faster  # optional: nextpose[fast-eval]

    results = build_results(predictions)
    coco_gt = COCO(prepare_ground_truth(gt, "gt"), print_function=_quiet)
    ev = COCOeval_faster(
        coco_gt, coco_gt.loadRes([dict(r) for r in results]), iouType="keypoints",
        kpt_oks_sigmas=COCO_KEYPOINTS.sigmas_array(), use_area=True, print_function=_quiet,
        separate_eval=True,
    )  # fmt: skip
    ev.params.maxDets = [20]
    ev._prepare()
    images = ev.params.imgIds
    parts = {
        "faster-coco-eval computeOks": lambda: [ev.computeOks(i, 1) for i in images],
        "nextpose _keypoint_oks": lambda: [_keypoint_oks(ev, i, 1) for i in images],
        "json.dumps(sort_keys, indent=4)": lambda: json.dumps(results, sort_keys=True, indent=4),
        "nextpose results writer": lambda: _dumps_results(results),
    }
    times = {name: [] for name in parts}
    outputs = {}
    for _ in range(repeats):
        for name, part in parts.items():
            t0 = time.perf_counter()
            outputs[name] = part()
            times[name].append(time.perf_counter() - t0)
    names = list(parts)
    theirs, ours = outputs[names[0]], outputs[names[1]]
    assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    assert outputs[names[2]] == outputs[names[3]]
    print(f"{len(results)} results; best of {repeats}, interleaved:")
    for name in names:
        print(f"  {name:35s} {min(times[name]):7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images (5000)")
    parser.add_argument("--dets", type=int, default=20, help="predictions per image (20)")
    parser.add_argument(
        "--people", type=int, nargs=2, default=(0, 6), metavar=("MIN", "MAX"),
        help="ground-truth people per image (0 6; the issue's heavy set: 30 60)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--reference-python",
        help="a Python with NumPy 1.x and xtcocotools 1.14.3: also time the reference's whole "
        "pipeline (benchmarks/reference_pipeline.py) on the same predictions and compare its "
        "ten numbers and its results file with nextpose's",
    )
    parser.add_argument(
        "--reference-stable-sort",
        action="store_true",
        help="the reference's NMS with a stable argsort (only matters for tied scores)",
    )
    parser.add_argument(
        "--ties",
        type=float,
        default=0.0,
        help="instead of timing: cap the keypoint scores of this fraction of the predictions at "
        "0.15 (instance score 0, so exact ties) and compare both tie orders of nextpose and of "
        "the reference (needs --reference-python)",
    )
    parser.add_argument(
        "--components",
        action="store_true",
        help="instead of the whole metric: time the OKS and the JSON writer, old against new",
    )
    args = parser.parse_args()

    t0 = time.perf_counter()
    gt, predictions = synthetic_dataset(args.images, args.dets, args.seed, tuple(args.people))
    if args.ties:
        rng = np.random.default_rng(args.seed + 1)
        for p in predictions:
            if rng.random() < args.ties:
                p.keypoint_scores = np.minimum(p.keypoint_scores, np.float32(0.15))
    print(
        f"synthetic set: {len(gt['images'])} images, {len(gt['annotations'])} GT people, "
        f"{len(predictions)} predictions ({time.perf_counter() - t0:.1f} s to build)"
    )
    if args.components:
        components(gt, predictions)
        return
    if args.ties:
        if not args.reference_python:
            parser.error("--ties needs --reference-python")
        tie_study(gt, predictions, args.reference_python)
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ann_file = Path(tmp) / "gt.json"
        ann_file.write_text(json.dumps(gt))
        pred_file = Path(tmp) / "predictions.npz"
        np.savez(pred_file, **prediction_arrays(predictions))
        ref = None
        if args.reference_python:  # first, so that nextpose's runs do not warm its caches
            out = Path(tmp) / "reference.json"
            ref = run_reference(
                args.reference_python, ann_file, pred_file, out, args.reference_stable_sort
            )
            steps = ref["seconds"]
            rows.append(
                ("reference whole pipeline (NumPy " + ref["numpy"] + ")", sum(steps.values()))
            )
            for step in ("load_gt", "group", "rescore", "nms", "results", "json", "cocoeval"):
                rows.append((f"  of which {step}", steps[step]))
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
        plain = plain_pycocotools(results, ann_file)
        rows.append(("plain pycocotools loadRes + COCOeval", time.perf_counter() - t0))
        ours_bytes = (Path(tmp) / "faster_coco_eval" / "keypoints.json").read_bytes()
        same_file = ref is not None and ours_bytes == (Path(tmp) / "reference.json").read_bytes()

    scores = np.array([r["score"] for r in results])
    tied = len(scores) - len(np.unique(scores))
    print(f"results after OKS-NMS: {len(results)} ({tied} share their score with another)")
    fast = next(s for name, s in rows if name.startswith("nextpose"))
    for name, seconds in rows:
        print(f"{name:45s} {seconds:8.2f} s   x{seconds / fast:6.2f} of nextpose")
    same = numbers["faster_coco_eval"] == numbers["pycocotools"]
    print(f"faster_coco_eval and pycocotools evaluators: identical numbers: {same}")
    print("nextpose (faster_coco_eval):", json.dumps(numbers["faster_coco_eval"]))
    if ref is not None:
        equal = list(numbers["faster_coco_eval"].values()) == ref["stats"]
        print(f"all ten numbers equal to the reference's: {equal}")
        print(f"results file byte-identical to the reference's: {same_file}")
        print("reference:", json.dumps(ref["stats"]))
        print(f"reference pipeline / nextpose: x{rows[0][1] / fast:.2f}")
    ours = numbers["faster_coco_eval"]
    diff = max(abs(a - b) for a, b in zip(ours.values(), plain, strict=True))
    print(f"largest difference to plain pycocotools (its own sigmas and area rules): {diff:.3g}")


if __name__ == "__main__":
    main()
