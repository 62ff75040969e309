"""The ``nextpose`` command: one module per verb, each a thin call into the library.

Errors the library raises about the user's inputs (:class:`~nextpose.errors.NextposeError`) are
printed as ``error: ...`` with exit status 2, as argparse does for a bad command line; Ctrl-C
ends a command with status 130 and no traceback; any other exception is a bug and keeps its
traceback. ``nextpose --help`` and ``--version`` import no
torch.
"""

import argparse
import errno
import logging
import sys
import warnings
from collections.abc import Sequence

from .._version import __version__
from . import benchmark, convert, evaluate, export, predict, serve, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextpose",
        description="Top-down human pose estimation (ResNeXt SimpleBaseline).",
        epilog="exit status: 0 done; 1 predict read no image (each skipped one is named); 2 a "
        "bad input, option or file (error: names it); 130 interrupted (what was done is kept)",
    )
    parser.add_argument("--version", action="version", version=f"nextpose {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    predict.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    train.add_parsers(sub)
    convert.add_parser(sub)
    serve.add_parser(sub)
    benchmark.add_parser(sub)
    return parser


class _WarningPrinter(logging.Handler):
    """Prints the library's log records on stderr: ``note: ...`` (INFO), ``warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        kind = "note" if record.levelno < logging.WARNING else record.levelname.lower()
        print(f"{kind}: {record.getMessage()}", file=sys.stderr)


def _warning_line(message: Warning | str, category: type[Warning], *where: object) -> str:
    """A Python warning as the command's other warnings print (not the file and line of the
    code that raised it)."""
    kind = "" if category is UserWarning else f" ({category.__name__})"
    return f"warning{kind}: {message}\n"


# What the machine, not nextpose, refused (a full or read-only disk, no permission): reported as
# an error, where nextpose's own checks did not name the file first, not as a traceback.
_REFUSED_BY_THE_SYSTEM = {
    errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    logger = logging.getLogger("nextpose")
    if not any(isinstance(h, _WarningPrinter) for h in logger.handlers):
        logger.addHandler(_WarningPrinter(logging.INFO))
        logger.setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    from ..errors import NextposeError

    shown = warnings.formatwarning
    warnings.formatwarning = _warning_line
    try:
        return args.func(args)
    except NextposeError as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _REFUSED_BY_THE_SYSTEM:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # verbs that write files say what they kept; this is the rest
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = shown
