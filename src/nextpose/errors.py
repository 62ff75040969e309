"""The library's errors: every problem with a user's input, file or setting is a
:class:`NextposeError`, whose message names the file or option and what is wrong with it.

The command line prints these as ``error: ...`` and exits with status 2; any other exception is
a bug and keeps its traceback. Each kind also derives from the built-in error it refines
(``ValueError``, ``RuntimeError``, ...), so ``except ValueError`` in older user code still works.
"""

from types import ModuleType


class NextposeError(Exception):
    """Base of every error nextpose raises about its inputs (not about its own bugs)."""


class ConfigError(NextposeError, ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


class CheckpointError(NextposeError, RuntimeError):
    """A checkpoint cannot be found, downloaded, read, or does not fit the model."""


class ImageError(NextposeError, ValueError):
    """An image file or array is missing, empty, too large or cannot be decoded."""


class ImageTooLargeError(ImageError):
    """An image has more pixels than the limit (``NEXTPOSE_MAX_IMAGE_PIXELS``, OpenCV's)."""


class VideoError(ImageError):
    """A video file, stream or camera cannot be opened."""


class AnnotationError(NextposeError, ValueError):
    """An annotation, detection, results or boxes file is malformed."""


class InputError(NextposeError, ValueError):
    """An argument cannot work: boxes of the wrong shape, an unknown option value, clashing
    options, an output that would overwrite an input."""


class NumericsError(NextposeError, ValueError):
    """The network's outputs are not finite (a diverged checkpoint, or fp16 overflow)."""


class OutputError(NextposeError, OSError):
    """An output cannot be written: it would replace an input or another output, or the disk
    refused it (full, read-only, no permission; ``reason`` then says which, without the file)."""

    reason: str | None = None


class ServiceBusyError(NextposeError, RuntimeError):
    """The pose service cannot take a request now: its queue is full or it is shutting down."""


class MissingExtraError(NextposeError, ImportError):
    """An optional dependency is not installed; the message gives the pip command."""


class TrainingError(NextposeError, RuntimeError):
    """Training cannot go on: a non-finite loss, a missing resume file, a busy run folder."""


def require(module: str, extra: str, what: str, load: bool = True) -> ModuleType | None:
    """Import ``module`` for ``what`` (or, without ``load``, only check that it is installed),
    or raise :class:`MissingExtraError` naming the extra."""
    import importlib
    import importlib.util

    try:
        if not load:
            if importlib.util.find_spec(module) is None:
                raise ImportError(module)
            return None
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{what} needs the '{extra}' extra: pip install \"nextpose[{extra}]\""
        ) from None
