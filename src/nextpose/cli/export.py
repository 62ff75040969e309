"""``nextpose export``: an ONNX graph with the flip test and decoding inside."""

import argparse
import os
import sys
from pathlib import Path

from ._options import add_decode, add_model, path_name


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an ONNX graph with the flip test and decoding inside",
        description="The crops graph takes uint8 RGB crops (N, h, w, 3), cut as nextpose cuts "
        "them, and returns keypoints in crop pixels and scores; the image graph takes a uint8 "
        "RGB image (H, W, 3) and float32 xyxy boxes (N, 4) and returns keypoints in image "
        "pixels and scores. N, H and W are dynamic.",
    )
    add_model(p)
    p.add_argument("out", type=path_name, help="the ONNX file to write")
    p.add_argument("--format", choices=["onnx"], default="onnx", help=argparse.SUPPRESS)
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
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (16-20; default 17)")
    add_decode(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError, require
    from ..export import OPSET_MAX, export_onnx
    from ..fileio import check_writable
    from ..predictor import load

    require("onnx", "onnx", "nextpose export")
    out = Path(args.out).resolve()
    for given in (args.model, args.checkpoint):
        if given and Path(given).exists() and Path(given).resolve() == out:
            raise InputError(f"{args.out}: is the model's own file; name another output")
    if args.out.endswith(("/", os.sep)):  # Path() drops the slash: a folder was meant
        raise InputError(f"{args.out}: a folder name; name the .onnx file to write")
    if out.suffix.lower() != ".onnx":  # not over an image or a checkpoint by a slip
        raise InputError(f"{args.out}: the output must be an .onnx file")
    check_writable(args.out, "OUT")
    if not 16 <= args.opset <= OPSET_MAX:
        raise InputError(f"--opset {args.opset}: choose an opset from 16 to {OPSET_MAX}")
    estimator = load(args.model, args.checkpoint, backend="eager", decode=args.decode)
    path = export_onnx(
        estimator.model,
        estimator.config,
        args.out,
        input=args.input,
        flip=not args.no_flip,
        warp=args.warp,
        opset=args.opset,
    )
    decode = estimator.config.inference.decode
    w, h = estimator.input_size
    if args.input == "crops":
        inputs = f"crops (N, {h}, {w}, 3) uint8 RGB"
        outputs = "keypoints (N, K, 2) crop pixels"
    else:
        inputs = "image (H, W, 3) uint8 RGB, boxes (N, 4) float32 xyxy"
        outputs = "keypoints (N, K, 2) image pixels"
    flip = "without" if args.no_flip else "with"
    print(
        f"wrote {path}: {inputs} -> {outputs}, scores (N, K); {flip} flip test, {decode} decoding",
        file=sys.stderr,
    )
    return 0
