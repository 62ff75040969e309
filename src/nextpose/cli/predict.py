"""``nextpose predict``: poses in images, folders, videos and cameras, written as JSON."""

import argparse
import logging
import sys

from ._options import (
    add_detector,
    add_model,
    add_progress,
    add_runtime,
    check_detector,
    check_device,
    check_extras,
    count,
    load_detector_of,
    note_ignored,
    number,
    output_file,
    path_name,
    run_options,
)

log = logging.getLogger("nextpose")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="keypoints of the people in images, folders, videos or a camera",
        description="Person boxes come from --detector, --boxes, or the whole image (the "
        "default). Output: a JSON list with one record per person, in box order.",
    )
    add_model(p)
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively), video files, or a camera index (0)",
    )
    source = p.add_mutually_exclusive_group()
    add_detector(p, source)
    source.add_argument(
        "--boxes",
        help='JSON {"<image file name>": [[x1, y1, x2, y2, score?], ...]}, image pixels, or COCO '
        "detection results (image_id = the file's number or the frame number); an image "
        "without an entry gets one whole-image box",
    )
    source.add_argument(  # the default; kept so that older command lines still run
        "--whole-image", action="store_true", help=argparse.SUPPRESS
    )
    p.add_argument(
        "--bbox-format",
        choices=["xyxy", "xywh"],
        default="xyxy",
        help='how a {"<image>": [...]} --boxes file gives boxes: x1, y1, x2, y2 (default) or '
        "x, y, w, h (COCO detection results are always x, y, w, h)",
    )
    p.add_argument(
        "--out",
        type=output_file,
        help="write the poses here as JSON (- or default: standard output, unless --jsonl is "
        "given)",
    )
    p.add_argument(
        "--format",
        choices=["nextpose", "coco"],
        default="nextpose",
        help="nextpose: {image, [frame, time,] bbox (xyxy), bbox_score, keypoints [[x, y, s]...]}; "
        "coco: COCO keypoint results {image_id, category_id, keypoints, score, bbox (xywh), "
        "file_name, [frame, time]}",
    )
    p.add_argument(
        "--jsonl",
        type=output_file,
        metavar="FILE",
        help="also write one JSON line per image/frame (-: standard output)",
    )
    p.add_argument(
        "--draw",
        type=path_name,
        metavar="DIR",
        help="write the images (an MP4 per video) with the poses drawn",
    )
    p.add_argument(
        "--score-threshold",
        type=number,
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
        "--max-frames",
        type=count(1),
        metavar="N",
        help="stop each input after N frames (a camera: N of its frames, estimated or dropped)",
    )
    p.add_argument(
        "--every-frame",
        action="store_true",
        help="a camera or live stream: estimate every frame however far behind that falls "
        "(default: the newest frame each time, dropping those it cannot keep up with)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue a stopped run of the same command from the parts it left in "
        "OUT.parts/ (its complete images and videos are skipped)",
    )
    add_runtime(p)
    add_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    from .. import distributed
    from ..errors import InputError
    from ..fileio import is_special
    from ..sources import input_groups

    groups = input_groups(args.inputs)
    # Files and videos go through a job (sharded under torchrun, resumable): its parts are
    # written as it goes and merged into the outputs at the end. Standard output, cameras
    # and streams are written as they come, in one process.
    shareable = all(
        kind == "images" or (kind == "video" and Path(source).is_file()) for kind, source in groups
    )
    # A device or pipe (--out /dev/stdout) is written as it comes: a job's parts go beside it.
    special = any(is_special(p) for p in (args.out, args.jsonl) if p)
    job = bool(args.out or args.jsonl) and shareable and not special
    if not job and (args.resume or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        what = "--resume" if args.resume else "predict under torchrun"
        raise InputError(
            f"{what} needs --out FILE or --jsonl FILE, and files or videos as inputs (no "
            "camera or stream)"
        )
    if not job:
        return _run(args, groups, None)
    check_device(args.device)
    env, device = distributed.init(args.device)
    try:
        return _run(args, groups, str(device), env.is_main)
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace, groups: list, device: str | None, main: bool = True) -> int:
    from .. import distributed
    from ..boxes import BoxTable
    from ..pipeline import PosePipeline
    from ..predictor import load

    check_detector(args)
    if main:
        note_ignored(args)
    guard = _guard(args, groups)
    table = BoxTable.read(args.boxes, args.bbox_format) if args.boxes else None
    check_device(args.device)
    check_extras(args)
    with distributed.main_first():
        options = {**run_options(args), "device": device or args.device}
        estimator = load(args.model, args.checkpoint, **options)
        detector = load_detector_of(args, device or args.device)
    pipeline = PosePipeline(
        estimator, detector, boxes=table, flip=not args.no_flip, track=args.track,
        smooth=args.smooth,
    )  # fmt: skip
    if device is not None:
        return _run_job(args, pipeline, main)
    return _stream(args, groups, pipeline, guard, table)


