"""Reading images as the reference does: OpenCV decode in colour mode, EXIF orientation applied."""

import re
import time
from collections.abc import Iterator
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


# Extensions (lower case) that folder listing treats as images, and that inputs treat as videos.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".ts"}
)


def _natural_key(path: Path) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [
        (0, int(part), "") if part.isdigit() else (1, 0, part.lower())
        for part in re.split(r"(\d+)", path.as_posix())
    ]


def list_images(folder: str | Path, recursive: bool = True) -> list[Path]:
    """Image files under ``folder`` (extensions in :data:`IMAGE_EXTENSIONS`, any case).

    Hidden files and folders (names starting with ".") are skipped. The order is natural (numbers
    compare as numbers), so a folder of frames ``0.jpg ... 10.jpg`` comes out in frame order.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: no such folder")
    found = folder.rglob("*") if recursive else folder.glob("*")
    images = [
        p
        for p in found
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    ]
    return sorted(images, key=lambda p: _natural_key(p.relative_to(folder)))


def is_video_file(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


class VideoError(ImageError):
    """A video file or camera cannot be opened."""


class VideoReader:
    """Frames of a video file or a camera, decoded by OpenCV, as (H, W, 3) uint8 RGB arrays.

    Iterating yields ``(frame_number, time_s, image)``; ``time_s`` is the stream's timestamp of the
    frame (from the container for files, the wall clock since opening for cameras). The capture
    is released when iteration ends or :meth:`close` is called.

    Args:
        source: a video file, or a camera index (``0`` is the default camera).
        max_frames: stop after this many frames (None: until the stream ends).
    """

    def __init__(self, source: str | Path | int, max_frames: int | None = None):
        self.source = source
        self.is_camera = isinstance(source, int)
        if not self.is_camera and not Path(source).is_file():
            raise VideoError(f"{source}: no such video file")
        self._cap = cv2.VideoCapture(source if self.is_camera else str(source))
        if not self._cap.isOpened():
            self._cap.release()
            what = f"camera {source}" if self.is_camera else f"{source}"
            raise VideoError(f"{what}: cannot be opened as a video (unknown format or no device)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = count if count > 0 and not self.is_camera else None
        if max_frames is not None and self.frame_count is not None:
            self.frame_count = min(self.frame_count, max_frames)
        self.size = (
            int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
            int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )  # (w, h) pixels
        self.max_frames = max_frames

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        start = time.monotonic()
        number = 0
        try:
            while self.max_frames is None or number < self.max_frames:
                ok, bgr = self._cap.read()
                if not ok or bgr is None:
                    break
                if self.is_camera:
                    stamp = time.monotonic() - start
                else:
                    msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                    stamp = number / (self.fps or 30.0) if not msec and number else msec / 1000
                if bgr.ndim == 2:
                    bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
                yield number, float(stamp), np.ascontiguousarray(bgr[..., 2::-1])
                number += 1
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
