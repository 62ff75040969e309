"""``nextpose convert``: a checkpoint as ``.safetensors`` (weights and config, no code)."""

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="write a checkpoint's weights (and nextpose config) as .safetensors",
        description="Reads any checkpoint nextpose loads (mmpose 0.x/1.x files, nextpose's own, a "
        "path or URL) and writes its weights with nextpose's names, and its config when it has "
        "one, as a .safetensors file: a format that cannot carry code.",
    )
    p.add_argument("src", help="the checkpoint to read: a path or URL")
    p.add_argument("dst", help="the .safetensors file to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import convert
    from ..errors import InputError
    from ..fileio import check_writable

    if not args.dst.endswith(".safetensors"):
        raise InputError(f"{args.dst}: the output must be a .safetensors file")
    check_writable(args.dst, "DST")
    path = convert(args.src, args.dst)
    print(f"wrote {path}", file=sys.stderr)
    return 0