def _guard(args: argparse.Namespace, groups: list):
    """The guard of the run's inputs, with its outputs claimed (none may replace an input)."""
    from ..writers import Guard

    # glob patterns are expanded: the files they name are inputs; so are the boxes and weights
    guard = Guard(
        [p for kind, source in groups if kind != "camera"
         for p in (source if kind == "images" else [source])] + read_files(args)
    )  # fmt: skip
    if args.out:
        guard.claim(args.out, "--out")
    if args.jsonl:
        guard.claim(args.jsonl, "--jsonl")
    if args.draw:
        guard.claim_folder(args.draw, "--draw")
    return guard


def _stream(args: argparse.Namespace, groups: list, pipeline, guard, table) -> int:
    """The inputs through the pipeline in this process, the poses written as they come."""
    from ..errors import VideoError
    from ..writers import DrawingWriter, JsonLinesWriter, JsonListWriter

    coco = args.format == "coco"
    failed: list[str] = []
    frames = people = inputs = 0

    def skipped(name: str, error: Exception) -> None:
        nonlocal inputs
        print(f"warning: skipped {error}", file=sys.stderr)
        failed.append(name)
        inputs += 1

    drawer = DrawingWriter(args.draw, args.score_threshold, guard) if args.draw else None
    # Standard output has the list unless --jsonl alone names where the poses go.
    results = JsonListWriter(args.out, "--out") if args.out or not args.jsonl else None
    lines = JsonLinesWriter(args.jsonl, "--jsonl") if args.jsonl else None
    outputs = [w for w in (results, lines) if w is not None]
    videos = any(kind != "images" for kind, _ in groups)
    try:
        for kind, source in groups:
            try:
                stream = pipeline.run(
                    source,
                    on_error=skipped,
                    progress=False if args.no_progress else None,
                    max_frames=args.max_frames,
                    every_frame=args.every_frame,
                )
                first = True  # a video counts once (a camera's first frame may be dropped)
                for frame in stream:
                    inputs += 1 if kind == "images" or first else 0
                    first = False
                    frames += 1
                    people += len(frame)
                    if results is not None:
                        for record in frame.to_coco() if coco else frame.to_records():
                            results.write(record)
                    if lines is not None:
                        lines.write(frame.to_line(coco))
                    if drawer is not None:
                        drawer.image(frame) if kind == "images" else drawer.video_frame(frame)
                if drawer is not None:
                    drawer.end_video()
            except VideoError as e:
                if drawer is not None:
                    drawer.abort()
                skipped(str(source), e)
    except KeyboardInterrupt:
        kept = [w.keep_partial() for w in outputs]
        names = list(dict.fromkeys("standard output" if k is None else str(k) for k in kept))
        video = drawer.keep_partial() if drawer is not None else None
        held = names + ([str(video)] if video is not None else []) or ["standard output"]
        verb = "holds" if len(held) == 1 else "hold"
        print(f"\ninterrupted after {_count(frames, 'frame')}; {', '.join(held)} {verb} them",
              file=sys.stderr)  # fmt: skip
        return 0 if all(kind == "camera" for kind, _ in groups) else 130
    except BaseException:
        for w in outputs:
            w.abort()
        if drawer is not None:
            drawer.abort()
        raise
    finally:
        if drawer is not None and not drawer.written:  # nothing drawn: no empty folder left
            drawer.remove_if_unused()
    # Nothing read: an earlier output stays as it was (a new one is a valid, empty file).
    kept = [w for w in outputs if not frames and w.path is not None and w.path.exists()]
    for w in outputs:
        w.abort() if w in kept else w.close()
    unit = "frame" if videos else "image"
    if args.out and results not in kept:
        print(f"wrote {_count(people, 'pose')} from {_count(frames, unit)} to {args.out}",
              file=sys.stderr)  # fmt: skip
    if kept:
        _kept([str(w.path) for w in kept])
    if drawer is not None and drawer.written:
        print(f"drew {_count(len(drawer.written), 'file')} in {args.draw}", file=sys.stderr)
    misses, lookups = (table.misses, table.lookups) if table is not None else (0, 0)
    return _warn(args, videos, len(failed), inputs, misses, lookups, frames)


