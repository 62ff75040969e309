"""Reading images as the reference does: OpenCV decode in colour mode, EXIF orientation applied."""

from pathlib import Path

import cv2
import numpy as np


class ImageError(ValueError):
    """An image file is missing, empty or cannot be decoded."""


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array.

    OpenCV's colour mode applies the EXIF orientation, turns grayscale into three equal channels,
    drops alpha, converts CMYK and scales 16-bit to 8-bit, exactly as the reference's loader does.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read image file ({e.strerror or e})") from None
    if data.size == 0:
        raise ImageError(f"{path}: the image file is empty")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated, or an unknown format)")
    return np.ascontiguousarray(bgr[..., ::-1])
