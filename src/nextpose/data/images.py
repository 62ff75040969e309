"""Reading images as the reference does: OpenCV decode in colour mode, EXIF orientation applied.

Also the one place that turns whatever a user passes (file paths, globs, stream URLs, NumPy
arrays, PIL images) into what the engine works on.

Decompression bombs: OpenCV refuses, after reading a header and before allocating anything, any
image of more than ``OPENCV_IO_MAX_IMAGE_PIXELS`` pixels, in every format it reads (PNG, JPEG,
GIF, TIFF, WebP, AVIF, JPEG 2000, PNM/PAM/PFM, HDR, Sun raster, ...). It reads that variable
once, when ``cv2`` is first imported; so :mod:`nextpose.opencv`, through which every nextpose
module imports cv2, sets it (to :data:`MAX_IMAGE_PIXELS`) first and restores the environment.
When the program imported cv2 before nextpose, OpenCV keeps the limit it read then (its
default is 2^30 pixels) and
:func:`read_image` falls back to reading the declared size from the header (PNG, JPEG, BMP,
TIFF, WebP, PNM) and to checking the decoded size.
"""

import glob
import os
import re
import stat
import struct
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ImageError, ImageTooLargeError, InputError, VideoError
from ..opencv import _OPENCV_LIMIT_SOURCE as _OPENCV_LIMIT_SOURCE
from ..opencv import DEFAULT_MAX_IMAGE_PIXELS as DEFAULT_MAX_IMAGE_PIXELS
from ..opencv import MAX_IMAGE_PIXELS as MAX_IMAGE_PIXELS
from ..opencv import OPENCV_MAX_IMAGE_PIXELS as OPENCV_MAX_IMAGE_PIXELS
from ..opencv import cv2


def image_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(width, height) declared by the header of a PNG, JPEG, BMP, TIFF, WebP, GIF or PNM file,
    read without decoding; None for other formats or a header that cannot be parsed.

    Used for the message and when OpenCV's own guard is looser than the limit (cv2 imported
    before nextpose, or a lower ``max_pixels``); OpenCV's guard covers every format."""
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
        if data[:6] in (b"GIF87a", b"GIF89a"):  # the logical screen OpenCV allocates
            return struct.unpack("<HH", data[6:10])
        if re.match(rb"P[1-6]\s", data[:3]):
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


_FILE_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(path: Path, mode: int) -> ImageError:
    if stat.S_ISDIR(mode):
        return ImageError(f"{path}: is a directory, not an image file")
    kind = next((what for test, what in _FILE_KINDS if test(mode)), "not a regular file")
    return ImageError(f"{path}: is {kind}, not an image file; only regular files are read")


def _read_file(path: Path) -> np.ndarray:
    """The bytes of a regular file. Anything else (a FIFO, a device, a socket, a folder) is
    refused from its ``stat`` before it is opened, and again from the open descriptor (opened
    non-blocking, so a FIFO swapped in meanwhile cannot block): reading never waits."""
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, mode)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
        with open(fd, "rb", closefd=True) as f:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise _not_regular(path, mode)
            return np.frombuffer(f.read(), dtype=np.uint8)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image file") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot read image file ({e.strerror or e})") from None


