"""Reading images as the reference does: OpenCV decode in colour mode, EXIF orientation applied."""

import os
import re
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from ..errors import ImageError, VideoError

# Images with more pixels than this are refused before decoding: a small file can declare a huge
# picture (a 1 MB PNG decodes to 20000 x 20000 x 3 = 1.2 GB). 2**28 = 16384 x 16384 pixels, 0.8 GB
# decoded; the environment variable NEXTPOSE_MAX_IMAGE_PIXELS changes it (0: no limit).
MAX_IMAGE_PIXELS = int(os.environ.get("NEXTPOSE_MAX_IMAGE_PIXELS", 2**28))


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) declared by the header of a PNG, JPEG, BMP, TIFF, WebP or PNM file, read
    without decoding; None for other formats or a header that cannot be parsed."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:  # OS/2 header: 16-bit sizes
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data, "<" if data[0] == 0x49 else ">")
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                w, h = int.from_bytes(data[24:27], "little"), int.from_bytes(data[27:30], "little")
                return w + 1, h + 1
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
        if re.match(rb"P[1-7]\s", data[:3]):
            tokens = re.sub(rb"#[^\n]*", b"", data[:4096]).split()
            return int(tokens[1]), int(tokens[2])
    except (struct.error, ValueError, IndexError):
        return None
    return None


def _jpeg_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the frame header (SOFn) and read its size."""
    pos = 2
    while pos + 9 < len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before
            return None
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return w, h
        pos += 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return None


def _tiff_size(data: bytes | memoryview, order: str) -> tuple[int, int] | None:
    """ImageWidth (tag 256) and ImageLength (257) of a TIFF's first image directory."""
    ifd = struct.unpack(order + "I", data[4:8])[0]
    found: dict[int, int] = {}
    for i in range(struct.unpack(order + "H", data[ifd : ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):
            fmt = "H" if kind == 3 else "I"
            found[tag] = struct.unpack(
                order + fmt, data[entry + 8 : entry + 8 + struct.calcsize(fmt)]
            )[0]
    return (found[256], found[257]) if len(found) == 2 else None


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array.

    OpenCV's colour mode applies the EXIF orientation, turns grayscale into three equal channels,
    drops alpha, converts CMYK and scales 16-bit to 8-bit, exactly as the reference's loader does.
    A file whose header declares more than :data:`MAX_IMAGE_PIXELS` pixels is refused before
    decoding.

    Raises:
        ImageError: the file is missing, empty, too large, or cannot be decoded.
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
    size = image_size(memoryview(data))
    if size is not None and MAX_IMAGE_PIXELS and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"{path}: the image is {size[0]} x {size[1]} pixels, more than the limit of "
            f"{MAX_IMAGE_PIXELS} (set NEXTPOSE_MAX_IMAGE_PIXELS to allow it); not decoded"
        )
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated, or an unknown format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # = bgr[..., ::-1], 40x faster than a copy


# OpenCV conversions to RGB by channel count (video frames can be gray or BGRA).
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}

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
                channels = 1 if bgr.ndim == 2 else bgr.shape[2]
                code = _TO_RGB.get(channels, cv2.COLOR_BGR2RGB)
                yield number, float(stamp), cv2.cvtColor(bgr, code)
                number += 1
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def as_rgb_image(image: object, source: str = "the image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from a user's image array: (H, W) grey, (H, W, 3) RGB or
    (H, W, 4) RGBA uint8 (alpha dropped)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = type(image).__name__ if not isinstance(image, np.ndarray) else f"{image.dtype} array"
        raise ImageError(
            f"{source}: an image must be a file path or a uint8 RGB array, not a {kind}"
        )
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or 0 in image.shape:
        raise ImageError(f"{source}: an image array must be (H, W, 3) RGB, got shape {image.shape}")
    return image[..., :3]
