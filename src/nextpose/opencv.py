"""OpenCV, imported with nextpose's pixel limit in force: every nextpose module imports cv2
from here (``from .opencv import cv2``), so that OpenCV's own decompression-bomb guard is set
before OpenCV loads (it reads ``OPENCV_IO_MAX_IMAGE_PIXELS`` once, at import)."""

import os
import re
import sys
import warnings

from .errors import ConfigError

# Images with more pixels than this are refused before decoding: a small file can declare a huge
# picture (a 1 MB PNG decodes to 20000 x 20000 x 3 = 1.2 GB). 2**28 = 16384 x 16384 pixels, 0.8 GB
# decoded; the environment variable NEXTPOSE_MAX_IMAGE_PIXELS changes it (0: no limit), and
# read_image(path, max_pixels=N) for one call (up to the limit OpenCV was started with).
DEFAULT_MAX_IMAGE_PIXELS = 2**28
OPENCV_DEFAULT_MAX_IMAGE_PIXELS = 2**30  # OpenCV's own default for OPENCV_IO_MAX_IMAGE_PIXELS
_UNLIMITED = 2**62  # what OpenCV is given for "no limit"


def _pixels_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip().replace("_", "")
    if not text:
        return default
    if not text.isdigit():
        warnings.warn(
            f"{name}={os.environ[name]!r} is not a whole number of pixels (0: no limit); "
            f"using the default {default}",
            stacklevel=3,
        )
        return default
    return int(text)


MAX_IMAGE_PIXELS = _pixels_from_env("NEXTPOSE_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS)


def _install_opencv_guard() -> tuple[int, str]:
    """Give OpenCV the pixel limit before cv2 is loaded. Returns (the limit OpenCV enforces,
    who set it: "nextpose", "OPENCV_IO_MAX_IMAGE_PIXELS" or "cv2 imported first")."""
    name = "OPENCV_IO_MAX_IMAGE_PIXELS"
    own = os.environ.get(name)
    if own is not None and not re.fullmatch(r"\d+", own):
        if "cv2" in sys.modules:  # OpenCV already took it (it accepts a few suffixes)
            return OPENCV_DEFAULT_MAX_IMAGE_PIXELS, "cv2 imported first"
        # OpenCV aborts the whole process (std::invalid_argument) on such a value.
        raise ConfigError(f"{name}={own!r}: must be a whole number of pixels")
    if "cv2" in sys.modules:
        limit = int(own) if own is not None else OPENCV_DEFAULT_MAX_IMAGE_PIXELS
        return limit, "cv2 imported first"
    if own is not None:
        return int(own), name
    limit = MAX_IMAGE_PIXELS or _UNLIMITED
    os.environ[name] = str(limit)
    try:
        import cv2  # noqa: F401  (reads the limit now, once)
    finally:
        del os.environ[name]  # leave the environment (and child processes) as they were
    return limit, "nextpose"


OPENCV_MAX_IMAGE_PIXELS, _OPENCV_LIMIT_SOURCE = _install_opencv_guard()

import cv2  # noqa: E402  (after the guard)

__all__ = ["MAX_IMAGE_PIXELS", "OPENCV_MAX_IMAGE_PIXELS", "cv2"]