def _opencv_problem(e: Exception) -> str:
    """The useful line of a cv2.error ("... error: (-215:Assertion failed) X in function 'f'")."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = lines[-1] if lines else type(e).__name__
    return re.sub(r"^OpenCV\([^)]*\) \S+: error: ", "", text)


def _too_large(
    path: str | Path, size: tuple[int, int] | None, limit: int, tail: str
) -> ImageTooLargeError:
    what = f"is {size[0]} x {size[1]} pixels, more than" if size else "declares more pixels than"
    return ImageTooLargeError(
        f"{path}: the image {what} the limit of {limit} "
        f"(set NEXTPOSE_MAX_IMAGE_PIXELS to allow it, 0: no limit){tail}"
    )


def _opencv_refusal(
    path: str | Path, data: np.ndarray, problem: str, limit: int
) -> ImageTooLargeError:
    """OpenCV's own size guard refused the header: say which limit and how to raise it."""
    size = image_size(memoryview(data))
    if "MAX_IMAGE_WIDTH" in problem or "MAX_IMAGE_HEIGHT" in problem:
        side = f" ({size[0]} x {size[1]} pixels)" if size else ""
        return ImageTooLargeError(
            f"{path}: the image{side} declares a side longer than OpenCV's limit "
            "(OPENCV_IO_MAX_IMAGE_WIDTH / OPENCV_IO_MAX_IMAGE_HEIGHT, 1048576 by default); "
            "not decoded"
        )
    guard = OPENCV_MAX_IMAGE_PIXELS
    if _OPENCV_LIMIT_SOURCE == "nextpose" and (not limit or guard <= limit):
        return _too_large(path, size, guard, "; not decoded")
    how = (
        "cv2 was imported before nextpose, so OpenCV kept the limit it read then; "
        "set OPENCV_IO_MAX_IMAGE_PIXELS before importing cv2"
        if _OPENCV_LIMIT_SOURCE == "cv2 imported first"
        else "OpenCV reads it when cv2 is imported; set OPENCV_IO_MAX_IMAGE_PIXELS "
        "(or NEXTPOSE_MAX_IMAGE_PIXELS) before starting Python"
    )
    dims = f"is {size[0]} x {size[1]} pixels" if size else "declares more pixels than that"
    return ImageTooLargeError(
        f"{path}: the image {dims}, more than OpenCV's limit OPENCV_IO_MAX_IMAGE_PIXELS="
        f"{guard} ({how}); not decoded"
    )


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to an (H, W, 3) uint8 RGB array.

    OpenCV's colour mode applies the EXIF orientation, turns grayscale into three equal channels,
    drops alpha, converts CMYK and scales 16-bit to 8-bit, exactly as the reference's loader does.

    Args:
        path: a regular file (FIFOs, devices and sockets are refused without waiting on them).
        max_pixels: refuse an image of more pixels than this (None: :data:`MAX_IMAGE_PIXELS`,
            from ``NEXTPOSE_MAX_IMAGE_PIXELS``; 0: no limit of nextpose's own). OpenCV's own
            guard (:data:`OPENCV_MAX_IMAGE_PIXELS`, fixed when cv2 is loaded) applies too, in
            every format, before anything is decoded.

    Raises:
        ImageError: the file is missing, not a regular file, empty, too large, or cannot be
            decoded; the message starts with the path.
    """
    path = Path(path)
    return decode_image(_read_file(path), path, max_pixels)


def decode_image(
    data: bytes | np.ndarray, name: str | Path = "the image", max_pixels: int | None = None
) -> np.ndarray:
    """Decode an encoded image (the bytes of a JPEG, PNG, WebP... file) to an (H, W, 3) uint8
    RGB array, exactly as :func:`read_image` decodes a file, with the same pixel limits.

    Raises:
        ImageError: empty, too large, or not decodable; the message starts with ``name``.
    """
    path = name
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if not isinstance(data, np.ndarray):
        data = np.frombuffer(data, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: the image file is empty")
    size = image_size(memoryview(data))
    if size is not None and limit and size[0] * size[1] > limit:
        raise _too_large(path, size, limit, "; not decoded")
    try:
        bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error as e:
        problem = _opencv_problem(e)
        if "CV_IO_MAX_IMAGE" in problem:
            raise _opencv_refusal(path, data, problem, limit) from None
        raise ImageError(f"{path}: not a readable image (OpenCV: {problem})") from None
    if bgr is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated, or an unknown format)")
    height, width = bgr.shape[:2]
    if limit and height * width > limit:  # a format whose header nextpose does not read
        raise _too_large(path, (width, height), limit, "")
    try:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)  # = bgr[..., ::-1], 40x faster than a copy
    except cv2.error as e:
        raise ImageError(
            f"{path}: cannot convert the image to RGB ({_opencv_problem(e)})"
        ) from None


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

    Hidden files and folders (names starting with ".") are skipped; a link to nothing is listed
    (reading it reports it). The order is natural (numbers compare as numbers), so a folder of
    frames ``0.jpg ... 10.jpg`` comes out in frame order.
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
        and (p.is_file() or (p.is_symlink() and not p.exists()))  # a dangling link: reported
    ]
    return sorted(images, key=lambda p: _natural_key(p.relative_to(folder)))


def is_video_file(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by extension, :data:`VIDEO_EXTENSIONS`); a stream
    URL is not a file (:func:`is_stream_url`)."""
    return not is_stream_url(path) and Path(path).suffix.lower() in VIDEO_EXTENSIONS


# Network streams OpenCV's video reader (FFmpeg) opens: RTSP cameras, HTTP(S) video or MJPEG
# streams, RTMP, SRT, UDP/TCP multicast.
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp", "tcp")
_STREAM_URL = re.compile(rf"^(?:{'|'.join(STREAM_SCHEMES)})://\S", re.IGNORECASE)


def is_stream_url(source: object) -> bool:
    """Whether ``source`` is a string URL of a network stream (``rtsp://``, ``http(s)://``,
    ``rtmp://``, ``srt://``, ``udp://``, ``tcp://``), read as a video. A :class:`~pathlib.Path`
    never is: it names a local file."""
    return isinstance(source, str) and _STREAM_URL.match(source) is not None


def has_glob_magic(text: str) -> bool:
    return glob.has_magic(text)


InputKind = Literal["image", "folder", "video", "stream", "camera"]


@dataclass(frozen=True)
class Input:
    """One input, classified: ``value`` is a :class:`~pathlib.Path` (image, folder, video), a
    URL string (stream) or a camera index (camera); ``text`` is what the user gave (for a
    file found by a glob pattern, the pattern)."""

    kind: InputKind
    value: Path | str | int
    text: str


def _classify(value: Path, text: str) -> Input:
    if value.is_dir():
        return Input("folder", value, text)
    if value.suffix.lower() in VIDEO_EXTENSIONS:
        return Input("video", value, text)
    return Input("image", value, text)


def expand_inputs(inputs: Iterable[str | Path | int]) -> list[Input]:
    """Classify what a user passes as inputs, expanding glob patterns.

    * an ``int``, or a string of digits that is not an existing path: a camera index;
    * a stream URL (:func:`is_stream_url`): a stream, opened by :class:`VideoReader`;
    * a string with ``*``, ``?`` or ``[...]`` that is not an existing path: a glob pattern
      (``**`` matches folders recursively; hidden names only when the pattern spells them),
      replaced by its matches in natural order (``2.jpg`` before ``10.jpg``); each match is then
      classified as below. A :class:`~pathlib.Path` is never a pattern;
    * an existing folder; a video file (by extension, :data:`VIDEO_EXTENSIONS`); anything else
      is an image file (missing or unreadable ones are reported when they are read).

    The order of ``inputs`` is kept.

    Raises:
        InputError: a glob pattern matches nothing (the pattern is named).
    """
    out: list[Input] = []
    for x in inputs:
        if isinstance(x, bool):
            raise InputError(f"{x!r}: not an input (a path, URL, glob pattern or camera index)")
        if isinstance(x, int):
            out.append(Input("camera", x, str(x)))
            continue
        if isinstance(x, Path):
            out.append(_classify(x, str(x)))
            continue
        if not isinstance(x, str):
            raise InputError(
                f"{x!r}: not an input (a path, URL, glob pattern or camera index); image "
                "arrays go to predict directly"
            )
        if is_stream_url(x):
            out.append(Input("stream", x, x))
        elif x.isdigit() and not os.path.exists(x):
            out.append(Input("camera", int(x), x))
        elif has_glob_magic(x) and not os.path.exists(x):
            matches = glob.glob(os.path.expanduser(x), recursive=True)
            if not matches:
                raise InputError(f"{x}: the pattern matches no files")
            for match in sorted(matches, key=lambda m: _natural_key(Path(m))):
                out.append(_classify(Path(match), x))
        else:
            out.append(_classify(Path(x), x))
    return out


# -- in-memory images ------------------------------------------------------------------------


def _is_pil_image(image: object) -> bool:
    """A PIL image, without importing Pillow (nextpose does not need it): if the caller has one,
    PIL.Image is already loaded."""
    module = sys.modules.get("PIL.Image")
    return module is not None and isinstance(image, module.Image)


def _from_pil(image: Any, source: str) -> np.ndarray:
    """An RGB array from a PIL image, converted as OpenCV's colour mode converts the same
    pixels read from a file: alpha dropped (not composited), gray copied into three channels,
    palettes expanded, 16-bit gray scaled by its high byte (``>> 8``, as for a 16-bit PNG)."""
    mode = image.mode
    try:
        if mode == "RGB":
            rgb = np.asarray(image)
        elif mode in ("RGBA", "RGBX"):
            rgb = np.asarray(image)[..., :3]
        elif mode in ("L", "1", "LA", "La", "P", "PA"):
            rgb = np.asarray(image.convert("RGB"))
        elif mode.startswith("I;16") or mode in ("I", "F"):
            values = np.asarray(image)
            if mode == "F":  # float gray: rounded and saturated, as OpenCV's convertTo does
                gray = np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8)
            else:  # 16-bit gray (or 32-bit holding 16-bit values): the high byte
                gray = (np.clip(values.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
            rgb = np.repeat(gray[..., None], 3, axis=2)
        else:  # CMYK, YCbCr, LAB, HSV, ...: Pillow's own conversion
            rgb = np.asarray(image.convert("RGB"))
    except Exception as e:  # a lazily loaded file that turns out truncated, a bomb, ...
        raise ImageError(
            f"{source}: the PIL image ({mode}) cannot be read: {type(e).__name__}: {e}"
        ) from None
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ImageError(f"{source}: the PIL image ({mode}) did not convert to 8-bit RGB")
    return rgb


def as_rgb_image(image: object, source: str = "the image") -> np.ndarray:
    """An (H, W, 3) uint8 RGB array from an in-memory image, used as it is.

    Accepts NumPy ``uint8`` arrays (H, W) gray, (H, W, 1) gray, (H, W, 3) RGB, (H, W, 4) RGBA
    (alpha dropped, as OpenCV's colour mode drops it), and PIL images of any mode (see
    :func:`_from_pil`; EXIF orientation is not applied to in-memory images: pass the file path,
    or ``PIL.ImageOps.exif_transpose`` first). An RGB array is returned as is (no copy).

    Raises:
        ImageError: anything else, naming ``source``, what was given and what is accepted.
    """
    accepted = (
        "a NumPy uint8 array of shape (H, W), (H, W, 3) RGB or (H, W, 4) RGBA, or a PIL image"
    )
    if _is_pil_image(image):
        return _from_pil(image, source)
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{source}: expected a file path, {accepted}; got {type(image).__name__}")
    shape = tuple(image.shape)
    if image.dtype != np.uint8:
        hint = (
            " (values 0..1? multiply by 255 and convert with .astype(np.uint8))"
            if image.dtype.kind == "f"
            else ""
        )
        raise ImageError(f"{source}: expected {accepted}; got a {image.dtype} array{hint}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        rgb = np.repeat(image[..., None], 3, axis=2)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        rgb = image if image.shape[2] == 3 else image[..., :3]
    else:
        raise ImageError(f"{source}: expected {accepted}; got shape {shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{source}: the image is empty (shape {shape})")
    return rgb


class VideoReader:
    """Frames of a video file, a network stream or a camera, decoded by OpenCV, as (H, W, 3)
    uint8 RGB arrays.

    Iterating yields ``(frame_number, time_s, image)``; ``time_s`` is the stream's timestamp of the
    frame (from the container for files and streams, the wall clock since opening for cameras).
    The capture is released when iteration ends or :meth:`close` is called. A camera, and a
    stream of no known length (RTSP, an MJPEG or HLS camera), is live (:attr:`is_live`); a
    stream URL of a video file (its length known) is read as the file.

    Args:
        source: a video file, a stream URL (:func:`is_stream_url`: ``rtsp://``, ``http(s)://``,
            ...; passed to ``cv2.VideoCapture`` as it is, with open and read timeouts), or a
            camera index (``0`` is the default camera).
        max_frames: stop after this many frames (None: until the stream ends).
        timeout_s: for a stream, how long opening it and waiting for a frame may take.

    Raises:
        VideoError: a missing file, or a source OpenCV cannot open.
    """

    def __init__(
        self, source: str | Path | int, max_frames: int | None = None, timeout_s: float = 30.0
    ):
        self.source = source
        self.is_camera = isinstance(source, int) and not isinstance(source, bool)
        self.is_stream = is_stream_url(source)
        self.is_live = self.is_camera or self.is_stream  # no end known in advance
        if not self.is_live and not Path(source).is_file():
            if Path(source).exists():
                raise VideoError(f"{source}: not a regular video file")
            raise VideoError(f"{source}: no such video file")
        try:
            if self.is_stream:
                ms = int(timeout_s * 1000)
                params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
                self._cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG, params)
            else:
                self._cap = cv2.VideoCapture(source if self.is_camera else str(source))
        except cv2.error as e:
            raise VideoError(
                f"{source}: cannot be opened as a video ({_opencv_problem(e)})"
            ) from None
        if not self._cap.isOpened():
            self._cap.release()
            if self.is_camera:
                raise VideoError(f"camera {source}: cannot be opened (no such device, or busy)")
            if self.is_stream:
                raise VideoError(
                    f"{source}: the stream cannot be opened (unreachable, refused, not a video, "
                    f"or no answer within {timeout_s:g} s)"
                )
            raise VideoError(f"{source}: cannot be opened as a video (unknown format or no device)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps: float | None = float(fps) if fps and np.isfinite(fps) and fps > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if self.is_stream and count > 0:  # a video file served over the network, not live
            self.is_live = False
        self.frame_count: int | None = count if count > 0 and not self.is_live else None
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
                try:
                    rgb = cv2.cvtColor(bgr, code)
                except cv2.error as e:
                    raise VideoError(
                        f"{self.source}: frame {number} cannot be converted to RGB "
                        f"({_opencv_problem(e)})"
                    ) from None
                yield number, float(stamp), rgb
                number += 1
        finally:
            self.close()

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
