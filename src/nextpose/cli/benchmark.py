"""``nextpose benchmark``: time the backends on this machine for a model and say which to use."""

import argparse
import sys

from ._options import add_model, count, number


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "benchmark",
        help="time the backends and precisions on this machine and print which to use",
        description="Times the pose network of MODEL (flip test and decoding included) on each "
        "backend and precision this machine runs, round robin for about --seconds, and "
        "compares their keypoints with the plain fp32 model's. Without --images the crops are "
        "random pixels: fine for speed, meaningless for the keypoints of bf16/fp16 (judge those "
        "on real images). Without --checkpoint the preset's weights are not downloaded: the "
        "network is timed with random weights (the speed does not depend on them).",
    )
    add_model(p)
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    p.add_argument(
        "--backends",
        help="comma-separated BACKEND[:PRECISION] to time, e.g. fast,onnxruntime,compile:bf16 "
        "(default: eager, fast, onnxruntime on a CPU, and fast in each precision this device "
        "runs natively; compile only when named: its first call takes ~20-55 s)",
    )
    p.add_argument("--batch-size", type=count(1), default=8, help="crops per call (default 8)")
    p.add_argument(
        "--seconds", type=number, default=60.0, help="about how long to time (default 60)"
    )
    p.add_argument("--images", nargs="+", default=(), help="time on these images' crops")
    p.add_argument("--no-flip", action="store_true", help="without the flip test")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from .. import benchmark
    from ..errors import InputError
    from ..model import PoseNet
    from ..predictor import PoseEstimator, load
    from ..presets import PRESETS, get_preset
    from ._options import check_device

    check_device(args.device)
    if args.seconds <= 0:
        raise InputError(f"--seconds must be > 0, not {args.seconds}")
    if args.model in PRESETS and args.checkpoint is None:
        torch.manual_seed(0)
        config = get_preset(args.model).config
        estimator = PoseEstimator(PoseNet(config.model), config, args.device, name=args.model)
    else:
        estimator = load(args.model, args.checkpoint, device=args.device)
    names = [n for n in (args.backends or "").split(",") if n]
    pairs = benchmark.candidates(estimator, names)
    crops = benchmark.sample_crops(estimator, args.batch_size, args.images)
    say = (lambda m: print(m, file=sys.stderr)) if sys.stderr.isatty() else (lambda _: None)
    timings = benchmark.run(estimator, pairs, crops, args.seconds, not args.no_flip, say)
    w, h = estimator.input_size
    crops_of = f"crops of {len(args.images)} image(s)" if args.images else "random pixels"
    print(
        f"{estimator.name}: {w}x{h} input, {estimator.keypoint_set.num_keypoints} keypoints; "
        f"{args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}, flip "
        f"{'off' if args.no_flip else 'on'}, {crops_of}"
    )
    print(benchmark.table(timings))
    best32, best = benchmark.recommend(timings)
    if best32 is not None:
        print(f"fastest fp32 with the plain model's keypoints: --backend {best32.backend}")
    if best is not None and best is not best32:
        print(
            f"fastest: --backend {best.backend} --precision {best.precision} "
            f"({100 * best.equal:.1f} % of keypoints equal to fp32's on these crops"
            f"{'' if args.images else '; random pixels: judge that with --images'})"
        )
    return 0
