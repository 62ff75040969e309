"""Hard synthetic COCO person-keypoint sets for the metric: ground truth plus a results list.

Everything that moved nextpose's numbers away from the reference's at some point is in here:

* crowd annotations, their segmentation as RLE (``{"size", "counts"}``) or polygons;
* people without a labelled keypoint (ignored), keypoints on the image border (x or y = 0);
* annotation ids starting at 0 (``id_start=0``), ``iscrowd`` and ``num_keypoints`` missing on some
  annotations, ``num_keypoints`` fields that disagree with the keypoints;
* empty area ranges (``no_large=True``: no person of area > 96^2; ``no_medium=True``);
* detections: noisy copies and near-duplicates of each person, far false positives, zero-area
  boxes, detections whose keypoint scores are all <= 0 (dropped by COCOeval), and exactly tied
  scores within and across images (``tie_fraction``).

Usage (writes ``gt.json`` and ``results.json`` into a folder)::

    python benchmarks/hard_coco.py OUT_DIR --images 3000 --seed 1
"""

import argparse
import json
from pathlib import Path

import numpy as np

K = 17


def _rle(rng: np.random.Generator, h: int, w: int) -> dict:
    """An uncompressed-looking RLE string is not needed: COCO's compressed form is any string."""
    runs = rng.integers(1, 50, size=8)
    return {"size": [h, w], "counts": "".join(chr(48 + int(r) % 60) for r in runs)}


def _person(rng, w, h, area_range):
    lo, hi = area_range
    area = float(rng.uniform(lo, hi))
    aspect = rng.uniform(0.3, 1.0)
    bw = float(np.sqrt(area / 0.6 * aspect))
    bh = float(area / 0.6 / bw)
    bw, bh = min(bw, w - 1.0), min(bh, h - 1.0)
    bx, by = float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh))
    xy = np.stack([rng.uniform(bx, bx + bw, K), rng.uniform(by, by + bh, K)], axis=1)
    border = rng.random(K) < 0.05
    xy[border, rng.integers(0, 2)] = 0.0  # keypoints on the image border
    v = rng.choice([0, 1, 2], size=K, p=[0.25, 0.15, 0.6])
    if rng.random() < 0.08:
        v[:] = 0  # no labelled keypoint: ignored by COCOeval
    xy[v == 0] = 0.0
    return bx, by, bw, bh, area, np.round(xy, 2), v


def hard_coco(
    n_images: int = 50,
    seed: int = 0,
    people: tuple[int, int] = (0, 8),
    id_start: int = 0,
    no_large: bool = False,
    no_medium: bool = False,
    tie_fraction: float = 0.2,
    missing_fields: float = 0.2,
) -> tuple[dict, list[dict]]:
    """A random hard ground truth and results list (see the module docstring)."""
    rng = np.random.default_rng(seed)
    lo, hi = 200.0, 40000.0
    if no_large:
        hi = 96.0**2 - 1
    if no_medium:
        lo = 96.0**2 + 1
    images, annotations, results = [], [], []
    ann_id = id_start
    for img_id in rng.permutation(np.arange(1, n_images + 1) * 7).tolist():
        w, h = 640, 480
        images.append({"id": img_id, "file_name": f"{img_id:012d}.jpg", "width": w, "height": h})
        persons = []
        for _ in range(int(rng.integers(people[0], people[1] + 1))):
            bx, by, bw, bh, area, xy, v = _person(rng, w, h, (lo, hi))
            crowd = rng.random() < 0.06
            ann = {
                "id": ann_id,
                "image_id": img_id,
                "category_id": 1,
                "iscrowd": int(crowd),
                "area": area,
                "bbox": [bx, by, bw, bh],
                "keypoints": np.concatenate([xy, v[:, None]], 1).reshape(-1).tolist(),
                "num_keypoints": int(np.count_nonzero(v)),
            }
            if crowd:
                ann["segmentation"] = _rle(rng, h, w)
            else:
                ann["segmentation"] = [[bx, by, bx + bw, by, bx + bw, by + bh, bx, by + bh]]
            if not crowd and rng.random() < missing_fields:
                del ann["iscrowd"]
            if rng.random() < missing_fields:
                del ann["num_keypoints"]
            elif rng.random() < 0.1:
                ann["num_keypoints"] = 5  # disagrees with the keypoints: must not matter
            annotations.append(ann)
            ann_id += 1
            persons.append((bx, by, bw, bh, xy, v))
        for bx, by, bw, bh, xy, v in persons:
            for _copy in range(int(rng.integers(0, 3))):  # noisy copies, near-duplicates
                sd = float(rng.choice([0.3, 2.0, 8.0, 30.0]))
                kxy = np.where(v[:, None] > 0, xy, rng.uniform(bx, bx + bw, (K, 2)))
                kxy = kxy + rng.normal(0, sd, (K, 2))
                results.append(_result(rng, img_id, kxy, (bx, by, bw, bh)))
        for _ in range(int(rng.integers(0, 4))):  # false positives, some far away
            bw, bh = rng.uniform(0, 300, 2)
            if rng.random() < 0.15:
                bw = 0.0  # zero-area box
            bx, by = rng.uniform(-100, w), rng.uniform(-100, h)
            kxy = np.stack([rng.uniform(bx, bx + bw + 1, K), rng.uniform(by, by + bh + 1, K)], 1)
            results.append(_result(rng, img_id, kxy, (bx, by, bw, bh)))
    # Exact ties: copy scores between random results (within and across images).
    n = len(results)
    if n > 1:
        for i in np.flatnonzero(rng.random(n) < tie_fraction):
            results[i]["score"] = results[int(rng.integers(0, n))]["score"]
    gt = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person"}],
    }
    return gt, results


def _result(rng, img_id, kxy, box) -> dict:
    scores = rng.uniform(0, 1, K)
    if rng.random() < 0.05:
        scores = -rng.uniform(0, 1, K) * (rng.random() < 0.5)  # all <= 0: dropped by COCOeval
    score = float(np.float32(rng.choice([rng.uniform(0, 1), round(rng.uniform(0, 1), 1)])))
    x, y, w, h = (float(np.float32(c)) for c in box)
    kpts = np.concatenate([kxy.astype(np.float32), scores.astype(np.float32)[:, None]], 1)
    return {
        "image_id": img_id,
        "category_id": 1,
        "keypoints": kpts.reshape(-1).tolist(),
        "score": score,
        "bbox": [x, y, w, h],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--id-start", type=int, default=0)
    parser.add_argument("--no-large", action="store_true")
    args = parser.parse_args()
    gt, results = hard_coco(args.images, args.seed, id_start=args.id_start, no_large=args.no_large)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "gt.json").write_text(json.dumps(gt))
    (args.out_dir / "results.json").write_text(json.dumps(results))
    print(
        f"{len(gt['images'])} images, {len(gt['annotations'])} annotations, {len(results)} results"
    )


if __name__ == "__main__":
    main()
