"""``nextpose eval``: COCO keypoint AP/AR, as the published numbers were measured."""

import argparse
import json
import sys
from pathlib import Path

from ..presets import PRESETS
from ._options import (
    add_model,
    add_progress,
    add_runtime,
    check_device,
    check_extras,
    existing,
    note_ignored,
    number,
    path_name,
    run_options,
)

COCO_VAL_ANN = "annotations/person_keypoints_val2017.json"
COCO_VAL_IMAGES = "val2017"
COCO_VAL_DETECTIONS = "person_detection_results/COCO_val2017_detections_AP_H_56_person.json"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="COCO keypoint AP/AR, as the published numbers were measured")
    add_model(p, optional=True)
    p.add_argument(
        "--coco-root",
        help="COCO folder: annotations/person_keypoints_val2017.json, val2017/, "
        "person_detection_results/COCO_val2017_detections_AP_H_56_person.json",
    )
    p.add_argument("--images", help="image folder (overrides --coco-root)")
    p.add_argument("--ann-file", help="keypoint annotations (overrides --coco-root)")
    boxes = p.add_mutually_exclusive_group()
    boxes.add_argument("--bbox-file", help="person detections, COCO results format")
    boxes.add_argument(
        "--gt-boxes",
        action="store_true",
        help="use the ground-truth boxes (also what --images and --ann-file without "
        "--bbox-file or --coco-root use)",
    )
    p.add_argument(
        "--bbox-score-threshold",
        type=number,
        help="drop detections scoring below this (default: keep all, as published)",
    )
    p.add_argument(
        "--nms",
        choices=["oks", "soft_oks", "none"],
        default="oks",
        help="per-image pose NMS (default oks, threshold 0.9)",
    )
    p.add_argument(
        "--tie-order",
        choices=["stable", "numpy"],
        default="stable",
        help="order of poses with exactly equal scores in OKS-NMS: stable (the same on every "
        "machine; default) or numpy (NumPy's default sort, as the reference; depends on the CPU "
        "and the NumPy version)",
    )
    p.add_argument(
        "--evaluator",
        choices=["auto", "faster_coco_eval", "pycocotools"],
        default="auto",
        help="COCOeval implementation; all give identical numbers (auto: faster-coco-eval "
        "when installed)",
    )
    p.add_argument("--results", help="score this COCO results file instead of running a model")
    p.add_argument(
        "--out", type=path_name, required=True, help="folder for keypoints.json and metrics.json"
    )
    add_runtime(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import distributed

    # Under torchrun every process runs this verb on its own device (a "cuda" device becomes
    # the local rank's GPU); rank 0 scores and writes, the others only predict.
    check_device(args.device)
    env, device = distributed.init(args.device)
    try:
        return _run(args, env, str(device))
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace, env, device: str) -> int:
    from .. import distributed
    from ..errors import InputError
    from ..evaluation import METRIC_NAMES, evaluate, read_eval_set, score_results_file
    from ..fileio import atomic_write_text
    from ..predictor import load
    from ..writers import Guard

    root = Path(args.coco_root) if args.coco_root else None
    ann_file = Path(args.ann_file) if args.ann_file else root / COCO_VAL_ANN if root else None
    if ann_file is None:
        raise InputError("eval needs --coco-root DIR or --ann-file FILE")
    existing(ann_file, "annotation file", "--ann-file" if args.ann_file else "--coco-root")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder")
    read = [ann_file, args.bbox_file, args.results, args.checkpoint, args.model]
    guard = Guard([f for f in read if f])  # it protects the ones that exist
    guard.claim(out / "metrics.json", "--out")
    if not args.results:
        guard.claim(out / "keypoints.json", "--out")
    published: dict[str, float] = {}
    if args.results:
        if args.model:
            raise InputError("--results scores an existing file; give no MODEL with it")
        if not env.is_main:
            return 0
        metrics = score_results_file(args.results, ann_file, evaluator=args.evaluator)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    else:
        if not args.model:
            raise InputError("eval needs a MODEL (or --results FILE)")
        images = Path(args.images) if args.images else root / COCO_VAL_IMAGES if root else None
        if images is None:
            raise InputError("eval needs --images DIR (or --coco-root)")
        existing(images, "image folder", "--images" if args.images else "--coco-root")
        bbox_file = None
        if args.bbox_file:
            bbox_file = Path(args.bbox_file)
        elif root and not args.gt_boxes:
            bbox_file = root / COCO_VAL_DETECTIONS
        if bbox_file is not None and not bbox_file.is_file():
            raise InputError(f"{bbox_file}: no such detection file (or use --gt-boxes)")
        if bbox_file is None and not args.gt_boxes and env.is_main:
            print(
                "note: no --bbox-file (nor --coco-root holding the detections): the poses are "
                "scored on the ground-truth boxes, as with --gt-boxes, not the detector boxes "
                "of the published numbers",
                file=sys.stderr,
            )
        check_extras(args)
        if env.is_main:
            note_ignored(args)

        def load_model():
            with distributed.main_first():
                return load(args.model, args.checkpoint, **{**run_options(args), "device": device})

        # The annotation and detection files are read once, with every check the metric makes,
        # before a preset's weights are downloaded: a malformed file is reported before any
        # heavy work. A checkpoint (a local file) is read first: it says how many keypoints.
        estimator = None if args.model in PRESETS else load_model()
        config = PRESETS[args.model].config if estimator is None else estimator.config
        data = read_eval_set(
            ann_file, bbox_file, config.model.num_keypoints, args.bbox_score_threshold
        )
        names = {inst.image_file for inst in data.instances}
        if names and not any((images / name).is_file() for name in names):
            raise InputError(
                f"--images {images}: holds none of the {len(names)} images {ann_file} names "
                f"for the person boxes (e.g. {min(names)}); is it the right folder?"
            )
        if estimator is None:
            estimator = load_model()
        metrics = evaluate(
            estimator,
            data,
            images,
            out_dir=out,
            flip=not args.no_flip,
            nms=args.nms,
            progress=not args.no_progress,
            tie_order=args.tie_order,
            evaluator=args.evaluator,
        )
        if not env.is_main:
            return 0
        own = PRESETS[args.model].config.inference.decode if args.model in PRESETS else None
        if args.model in PRESETS and args.checkpoint is None and args.decode in (None, own):
            published = PRESETS[args.model].published
    if published:
        print(f"{'metric':<8} {'measured':>9} {'published':>10}")
    else:
        print(f"{'metric':<8} {'measured':>9}")
    for name in METRIC_NAMES:
        line = f"{name:<8} {metrics[name]:>9.3f}"
        if published:
            line += f" {published[name]:>10.3f}" if name in published else f" {'-':>10}"
        print(line)
    if not published and args.model in PRESETS:
        print(
            "(published numbers not shown: they are for the preset's own weights and decoding "
            "on COCO val2017)",
            file=sys.stderr,
        )
    print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    return 0
