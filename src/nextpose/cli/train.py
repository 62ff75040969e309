"""``nextpose train`` and ``nextpose config``: the published recipe, or an edited one."""

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..presets import PRESETS
from ._options import PRETRAINED, existing
from .evaluate import COCO_VAL_ANN, COCO_VAL_DETECTIONS, COCO_VAL_IMAGES

if TYPE_CHECKING:
    from ..config import Config

COCO_TRAIN_ANN = "annotations/person_keypoints_train2017.json"
COCO_TRAIN_IMAGES = "train2017"


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (one device, or many with torchrun)")
    p.add_argument("model", help="a preset name or a CONFIG.toml (see `nextpose config`)")
    p.add_argument(
        "--coco-root",
        help="COCO folder: annotations/, train2017/, val2017/, person_detection_results/",
    )
    p.add_argument("--images", help="training image folder (overrides --coco-root)")
    p.add_argument("--ann-file", help="training keypoint annotations (overrides --coco-root)")
    p.add_argument("--val-ann-file", help="validation annotations")
    p.add_argument("--val-images", help="validation image folder (default: --images)")
    p.add_argument("--val-bbox-file", help="validation person detections (default: GT boxes)")
    p.add_argument("--no-val", action="store_true", help="do not validate")
    p.add_argument("--keypoints", help="metainfo of a custom keypoint set (JSON/TOML)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, config)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=1e-3 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--pretrained",
        default="imagenet",
        help=f"trunk initialisation: {', '.join(PRETRAINED)} (default imagenet: the "
        "OpenMMLab 2020 ImageNet weights the published models started from)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", "--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=train)

    p = sub.add_parser("config", help="print the full resolved config as TOML")
    p.add_argument("model", help="a preset name or a CONFIG.toml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value")
    p.add_argument("--keypoints", help="metainfo of a custom keypoint set (JSON/TOML)")
    p.set_defaults(func=config)


def resolve_config(
    model: str, overrides: list[str] | None, keypoints: str | None = None
) -> "Config":
    """A preset or TOML file, with a custom keypoint set and ``--set`` overrides applied."""
    from dataclasses import replace

    from ..config import Config
    from ..errors import InputError
    from ..keypoints import load_keypoint_set

    if model in PRESETS:
        cfg = PRESETS[model].config
    elif model.endswith(".toml"):
        cfg = Config.from_toml(model)
    else:
        raise InputError(f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a .toml")
    if keypoints:
        kset = load_keypoint_set(keypoints)
        cfg = replace(
            cfg, keypoints=kset, model=replace(cfg.model, num_keypoints=kset.num_keypoints)
        )
    return cfg.override(overrides or [])


def config(args: argparse.Namespace) -> int:
    print(resolve_config(args.model, args.set, args.keypoints).to_toml(), end="")
    return 0


def _require(path: Path | None, what: str, option: str, hint: str = "") -> Path:
    """``path``, which must be an existing folder (``what`` ends in "folder") or file."""
    from ..errors import InputError

    if path is None:
        raise InputError(f"{what}: no such {what}{hint}")
    return existing(path, what, option, hint)


def _check_run_folder(out: Path, inputs: list[Path], resume: bool) -> None:
    """Refuse a run folder that is an input folder or inside one, or whose run files
    (config.toml, run.json, ...) would replace an input file (a resumed run may read its own
    config.toml)."""
    from ..errors import OutputError
    from ..training.run_folder import LOCK, RUN_FILES

    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out}: exists and is not a folder")
    folder = out.resolve()
    for path in inputs:
        where = path.resolve()
        if path.is_dir() and folder.is_relative_to(where):
            raise OutputError(f"--out {out}: inside the input folder {path}; train elsewhere")
        own = resume and where.name == "config.toml"
        if where.parent == folder and where.name in (*RUN_FILES, LOCK, "tb") and not own:
            raise OutputError(
                f"--out {out}: the run would write {where.name} over the input {path}; "
                "train into another folder"
            )


def _data_of_the_run(args: argparse.Namespace, validate: bool) -> None:
    """A resume given no data options reads the data its run read (``run.json``'s latest
    start), its validation data too unless other validation options were given."""
    from ..training.run_folder import RunFolder

    start = RunFolder(Path(args.out), writer=False).last_start() or {}
    data, val = start.get("train_data"), start.get("val_data")
    if not isinstance(data, dict) or not data.get("ann_file") or not data.get("image_dir"):
        return  # an older or foreign record: the options are needed
    args.ann_file, args.images = data["ann_file"], data["image_dir"]
    said = f"{args.ann_file}, {args.images}"
    if validate and isinstance(val, dict) and val.get("ann_file") and val.get("image_dir"):
        args.val_ann_file, args.val_images = val["ann_file"], val["image_dir"]
        args.val_bbox_file = val.get("bbox_file")
        said += f"; validation {args.val_ann_file}"
    print(f"resuming with the data the run read (run.json): {said}", file=sys.stderr)


def train(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..training import Dataset
    from ..training import train as run_training
    from ..training.run_folder import RunFolder
    from ._options import check_device

    if not args.out.strip():
        raise InputError("--out: an empty path (give the run folder)")
    cfg = resolve_config(args.model, args.set, args.keypoints)
    check_device(args.device)
    val_options = ("val_ann_file", "val_images", "val_bbox_file")
    given_val = ["--" + n.replace("_", "-") for n in val_options if getattr(args, n)]
    if args.no_val and given_val:
        warnings.warn(f"{', '.join(given_val)}: no effect with --no-val", stacklevel=1)
    if args.resume and not (args.ann_file or args.images or args.coco_root):
        _data_of_the_run(args, validate=not args.no_val and not given_val)
    root = Path(args.coco_root) if args.coco_root else None
    if root is not None:
        existing(root, "COCO folder", "--coco-root")
    ann = Path(args.ann_file) if args.ann_file else root / COCO_TRAIN_ANN if root else None
    images = Path(args.images) if args.images else root / COCO_TRAIN_IMAGES if root else None
    if ann is None or images is None:
        missing = " and ".join(o for o, v in (("--ann-file", ann), ("--images", images)) if not v)
        raise InputError(f"no training data: give {missing}, or --coco-root")
    by_root = "--coco-root"
    train_data = Dataset(
        _require(ann, "annotation file", "--ann-file" if args.ann_file else by_root),
        _require(images, "image folder", "--images" if args.images else by_root),
    )
    val_data = None
    if not args.no_val:
        val_ann = Path(args.val_ann_file) if args.val_ann_file else None
        val_images = Path(args.val_images) if args.val_images else None
        val_boxes = Path(args.val_bbox_file) if args.val_bbox_file else None
        if root:
            val_ann = val_ann or root / COCO_VAL_ANN
            val_images = val_images or root / COCO_VAL_IMAGES
            if val_boxes is None and (root / COCO_VAL_DETECTIONS).is_file():
                val_boxes = root / COCO_VAL_DETECTIONS
        if val_ann is None and (val_images or val_boxes):
            given = "--val-images" if val_images else "--val-bbox-file"
            raise InputError(f"{given} needs --val-ann-file (or --coco-root)")
        if val_ann is not None:
            hint = " (train without validation: --no-val)"
            val_data = Dataset(
                _require(val_ann, "validation annotation file",
                         "--val-ann-file" if args.val_ann_file else by_root, hint),
                _require(val_images or images, "validation image folder",
                         "--val-images" if args.val_images else by_root if root else "--images",
                         hint),
                _require(val_boxes, "validation detection file",
                         "--val-bbox-file" if args.val_bbox_file else by_root)
                if val_boxes else None,
            )  # fmt: skip
    if args.resume:  # before the annotations are read
        RunFolder(args.out, writer=False).check(resume=True)
    read = [args.model, ann, images, args.keypoints, args.pretrained]
    if val_data is not None:
        read += [val_data.ann_file, val_data.image_dir, val_data.bbox_file]
    inputs = [Path(f) for f in read if f and Path(f).exists()]
    _check_run_folder(Path(args.out), inputs, args.resume)
    try:
        summary = run_training(
            cfg,
            train_data,
            args.out,
            val_data,
            args.pretrained,
            args.resume,
            args.device,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        last = Path(args.out) / "last.pth"
        where = f"--resume continues from {last}" if last.is_file() else "no epoch was finished"
        print(f"\ninterrupted; {where}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0
