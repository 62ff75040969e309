"""The ``nextpose`` command: each subcommand is a thin call into the Python API."""

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from .checkpoint import CheckpointError
from .config import Config
from .data.coco import CocoKeypoints
from .data.images import ImageError, VideoError, is_video_file
from .detection import DEFAULT_DETECTOR, DETECTORS
from .inference import load
from .presets import PRESETS
from .training.loop import TrainingError

COCO_TRAIN_ANN = "annotations/person_keypoints_train2017.json"
COCO_TRAIN_IMAGES = "train2017"
IMAGES_PER_CHUNK = 16  # images whose crops go through the network together


def _count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _check_device(device: str | None) -> None:
    """Refuse a device string torch cannot use before any model is loaded."""
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA devices"
        )


def _read_boxes_file(path: Path) -> "BoxTable":  # noqa: F821 (imported lazily)
    """A boxes file (``{"<image>": [[x1, y1, x2, y2, score?], ...]}`` or COCO detection
    results) as a :class:`~nextpose.pipeline.BoxTable`; a bad file ends the command."""
    from .pipeline import BoxTable

    try:
        return BoxTable.read(path)
    except ValueError as e:
        raise UsageError(f"{e}") from None


class UsageError(Exception):
    """A command line that cannot work (a missing file, clashing options, a bad device), found
    before any heavy work; :func:`main` prints it and exits with status 2, as argparse does."""


class _JsonList:
    """A JSON list written one record at a time (memory stays flat on long videos).

    A file is written under a temporary name and renamed when closed, so a reader never sees
    half a list; on interruption, the records so far still form a valid file.
    """

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        self.count = 0
        self._tmp: str | None = None
        if self.path is None:
            self._file: IO[str] = sys.stdout
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, self._tmp = tempfile.mkstemp(
                prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
            )
            self._file = os.fdopen(fd, "w")

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(("[\n" if self.count == 0 else ",\n") + json.dumps(record))
        self.count += 1

    def close(self) -> None:
        self._file.write("\n]\n" if self.count else "[]\n")
        self._file.flush()
        if self._tmp is not None:
            self._file.close()
            os.replace(self._tmp, self.path)


def _records(frame: Any, coco: bool) -> list[dict[str, Any]]:
    """One output record per person: COCO results, or nextpose's own layout (the default)."""
    if coco:
        return frame.to_coco()
    poses, out = frame.poses, []
    for i in range(len(poses)):
        kpts = np.concatenate([poses.keypoints[i], poses.scores[i][:, None]], axis=1)
        record: dict[str, Any] = {"image": frame.name}
        if frame.frame is not None:
            record["frame"], record["time"] = frame.frame, frame.time
        record["bbox"] = [float(v) for v in poses.boxes[i]]
        record["bbox_score"] = float(poses.box_scores[i])
        record["keypoints"] = kpts.astype(float).tolist()
        if frame.track_ids is not None:
            record["track_id"] = int(frame.track_ids[i])
        out.append(record)
    return out


def _frame_line(frame: Any, coco: bool) -> dict[str, Any]:
    """A JSON Lines record: one frame and all its people (also when there are none)."""
    line: dict[str, Any] = {"image": frame.name, "image_id": frame.image_id}
    if frame.frame is not None:
        line["frame"], line["time"] = frame.frame, frame.time
    line["height"], line["width"] = frame.image.shape[:2]
    line["poses"] = _records(frame, coco)
    return line


def _input_groups(inputs: Sequence[str]) -> list[tuple[str, Any]]:
    """Consecutive images and folders form one stream; each video or camera is its own."""
    groups: list[tuple[str, Any]] = []
    for text in inputs:
        if text.isdigit() and not Path(text).exists():
            groups.append(("camera", int(text)))
        elif is_video_file(text):
            groups.append(("video", text))
        elif groups and groups[-1][0] == "images":
            groups[-1][1].append(text)
        else:
            groups.append(("images", [text]))
    return groups