def _warn(
    args: argparse.Namespace, videos: bool, failed: int, inputs: int, misses: int, lookups: int,
    frames: int,
) -> int:  # fmt: skip
    """Say what went wrong in a run (skipped inputs, images without boxes, no image at all);
    the exit status: 1 if no image was read."""
    if failed:
        what = "inputs" if videos else "images"
        print(f"warning: {failed} of {inputs} {what} were skipped", file=sys.stderr)
    if misses:
        print(
            f"warning: {misses} of {lookups} images had no entry in {args.boxes}; "
            "each got one whole-image box (check the file names or image ids)",
            file=sys.stderr,
        )
    if frames == 0 and not failed:
        print(f"warning: no images found in {' '.join(args.inputs)}", file=sys.stderr)
    return 1 if frames == 0 else 0


def _kept(paths: list[str]) -> None:
    """Say that a run which read no image left these earlier outputs as they were."""
    if paths:
        were = "it was" if len(paths) == 1 else "they were"
        print(f"nothing was read: {' and '.join(paths)} left as {were}", file=sys.stderr)


def read_files(args: argparse.Namespace) -> list[str]:
    """The files other than the inputs that the command reads (boxes, weights), which no
    output may replace (a preset name or URL names no file: the guard skips it)."""
    given = (args.model, args.checkpoint, args.boxes, args.detector_weights)
    return [f for f in given if f]


def _run_job(args: argparse.Namespace, pipeline, main: bool) -> int:
    """Files and videos through :func:`nextpose.sharded.predict_job` (under torchrun: this
    process's share)."""
    from pathlib import Path

    from .. import distributed, sharded
    from ..errors import InputError, NextposeError
    from ..options import device_type

    described = ("model", "checkpoint", "boxes", "bbox_format", "detector", "detector_weights",
                 "detector_score", "detector_min_size", "max_people", "smooth", "draw",
                 "score_threshold", "backend", "precision", "batch_size", "decode",
                 "device_crops")  # fmt: skip
    options = {name: getattr(args, name) for name in described}
    options["device"] = device_type(args.device)
    try:
        summary = sharded.predict_job(
            pipeline,
            args.inputs,
            out=args.out,
            jsonl=args.jsonl,
            coco=args.format == "coco",
            draw=args.draw,
            score_threshold=args.score_threshold,
            resume=args.resume,
            max_frames=args.max_frames,
            options=options,
            progress=False if args.no_progress else None,
            reads=read_files(args),
        )
    except KeyboardInterrupt:
        folder = sharded.parts_folder(args.out, args.jsonl)
        if main and distributed.current().world_size == 1:
            kept = sharded.write_partial(args.out, args.jsonl)
            if not kept:
                print("\ninterrupted before any image was done; nothing written", file=sys.stderr)
                return 130
            where = ", ".join(str(k) for k in kept)
            verb = "holds" if len(kept) == 1 else "hold"
            print(f"\ninterrupted; {where} {verb} what was done", file=sys.stderr)
        print(f"--resume continues from {folder}", file=sys.stderr)
        return 130
    except NextposeError as e:  # a full disk, an unwritable drawing: the parts done are kept
        folder = sharded.parts_folder(args.out, args.jsonl)
        # A refusal (InputError: a live run's folder, another job's, files not a job's) says
        # itself what to do with the folder; removing a live run's would lose its work.
        refused = isinstance(e, InputError)
        if main and not refused and folder.is_dir() and any(folder.glob("part-*")):
            note = (f"{folder} keeps what was done: once that is fixed, the same command with "
                    "--resume continues from it (or remove the folder to start again)")  # fmt: skip
            raise type(e)(f"{e.args[0] if e.args else e}\n{note}") from None
        raise
    if not main:
        return 0
    videos = any(kind != "images" for kind, _ in sharded.input_groups(args.inputs))
    unit = "frame" if videos else "image"
    earlier = summary.frames - summary.new_frames
    note = f" ({earlier} from the stopped run)" if args.resume and earlier > 0 else ""
    rate = summary.new_people / max(summary.seconds, 1e-9)
    world = summary.world_size
    print(
        f"{_count(summary.frames, unit)}{note}, {_count(summary.people, 'person', 'people')} in "
        f"{summary.seconds:.1f} s "
        f"({rate:.1f} people/s), {world} {'process' if world == 1 else 'processes'}",
        file=sys.stderr,
    )
    for path in summary.outputs:
        print(f"wrote {path}", file=sys.stderr)
    written = {Path(p).resolve() for p in summary.outputs}
    _kept([f for f in (args.out, args.jsonl) if f and Path(f).resolve() not in written])
    if summary.drawn:
        print(f"drew {_count(summary.drawn, 'file')} in {args.draw}", file=sys.stderr)
    return _warn(
        args, videos, len(summary.failed), summary.inputs, summary.box_misses,
        summary.box_lookups, summary.frames,
    )  # fmt: skip


def _count(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun, singular for 1: "1 pose", "2 poses"."""
    return f"{n} {one if n == 1 else many or one + 's'}"
