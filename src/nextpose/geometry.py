"""Boxes, crops and the affine maps between image and crop pixels.

Frames: *image* pixels of the decoded picture and *crop* pixels of the network input, both with
pixel centres at integer coordinates. Arithmetic follows the reference bit for bit (§2, 3, 6.5):
the float32/float64 choices below are deliberate.
"""

from fractions import Fraction

import numpy as np

from .errors import ImageError
from .opencv import cv2


def box_to_center_scale(boxes: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and padded size of xyxy boxes.

    Args:
        boxes: (N, 4) xyxy, image pixels.
        padding: enlargement of the box side lengths.

    Returns:
        center (N, 2) and scale (N, 2) float32; scale is (w, h) in image pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    center = np.stack([(x1 + x2) * np.float32(0.5), (y1 + y2) * np.float32(0.5)], axis=1)
    scale = np.stack([(x2 - x1) * np.float32(padding), (y2 - y1) * np.float32(padding)], axis=1)
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow each (w, h) so that w / h equals the crop's ``aspect_ratio``; never shrinks.

    Args:
        scale: (N, 2) float32, (w, h) image pixels.
        aspect_ratio: crop width / height, e.g. 0.75 for 192x256.
    """
    scale = np.asarray(scale, dtype=np.float32).reshape(-1, 2)
    w, h = scale[:, 0], scale[:, 1]
    wider = w > h * np.float32(aspect_ratio)
    return np.where(
        wider[:, None],
        np.stack([w, w / np.float32(aspect_ratio)], axis=1),
        np.stack([h * np.float32(aspect_ratio), h], axis=1),
    ).astype(np.float32)


def image_to_crop_matrix(
    center: np.ndarray, scale: np.ndarray, rotation: float, crop_size: tuple[int, int]
) -> np.ndarray:
    """The 2x3 float64 matrix mapping image pixels to crop pixels.

    The crop shows the square-pixel region of width ``scale[0]`` around ``center`` rotated by
    ``rotation`` degrees, resized to ``crop_size`` (w, h). Solved from three point pairs with
    OpenCV's own solver so the matrix has the reference's last bits (§3.2-3.3).
    """
    center = np.asarray(center, dtype=np.float32)
    w_out, h_out = crop_size
    if isinstance(rotation, np.float32):  # training: the angle is float32, so is its sine/cosine
        theta = np.deg2rad(rotation)
        sin, cos = np.float64(np.sin(theta)), np.float64(np.cos(theta))
    else:
        theta = np.deg2rad(float(rotation))
        sin, cos = np.sin(theta), np.cos(theta)
    half_w = -0.5 * np.float64(np.float32(scale[0]))
    direction = np.array([half_w * cos, half_w * sin])  # R(theta) @ (-sw/2, 0)
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + direction
    src[2] = src[1] + np.array([src[1, 1] - src[0, 1], src[0, 0] - src[1, 0]], dtype=np.float32)
    dst = np.array([[w_out / 2, h_out / 2], [0, h_out / 2], [0, h_out / 2 + w_out / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


# OpenCV's warp (its remap) takes images of at most 32766 pixels a side (it keeps source
# positions in 16-bit integers).
_SHRT_MAX = 32767


def warp_to_crop(
    image: np.ndarray, matrix: np.ndarray, crop_size: tuple[int, int], source: str = "the image"
) -> np.ndarray:
    """Bilinear crop of ``image`` (H, W, C) uint8 by image->crop ``matrix``; outside is black.

    An image with a side of 32767 pixels or more, which OpenCV's warp refuses, is cropped from
    the part of it the crop reads, with the matrix shifted to match, when that gives provably
    the pixels OpenCV's arithmetic gives (see :func:`_warp_large`).

    Raises:
        ImageError: OpenCV fails, or a huge image cannot be cropped exactly; the message names
            ``source``, the image size and the problem.
    """
    height, width = image.shape[:2]
    try:
        if width < _SHRT_MAX and height < _SHRT_MAX:
            return cv2.warpAffine(image, matrix, crop_size, flags=cv2.INTER_LINEAR)
        return _warp_large(image, matrix, crop_size, source)
    except cv2.error as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        problem = lines[-1] if lines else "cv2.error"
        raise ImageError(
            f"{source}: the {width} x {height} image cannot be cropped (OpenCV: {problem})"
        ) from None


def _row_terms_shift_exactly(
    slope: float, offset: float, shifted: float, shift: int, rows: int
) -> bool:
    """Whether OpenCV's per-row fixed-point term round((slope * y + offset) * 1024), y < rows,
    is exactly 1024 * shift smaller with ``shifted`` (the double passed for ``offset - shift``).

    Checked row by row for both ways a compiler may evaluate ``slope * y + offset`` (rounding
    the product, or a fused multiply-add rounding once, computed here from the exact rational
    value): the terms must agree between the two, and shift exactly, so the result does not
    depend on how OpenCV was built."""
    y = np.arange(rows, dtype=np.float64)
    plain = np.rint((slope * y + offset) * 1024)
    moved = np.rint((slope * y + shifted) * 1024)
    if not np.array_equal(moved, plain - 1024 * shift):
        return False
    a, b, b2 = Fraction(slope), Fraction(offset), Fraction(shifted)
    fused = np.rint(np.array([float(a * k + b) for k in range(rows)]) * 1024)
    fused_moved = np.rint(np.array([float(a * k + b2) for k in range(rows)]) * 1024)
    return np.array_equal(fused, plain) and np.array_equal(fused_moved, moved)


def _warp_large(
    image: np.ndarray, matrix: np.ndarray, crop_size: tuple[int, int], source: str
) -> np.ndarray:
    """:func:`warp_to_crop` for an image with a side >= 32767 pixels.

    OpenCV's warp maps each crop pixel (x, y) to the source position, in 1/32 pixels,
    ``(round((M1 y + M2) 1024) + 16 + round(M0 x 1024)) >> 5`` (and likewise for rows, with
    M3, M4, M5 of the inverted matrix) and interpolates the four pixels around it. Cutting the
    image at column x0 / row y0 and subtracting x0 / y0 from the translation M2 / M5 moves
    every position by exactly 32 x0 / 32 y0 when :func:`_row_terms_shift_exactly` holds (the
    column terms do not involve the translation), so the cut, holding every pixel a position
    reads, gives OpenCV's own pixels. The inverse is OpenCV's (``invertAffineTransform``, the
    same arithmetic warpAffine uses), passed with ``WARP_INVERSE_MAP``. Only sides of 32767
    pixels or more are cut.
    """
    height, width = image.shape[:2]
    w_out, h_out = crop_size
    inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
    cut: list[tuple[int, int]] = []
    for axis, size in ((0, width), (1, height)):
        col_slope, row_slope, offset = inverse[axis]
        rows = np.arange(h_out, dtype=np.float64)
        cols = np.arange(w_out, dtype=np.float64)
        row_term = np.rint((row_slope * rows + offset) * 1024) + 16
        col_term = np.rint(col_slope * cols * 1024)
        lo = int(np.floor((row_term.min() + col_term.min()) / 1024))  # (.. >> 5) >> 5
        hi = int(np.floor((row_term.max() + col_term.max()) / 1024)) + 1  # and the next pixel
        lo, hi = max(lo, 0), min(hi, size - 1)
        if lo > hi:  # the crop lies entirely outside the image: black, as OpenCV makes it
            return np.zeros((h_out, w_out, *image.shape[2:]), dtype=image.dtype)
        if size < _SHRT_MAX:
            lo, hi = 0, size - 1
        elif hi - lo + 1 >= _SHRT_MAX:
            raise ImageError(
                f"{source}: the {width} x {height} image cannot be cropped: the crop reads "
                f"{hi - lo + 1} pixels along its {'width' if axis == 0 else 'height'}, more than "
                f"OpenCV's warp takes ({_SHRT_MAX - 1}); use a smaller box or a smaller image"
            )
        if not _row_terms_shift_exactly(row_slope, offset, offset - lo, lo, h_out):
            raise ImageError(
                f"{source}: the {width} x {height} image cannot be cropped exactly (a side of "
                f"{_SHRT_MAX} pixels or more, and the crop position falls on a rounding tie); "
                "resize the image"
            )
        cut.append((lo, hi))
    (x0, x1), (y0, y1) = cut
    inverse[0, 2] -= x0
    inverse[1, 2] -= y0
    part = image[y0 : y1 + 1, x0 : x1 + 1]
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(part, inverse, crop_size, flags=flags)


def crop_region(
    boxes: np.ndarray, crop_size: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Padded, aspect-fixed (N, 2) centres and scales of xyxy boxes: what each crop shows."""
    center, scale = box_to_center_scale(boxes, padding)
    return center, fix_aspect_ratio(scale, crop_size[0] / crop_size[1])


def crop(
    image: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    crop_size: tuple[int, int],
    rotation: float = 0.0,
    source: str = "the image",
) -> np.ndarray:
    """The (h, w, C) crop of ``image`` showing region (center, scale), rotated by ``rotation``°.

    Raises:
        ImageError: the image cannot be cropped (see :func:`warp_to_crop`), naming ``source``.
    """
    matrix = image_to_crop_matrix(center, scale, rotation, crop_size)
    return warp_to_crop(image, matrix, crop_size, source)


def cut_crops(
    image: np.ndarray,
    centers: np.ndarray,
    scales: np.ndarray,
    input_size: tuple[int, int],
    source: str = "the image",
) -> np.ndarray:
    """(N, h, w, 3) uint8 crops of an (H, W, 3) image, one per crop region (centers and scales
    (N, 2) float32 image pixels, from :func:`crop_region`), cut with OpenCV
    exactly as the reference cuts them."""
    out = np.empty((len(centers), input_size[1], input_size[0], 3), np.uint8)
    for i in range(len(centers)):
        out[i] = crop(image, centers[i], scales[i], input_size, source=source)
    return out


def crop_to_image(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, crop_size: tuple[int, int]
) -> np.ndarray:
    """Map crop pixels back to image pixels (no rotation), as the reference does (§6.5).

    Args:
        points: (N, K, 2) crop pixels.
        center, scale: (N, 2) float32, the aspect-fixed crop region in image pixels.
        crop_size: (w, h) of the crop.

    Returns:
        (N, K, 2) float32 image pixels; computed in float64, rounded once.
    """
    points = np.asarray(points, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float32)
    size = np.asarray(crop_size, dtype=np.float64)
    half = (np.float32(0.5) * scale).astype(np.float64)  # the reference halves in float32
    out = (
        points / size * scale[:, None].astype(np.float64) + np.asarray(center, np.float64)[:, None]
    )
    return (out - half[:, None]).astype(np.float32)
