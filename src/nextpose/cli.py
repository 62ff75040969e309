"""The ``nextpose`` command: each subcommand is a thin call into the Python API."""

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .checkpoint import CheckpointError
from .data.images import ImageError, read_image
from .inference import load
from .presets import PRESETS
from .visualize import draw_poses

IMAGES_PER_CHUNK = 16  # images whose crops go through the network together


def _read_boxes_file(path: Path) -> dict[str, np.ndarray]:
    """``{"<image>": [[x1, y1, x2, y2, score?], ...]}`` -> (N, 5) arrays, score 1 where missing."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"error: {path}: no such boxes file") from None
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise SystemExit(
            f'error: {path}: expected {{"<image file name>": [[x1, y1, x2, y2, score?], ...]}}'
        )
    out = {}
    for name, boxes in data.items():
        ok = isinstance(boxes, list) and all(
            isinstance(b, list)
            and len(b) in (4, 5)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in b)
            for b in boxes
        )
        if not ok:
            raise SystemExit(
                f"error: {path}: entry '{name}' must be a list of [x1, y1, x2, y2] or "
                f"[x1, y1, x2, y2, score] boxes, got {boxes!r:.80}"
            )
        out[name] = np.array([[*b, 1.0][:5] for b in boxes], np.float32).reshape(-1, 5)
    return out


def _predict(args: argparse.Namespace) -> int:
    boxes_by_name = _read_boxes_file(Path(args.boxes)) if args.boxes else {}
    estimator = load(args.model, args.checkpoint, device=args.device)
    if args.batch_size:
        from dataclasses import replace

        estimator.config = replace(
            estimator.config, test=replace(estimator.config.inference, batch_size=args.batch_size)
        )
    flip = not args.no_flip
    records, failed = [], []
    draw_dir = Path(args.draw) if args.draw else None
    if draw_dir:
        draw_dir.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in args.images]
    for start in range(0, len(paths), IMAGES_PER_CHUNK):
        images, names, boxes = [], [], []
        for path in paths[start : start + IMAGES_PER_CHUNK]:
            try:
                images.append(read_image(path))
            except ImageError as e:
                print(f"warning: skipped {e}", file=sys.stderr)
                failed.append(str(path))
                continue
            names.append(path.name)
            given = boxes_by_name.get(str(path), boxes_by_name.get(path.name))
            boxes.append(given)
        for path_name, image, poses in zip(
            names, images, estimator.predict_many(images, boxes, flip), strict=True
        ):
            for i in range(len(poses)):
                kpts = np.concatenate([poses.keypoints[i], poses.scores[i][:, None]], axis=1)
                records.append(
                    {
                        "image": path_name,
                        "bbox": [float(v) for v in poses.boxes[i]],
                        "bbox_score": float(poses.box_scores[i]),
                        "keypoints": kpts.astype(float).tolist(),
                    }
                )
            if draw_dir:
                drawn = draw_poses(
                    image,
                    poses.keypoints,
                    poses.scores,
                    poses.boxes,
                    estimator.keypoint_set,
                    args.score_threshold,
                )
                target = draw_dir / (Path(path_name).stem + ".jpg")
                cv2.imwrite(str(target), np.ascontiguousarray(drawn[..., ::-1]))
    text = json.dumps(records, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(
            f"wrote {len(records)} poses from {len(paths) - len(failed)} images to {args.out}",
            file=sys.stderr,
        )
    else:
        print(text)
    if failed:
        print(f"warning: {len(failed)} of {len(paths)} images could not be read", file=sys.stderr)
    return 1 if failed and len(failed) == len(paths) else 0


def _eval(args: argparse.Namespace) -> int:
    from .evaluation import METRIC_NAMES, score_results_file
    from .evaluation.evaluate import (
        COCO_VAL_ANN,
        COCO_VAL_DETECTIONS,
        COCO_VAL_IMAGES,
        evaluate,
    )

    root = Path(args.coco_root) if args.coco_root else None
    ann_file = Path(args.ann_file) if args.ann_file else root / COCO_VAL_ANN if root else None
    if ann_file is None:
        raise SystemExit("error: eval needs --coco-root DIR or --ann-file FILE")
    if not ann_file.is_file():
        raise SystemExit(f"error: {ann_file}: no such annotation file")
    out = Path(args.out)
    published = {}
    if args.results:
        if args.model:
            raise SystemExit("error: --results scores an existing file; give no MODEL with it")
        metrics = score_results_file(args.results, ann_file)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    else:
        if not args.model:
            raise SystemExit("error: eval needs a MODEL (or --results FILE)")
        images = Path(args.images) if args.images else root / COCO_VAL_IMAGES if root else None
        if images is None or not images.is_dir():
            raise SystemExit(
                f"error: {images or 'the images folder'}: no such folder (--images DIR)"
            )
        bbox_file = None
        if args.bbox_file:
            bbox_file = Path(args.bbox_file)
        elif root and not args.gt_boxes:
            bbox_file = root / COCO_VAL_DETECTIONS
        if bbox_file is not None and not bbox_file.is_file():
            raise SystemExit(f"error: {bbox_file}: no such detection file (or use --gt-boxes)")
        estimator = load(args.model, args.checkpoint, device=args.device)
        metrics = evaluate(
            estimator,
            ann_file,
            images,
            bbox_file,
            out_dir=out,
            flip=not args.no_flip,
            batch_size=args.batch_size,
            workers=args.workers,
            bbox_score_threshold=args.bbox_score_threshold,
            nms=args.nms,
        )
        published = PRESETS[args.model].published if args.model in PRESETS else {}
    print(f"{'metric':<8} {'measured':>9} {'published':>10}")
    for name in METRIC_NAMES:
        ref = f"{published[name]:.3f}" if name in published else "-"
        print(f"{name:<8} {metrics[name]:>9.3f} {ref:>10}")
    print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextpose", description="Top-down human pose estimation (ResNeXt SimpleBaseline)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="keypoints of the people in images")
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a nextpose checkpoint")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--checkpoint", help="weights to use instead of the preset's: a path or URL")
    p.add_argument(
        "--boxes",
        help='JSON {"<image file name>": [[x1, y1, x2, y2, score?], ...]}, image pixels; '
        "an image without an entry gets one whole-image box",
    )
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster)")
    p.add_argument("--out", help="write the poses here as JSON (default: standard output)")
    p.add_argument("--draw", metavar="DIR", help="write the images with the poses drawn")
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="hide drawn keypoints scoring at or below this (default 0.3)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=int, help="crops per forward pass")
    p.set_defaults(func=_predict)

    p = sub.add_parser("eval", help="COCO keypoint AP/AR, as the published numbers were measured")
    p.add_argument("model", nargs="?", help="a preset or a nextpose checkpoint")
    p.add_argument("--checkpoint", help="weights to use instead of the preset's: a path or URL")
    p.add_argument(
        "--coco-root",
        help="COCO folder: annotations/person_keypoints_val2017.json, val2017/, "
        "person_detection_results/COCO_val2017_detections_AP_H_56_person.json",
    )
    p.add_argument("--images", help="image folder (overrides --coco-root)")
    p.add_argument("--ann-file", help="keypoint annotations (overrides --coco-root)")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--bbox-file", help="person detections, COCO results format")
    boxes.add_argument("--gt-boxes", action="store_true", help="use the ground-truth boxes")
    p.add_argument(
        "--bbox-score-threshold",
        type=float,
        help="drop detections scoring below this (default: keep all, as published)",
    )
    p.add_argument(
        "--nms",
        choices=["oks", "soft_oks", "none"],
        default="oks",
        help="per-image pose NMS (default oks, threshold 0.9)",
    )
    p.add_argument("--results", help="score this COCO results file instead of running a model")
    p.add_argument("--no-flip", action="store_true", help="skip the flip test")
    p.add_argument("--batch-size", type=int, help="crops per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", required=True, help="folder for keypoints.json and metrics.json")
    p.set_defaults(func=_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CheckpointError, ImageError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