class _Drawer:
    """``--draw DIR``: an image per image (folder layout kept), an MP4 per video or camera."""

    def __init__(self, directory: Path, score_threshold: float):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.score_threshold = score_threshold
        self._used: set[Path] = set()
        self._video: cv2.VideoWriter | None = None
        self.written: list[Path] = []

    def _unique(self, target: Path) -> Path:
        stem, n = target.stem, 1
        while target in self._used:
            n += 1
            target = target.with_name(f"{stem}-{n}{target.suffix}")
        self._used.add(target)
        return target

    def image(self, frame: Any) -> None:
        target = self._unique(self.dir / Path(frame.name).with_suffix(".jpg"))
        target.parent.mkdir(parents=True, exist_ok=True)
        drawn = frame.draw(self.score_threshold)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        if ok:
            target.write_bytes(data.tobytes())
            self.written.append(target)

    def video_frame(self, frame: Any) -> None:
        if self._video is None:
            target = self._unique(self.dir / Path(frame.name).with_suffix(".mp4"))
            h, w = frame.image.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._video = cv2.VideoWriter(str(target), fourcc, frame.fps or 30.0, (w, h))
            if not self._video.isOpened():
                self._video = None
                raise ValueError(f"{target}: OpenCV cannot write MP4 video here")
            self.written.append(target)
        drawn = frame.draw(self.score_threshold)
        self._video.write(cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))

    def end_video(self) -> None:
        if self._video is not None:
            self._video.release()
            self._video = None


def _predict(args: argparse.Namespace) -> int:
    from .detection import load_detector
    from .pipeline import PosePipeline

    table = _read_boxes_file(Path(args.boxes)) if args.boxes else None
    if args.detector_weights and not args.detector:
        raise UsageError("--detector-weights needs --detector")
    _check_device(args.device)
    estimator = load(args.model, args.checkpoint, device=args.device, **_runtime(args))
    if args.batch_size:
        estimator.config = replace(
            estimator.config,
            inference=replace(estimator.config.inference, batch_size=args.batch_size),
        )
    detector = None
    if args.detector:
        detector = load_detector(
            args.detector,
            weights=args.detector_weights or "default",
            device=args.device,
            score_threshold=args.detector_score,
            min_size=args.detector_min_size,
            max_people=args.max_people,
            batch_size=args.detector_batch_size,
        )
    pipeline = PosePipeline(
        estimator,
        detector,
        boxes=table,
        flip=not args.no_flip,
        workers=args.workers,
        track=args.track,
        smooth=args.smooth,
    )
    coco = args.format == "coco"
    failed: list[str] = []

    def skipped(name: str, error: Exception) -> None:
        nonlocal inputs
        print(f"warning: skipped {error}", file=sys.stderr)
        failed.append(name)
        inputs += 1

    drawer = _Drawer(Path(args.draw), args.score_threshold) if args.draw else None
    results = _JsonList(args.out)
    lines = open(args.jsonl, "w") if args.jsonl else None  # noqa: SIM115 (closed below)
    frames = people = inputs = 0
    videos = False
    interrupted = False
    try:
        for kind, source in _input_groups(args.inputs):
            videos = videos or kind != "images"
            try:
                stream = pipeline.run(
                    source,
                    on_error=skipped,
                    progress=False if args.no_progress else None,
                    max_frames=args.max_frames,
                )
                for frame in stream:
                    inputs += 1 if kind == "images" or frame.index == 0 else 0
                    frames += 1
                    people += len(frame)
                    for record in _records(frame, coco):
                        results.write(record)
                    if lines is not None:
                        lines.write(json.dumps(_frame_line(frame, coco)) + "\n")
                    if drawer is not None:
                        drawer.image(frame) if kind == "images" else drawer.video_frame(frame)
            except VideoError as e:
                skipped(str(source), e)
            finally:
                if drawer is not None:
                    drawer.end_video()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted after {frames} frames; the outputs hold them", file=sys.stderr)
    finally:
        results.close()
        if lines is not None:
            lines.close()
    unit = "frames" if videos else "images"
    if args.out:
        print(f"wrote {people} poses from {frames} {unit} to {args.out}", file=sys.stderr)
    if drawer is not None and drawer.written:
        print(f"drew {len(drawer.written)} files in {args.draw}", file=sys.stderr)
    if failed:
        what = "inputs" if videos else "images"
        print(f"warning: {len(failed)} of {inputs} {what} could not be read", file=sys.stderr)
    if table is not None and table.misses:
        print(
            f"warning: {table.misses} of {table.lookups} images had no entry in {args.boxes}; "
            "each got one whole-image box (check the file names or image ids)",
            file=sys.stderr,
        )
    if interrupted:
        return 0 if all(kind == "camera" for kind, _ in _input_groups(args.inputs)) else 130
    if frames == 0 and not failed:
        print(f"warning: no images found in {' '.join(args.inputs)}", file=sys.stderr)
        return 1
    return 1 if failed and frames == 0 else 0


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
        raise UsageError("eval needs --coco-root DIR or --ann-file FILE")
    if not ann_file.is_file():
        raise UsageError(f"{ann_file}: no such annotation file")
    out = Path(args.out)
    published = {}
    if args.results:
        if args.model:
            raise UsageError("--results scores an existing file; give no MODEL with it")
        metrics = score_results_file(args.results, ann_file)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    else:
        if not args.model:
            raise UsageError("eval needs a MODEL (or --results FILE)")
        images = Path(args.images) if args.images else root / COCO_VAL_IMAGES if root else None
        if images is None or not images.is_dir():
            raise UsageError(f"{images or 'the images folder'}: no such folder (--images DIR)")
        bbox_file = None
        if args.bbox_file:
            bbox_file = Path(args.bbox_file)
        elif root and not args.gt_boxes:
            bbox_file = root / COCO_VAL_DETECTIONS
        if bbox_file is not None and not bbox_file.is_file():
            raise UsageError(f"{bbox_file}: no such detection file (or use --gt-boxes)")
        _check_device(args.device)
        # The annotation and detection files are read once before the model is loaded (or
        # downloaded): a malformed file is reported before any heavy work.
        coco = CocoKeypoints(ann_file)
        if bbox_file is not None:
            coco.detection_instances(bbox_file)
        estimator = load(args.model, args.checkpoint, device=args.device, **_runtime(args))
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


