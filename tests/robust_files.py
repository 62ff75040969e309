"""Bad and unusual input files, made on the fly for the robustness tests (test_robust_*.py)."""

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from conftest import ANN_FILE, IMAGES
from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid-looking PNG of a few hundred bytes that declares ``width`` x ``height`` RGB pixels
    (a decoder would allocate 1.2 GB for 20000 x 20000 before finding the data short)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", rows)
        + png_chunk(b"IEND", b"")
    )


def with_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) is rewritten to declare ``width`` x ``height``."""
    pos = jpeg.index(b"\xff\xc0")
    return jpeg[: pos + 5] + struct.pack(">HH", height, width) + jpeg[pos + 9 :]


def truncated(path: Path, fraction: float) -> bytes:
    data = path.read_bytes()
    return data[: int(len(data) * fraction)]


def encode(ext: str, image: np.ndarray) -> bytes:
    """``image`` (BGR or gray, uint8/uint16) encoded by OpenCV as ``ext``."""
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


def cmyk_jpeg(rgb: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A CMYK JPEG (as print workflows write them) of one flat colour, written by Pillow."""
    out = io.BytesIO()
    Image.new("RGB", size, rgb).convert("CMYK").save(out, "JPEG", quality=95)
    return out.getvalue()


def exif_rotated_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG of RGB ``image`` stored unrotated, with an EXIF orientation tag (6: turn 90° cw)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(image).save(out, "JPEG", quality=95, exif=exif)
    return out.getvalue()


def coco_json() -> dict:
    """The sample COCO annotation file, as a dict to be broken."""
    return json.loads(ANN_FILE.read_text())


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def image_copy(folder: Path, index: int = 0) -> Path:
    """A copy of sample image ``index`` in ``folder`` (same file name)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / IMAGES[index].name
    target.write_bytes(IMAGES[index].read_bytes())
    return target
