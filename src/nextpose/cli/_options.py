"""Options shared by several verbs, defined once. This module imports no torch: ``nextpose
--help`` stays fast (the lists below are checked against the library's by the tests)."""

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DECODINGS
from ..options import BACKENDS, DEFAULT_DETECTOR, DETECTOR_NAMES, KEEP_FP32, PRECISIONS
from ..presets import PRESETS

if TYPE_CHECKING:
    from ..detection import PersonDetector

PRETRAINED = ("imagenet", "imagenet-2021", "torchvision", "none", "a path or URL")


def count(minimum: int) -> Callable[[str], int]:
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


def path_name(text: str) -> str:
    """An argparse type: a file or folder name, not empty (``--out ''`` names no file) and not
    ``-`` (standard output where a command can write there; a file named so is ``./-``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    if text == "-":
        raise argparse.ArgumentTypeError(
            "'-' (standard output) cannot take this output; name a file or folder (./- for one "
            "named '-')"
        )
    return text


def existing(path: Path, what: str, option: str = "", hint: str = "") -> Path:
    """``path``, which must be an existing folder (``what`` ends in "folder") or file; else an
    InputError naming ``option`` and ``path`` and what is wrong (missing, or a file where a
    folder is asked, or back)."""
    from ..errors import InputError

    where = f"{option} {path}" if option else str(path)
    folder = what.endswith("folder")
    if not path.exists():
        raise InputError(f"{where}: no such {what}{hint}")
    if folder and not path.is_dir():
        raise InputError(f"{where}: is a file, not the {what}{hint}")
    if not folder and path.is_dir():
        raise InputError(f"{where}: is a folder, not the {what}{hint}")
    return path


def output_file(text: str) -> str:
    """An argparse type: :func:`path_name`, or ``-`` for standard output (``/dev/stdout``)."""
    return "/dev/stdout" if text == "-" else path_name(text)


def number(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def number_in(low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (inclusive; no upper bound
    for None)."""

    def parse(text: str) -> float:
        value = number(text)
        if value < low or (high is not None and value > high):
            bound = f"from {low:g} to {high:g}" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value

    return parse


def add_model(p: argparse.ArgumentParser, optional: bool = False) -> None:
    """MODEL and --checkpoint."""
    p.add_argument(
        "model",
        nargs="?" if optional else None,
        help=f"a preset ({', '.join(PRESETS)}) or a nextpose checkpoint",
    )
    p.add_argument("--checkpoint", help="weights to use instead of the preset's: a path or URL")


def add_detector(
    p: argparse.ArgumentParser, where: argparse._ActionsContainer | None = None
) -> None:
    """--detector [NAME] (in ``where``, e.g. a mutually exclusive group) and its options."""
    (where or p).add_argument(
        "--detector",
        nargs="?",
        const=DEFAULT_DETECTOR,
        choices=DETECTOR_NAMES,
        metavar="NAME",
        help=f"find people with a torchvision detector (default {DEFAULT_DETECTOR}; "
        f"choices: {', '.join(DETECTOR_NAMES)}); its COCO weights are downloaded once",
    )
    p.add_argument("--detector-weights", help="detector weights instead of the COCO download")
    p.add_argument(
        "--detector-score",
        type=number_in(0.0, 1.0),
        default=0.5,
        metavar="S",
        help="keep detections scoring at least this (default 0.5)",
    )
    p.add_argument(
        "--detector-min-size",
        type=number_in(0.0),
        default=32.0,
        metavar="PX",
        help="drop detections whose longer side is below this (default 32 pixels)",
    )
    p.add_argument(
        "--max-people",
        type=count(1),
        metavar="N",
        help="keep the N highest-scoring detections per image (default: all)",
    )
    p.add_argument(
        "--detector-batch-size",
        type=count(1),
        metavar="N",
        help="frames per detector pass (default: 4 on a GPU, 1 on a CPU)",
    )


def check_detector(args: argparse.Namespace) -> None:
    """Refuse detector options without --detector, before any work."""
    from ..errors import InputError

    if args.detector_weights and not args.detector:
        raise InputError("--detector-weights needs --detector")


def note_ignored(args: argparse.Namespace) -> None:
    """A warning for each option given that this command's other options make meaningless
    (detector options without --detector, --keep-fp32 in fp32)."""
    import warnings

    detector = {"detector_score": 0.5, "detector_min_size": 32.0, "max_people": None,
                "detector_batch_size": None}  # fmt: skip
    if hasattr(args, "detector") and not args.detector:
        for name, default in detector.items():
            if getattr(args, name, default) != default:
                flag = "--" + name.replace("_", "-")
                warnings.warn(f"{flag} has no effect without --detector", stacklevel=2)
    if getattr(args, "keep_fp32", "ends") != "ends" and args.precision == "fp32":
        warnings.warn("--keep-fp32 has no effect without --precision bf16/fp16", stacklevel=2)