def _resolve_config(model: str, overrides: list[str], keypoints: str | None = None) -> Config:
    """A preset or TOML file, with a custom keypoint set and ``--set`` overrides applied."""
    from dataclasses import replace

    from .keypoints import load_keypoint_set

    if model in PRESETS:
        config = PRESETS[model].config
    elif model.endswith(".toml"):
        config = Config.from_toml(model)
    else:
        raise UsageError(f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a .toml")
    if keypoints:
        kset = load_keypoint_set(keypoints)
        config = replace(
            config, keypoints=kset, model=replace(config.model, num_keypoints=kset.num_keypoints)
        )
    return config.override(overrides or [])


def _config(args: argparse.Namespace) -> int:
    print(_resolve_config(args.model, args.set, args.keypoints).to_toml(), end="")
    return 0


def _require(path: Path | None, what: str) -> Path:
    """``path``, which must be an existing folder (``what`` ends in "folder") or file."""
    folder = what.endswith("folder")
    if path is None or not (path.is_dir() if folder else path.is_file()):
        raise UsageError(f"{path or what}: no such {what}")
    return path


def _train(args: argparse.Namespace) -> int:
    from .evaluation.evaluate import COCO_VAL_ANN, COCO_VAL_DETECTIONS, COCO_VAL_IMAGES
    from .training import Dataset, train

    config = _resolve_config(args.model, args.set, args.keypoints)
    _check_device(args.device)
    root = Path(args.coco_root) if args.coco_root else None
    if root is not None and not root.is_dir():
        raise UsageError(f"{root}: no such folder (--coco-root)")
    ann = Path(args.ann_file) if args.ann_file else root / COCO_TRAIN_ANN if root else None
    images = Path(args.images) if args.images else root / COCO_TRAIN_IMAGES if root else None
    train_data = Dataset(_require(ann, "annotation file"), _require(images, "image folder"))
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
        if val_ann is not None:
            val_data = Dataset(
                _require(val_ann, "validation annotation file"),
                _require(val_images or images, "validation image folder"),
                _require(val_boxes, "validation detection file") if val_boxes else None,
            )
    if args.resume and not (Path(args.out) / "last.pth").is_file():
        raise UsageError(f"--resume: {Path(args.out) / 'last.pth'} does not exist")
    summary = train(
        config,
        train_data,
        args.out,
        val_data,
        args.pretrained,
        args.resume,
        args.device,
        progress=not args.quiet,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def _runtime(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--backend`` / ``--precision`` choices as :func:`nextpose.load` arguments."""
    return {"backend": args.backend, "precision": args.precision}


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    from .inference import BACKENDS, PRECISIONS

    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how the pose network runs: eager (plain PyTorch, the reference's op order), fast "
        "(BatchNorm folded, channels-last), compile (torch.compile of fast), onnxruntime (CPU); "
        "auto (default) = fast",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="autocast the network to bf16/fp16 (GPUs; CPUs with native bf16/fp16 only)",
    )


def _export(args: argparse.Namespace) -> int:
    from .export import export_onnx

    estimator = load(args.model, args.checkpoint, backend="eager")
    path = export_onnx(
        estimator.model,
        estimator.config,
        args.out,
        input=args.input,
        flip=not args.no_flip,
        warp=args.warp,
        opset=args.opset,
    )
    w, h = estimator.input_size
    if args.input == "crops":
        inputs = f"crops (N, {h}, {w}, 3) uint8 RGB"
        outputs = "keypoints (N, K, 2) crop pixels"
    else:
        inputs = "image (H, W, 3) uint8 RGB, boxes (N, 4) float32 xyxy"
        outputs = "keypoints (N, K, 2) image pixels"
    flip = "without" if args.no_flip else "with"
    print(
        f"wrote {path}: {inputs} -> {outputs}, scores (N, K); {flip} flip test",
        file=sys.stderr,
    )
    return 0


def _add_export_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an ONNX graph with the flip test and decoding inside",
        description="The crops graph takes uint8 RGB crops (N, h, w, 3), cut as nextpose cuts "
        "them, and returns keypoints in crop pixels and scores; the image graph takes a uint8 "
        "RGB image (H, W, 3) and float32 xyxy boxes (N, 4) and returns keypoints in image "
        "pixels and scores. N, H and W are dynamic.",
    )
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a nextpose checkpoint")
    p.add_argument("out", help="the ONNX file to write")
    p.add_argument("--checkpoint", help="weights to use instead of the preset's: a path or URL")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="graph format (onnx)")
    p.add_argument(
        "--input",
        choices=["crops", "image"],
        default="crops",
        help="crops: uint8 crops -> crop pixels (default); image: image + boxes -> image "
        "pixels, the affine crop inside the graph",
    )
    p.add_argument("--no-flip", action="store_true", help="leave the flip test out (2x faster)")
    p.add_argument(
        "--warp",
        choices=["fixed", "grid_sample"],
        default="fixed",
        help="--input image: crop with OpenCV's fixed-point arithmetic (fixed, exact; default) "
        "or with the ONNX GridSample op (grid_sample)",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16; default 17)")
    p.set_defaults(func=_export)


def _add_train_parsers(sub: argparse._SubParsersAction) -> None:
    from .training.pretrained import SOURCES

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
        help=f"trunk initialisation: {', '.join(SOURCES)} (default imagenet: the "
        "OpenMMLab 2020 ImageNet weights the published models started from)",
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("config", help="print the full resolved config as TOML")
    p.add_argument("model", help="a preset name or a CONFIG.toml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a value")
    p.add_argument("--keypoints", help="metainfo of a custom keypoint set (JSON/TOML)")
    p.set_defaults(func=_config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextpose", description="Top-down human pose estimation (ResNeXt SimpleBaseline)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "predict",
        help="keypoints of the people in images, folders, videos or a camera",
        description="Person boxes come from --detector, --boxes, or the whole image (the "
        "default). Output: a JSON list with one record per person, in box order.",
    )
    p.add_argument("model", help=f"a preset ({', '.join(PRESETS)}) or a nextpose checkpoint")
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively), video files, or a camera index (0)",
    )
    p.add_argument("--checkpoint", help="weights to use instead of the preset's: a path or URL")
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--detector",
        nargs="?",
        const=DEFAULT_DETECTOR,
        choices=list(DETECTORS),
        metavar="NAME",
        help=f"find people with a torchvision detector (default {DEFAULT_DETECTOR}; "
        f"choices: {', '.join(DETECTORS)}); its COCO weights are downloaded once",
    )
    source.add_argument(
        "--boxes",
        help='JSON {"<image file name>": [[x1, y1, x2, y2, score?], ...]}, image pixels, or COCO '
        "detection results (image_id = the file's number or the frame number); an image "
        "without an entry gets one whole-image box",
    )
    source.add_argument(
        "--whole-image", action="store_true", help="one box covering each image (the default)"
    )
    p.add_argument("--detector-weights", help="detector weights instead of the COCO download")
    p.add_argument(
        "--detector-score",
        type=float,
        default=0.5,
        metavar="S",
        help="keep detections scoring at least this (default 0.5)",
    )
    p.add_argument(
        "--detector-min-size",
        type=float,
        default=32.0,
        metavar="PX",
        help="drop detections whose longer side is below this (default 32 pixels)",
    )
    p.add_argument(
        "--max-people",
        type=_count(1),
        metavar="N",
        help="keep the N highest-scoring detections per image (default: all)",
    )
    p.add_argument(
        "--detector-batch-size",
        type=_count(1),
        metavar="N",
        help="frames per detector pass (default: 4 on a GPU, 1 on a CPU)",
    )
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster)")
    p.add_argument("--out", help="write the poses here as JSON (default: standard output)")
    p.add_argument(
        "--format",
        choices=["nextpose", "coco"],
        default="nextpose",
        help="nextpose: {image, [frame, time,] bbox (xyxy), bbox_score, keypoints [[x, y, s]...]}; "
        "coco: COCO keypoint results {image_id, category_id, keypoints, score, bbox (xywh), "
        "file_name, [frame, time]}",
    )
    p.add_argument("--jsonl", metavar="FILE", help="also write one JSON line per image/frame")
    p.add_argument(
        "--draw", metavar="DIR", help="write the images (an MP4 per video) with the poses drawn"
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=0.3,
        help="hide drawn keypoints scoring at or below this (default 0.3)",
    )
    p.add_argument(
        "--track", action="store_true", help="give people track ids across frames (IoU matching)"
    )
    p.add_argument(
        "--smooth",
        action="store_true",
        help="smooth keypoints over time per track (One-Euro filter; implies --track)",
    )
    p.add_argument(
        "--max-frames", type=_count(1), metavar="N", help="stop each input after N frames"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--batch-size", type=_count(1), help="crops per pose forward pass")
    p.add_argument(
        "--workers", type=_count(1), default=2, help="image decoding threads (default 2)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime_options(p)
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
    p.add_argument("--batch-size", type=_count(1), help="crops per forward pass (default 32)")
    p.add_argument(
        "--workers", type=_count(0), default=2, help="image decoding processes (0: none)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", required=True, help="folder for keypoints.json and metrics.json")
    _add_runtime_options(p)
    p.set_defaults(func=_eval)

    _add_export_parser(sub)
    _add_train_parsers(sub)
    return parser


class _WarningPrinter(logging.Handler):
    """Prints the library's warnings (e.g. skipped images) as ``warning: ...`` on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"{record.levelname.lower()}: {record.getMessage()}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    logger = logging.getLogger("nextpose")
    if not any(isinstance(h, _WarningPrinter) for h in logger.handlers):
        logger.addHandler(_WarningPrinter(logging.WARNING))
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, CheckpointError, ImageError, TrainingError, ValueError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output folder that cannot be written, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 2