def load_detector_of(
    args: argparse.Namespace, device: str | None = None
) -> "PersonDetector | None":
    """The detector the --detector options ask for (on ``device``, else --device), or None."""
    check_detector(args)
    if not args.detector:
        return None
    from ..detection import load_detector  # torchvision: 2.4 s, only when a detector runs

    return load_detector(
        args.detector,
        weights=args.detector_weights or "default",
        device=device or args.device,
        score_threshold=args.detector_score,
        min_size=args.detector_min_size,
        max_people=args.max_people,
        batch_size=args.detector_batch_size,
    )


def add_runtime(
    p: argparse.ArgumentParser,
    read_help: str = "image decoding threads",
    batch_flags: tuple[str, ...] = ("--batch-size",),
    batch_help: str = "crops per pose network batch (default 32; on a CPU the fast and compile "
    "backends run it in passes of at most 8)",
    threads: bool = True,
) -> None:
    """How the pose network runs: --device, --backend, --precision, --batch-size (under the
    names ``batch_flags``), threads (unless not ``threads``), --device-crops, --no-flip."""
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="how the pose network runs: eager (plain PyTorch, the reference's op order), fast "
        "(BatchNorm folded, channels-last), compile (fast compiled by inductor; on a CPU kept "
        "in the cache folder, ~20-55 s the first time), onnxruntime (CPU, fp32); auto (default): "
        "the fastest measured, all with the same keypoints: onnxruntime in fp32 on a CPU "
        "without AVX-512 when the onnx extra is installed, eager in fp32 on a CPU for a DARK "
        "model (the reference's heatmaps bit for bit, which DARK needs), fast otherwise. "
        "`nextpose benchmark "
        "MODEL` times them on this machine",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="run the network in bf16/fp16 (GPUs; on a CPU bf16 needs AVX-512 BF16 or AMX, "
        "fp16 AVX-512 FP16 or AMX-FP16); 3-4x faster on AMX, a few percent of keypoints "
        "move, mostly by a quarter or half heatmap pixel",
    )
    p.add_argument(
        "--keep-fp32",
        choices=KEEP_FP32,
        default="ends",
        help="with --precision bf16/fp16 (fast, compile): the layers kept in fp32: final (the "
        "1x1 heatmap layer), ends (default: also the stem, ~2%% of the work), head (also the "
        "deconvolution head, ~25%%), none",
    )
    p.add_argument(*batch_flags, dest="batch_size", type=count(1), default=32, help=batch_help)
    if threads:
        p.add_argument(
            "--read-threads",
            "--workers",
            dest="read_threads",
            type=count(0),
            default=2,
            help=f"{read_help} (default 2; --workers is the old name)",
        )
    p.add_argument(
        "--device-crops",
        action="store_true",
        help="cut the crops on the device (GPU), with OpenCV's arithmetic",
    )
    p.add_argument("--no-flip", action="store_true", help="skip the flip test (2x faster)")
    add_decode(p)


def add_decode(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--decode",
        choices=DECODINGS,
        default=None,
        help="heatmaps -> keypoints: msra (argmax + quarter-pixel step) or dark (DARK's "
        "Taylor step on the blurred log-heatmap); default: the model's own (dark for the "
        "*_dark presets, msra otherwise)",
    )


def add_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bar (one is shown on a terminal)"
    )


def run_options(args: argparse.Namespace) -> dict:
    """The runtime options (and the decoding) as :func:`nextpose.load` keywords."""
    return {
        "decode": args.decode,
        "device": args.device,
        "backend": args.backend,
        "precision": args.precision,
        "keep_fp32": args.keep_fp32,
        "batch_size": args.batch_size,
        "read_threads": getattr(args, "read_threads", 2),
        "device_crops": args.device_crops,
    }


def check_device(device: str | None) -> None:
    """Refuse a device string torch cannot use before any model is loaded."""
    if device is not None:
        from ..options import check_device

        check_device(device, "--device")


def check_extras(args: argparse.Namespace) -> None:
    """An optional dependency the options need, checked before any work."""
    from ..errors import require

    if getattr(args, "backend", None) == "onnxruntime":
        require("onnxruntime", "onnx", "--backend onnxruntime")
        require("onnx", "onnx", "--backend onnxruntime", load=False)
