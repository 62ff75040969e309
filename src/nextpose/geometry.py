"""Boxes, crops and the affine maps between image and crop pixels.

Frames: *image* pixels of the decoded picture and *crop* pixels of the network input, both with
pixel centres at integer coordinates. Arithmetic follows the reference bit for bit (§2, 3, 6.5):
the float32/float64 choices below are deliberate.
"""

from fractions import Fraction
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ImageError, InputError
from .opencv import cv2

WarpMethod = Literal["fixed", "grid_sample"]


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


# ---------------------------------------------------------------------------------------------
# The same maps in tensor operations: they run on any device and export to ONNX, so a batch of
# crops can be cut where the network runs (a GPU, or inside an ONNX graph).


def crop_region_torch(
    boxes: torch.Tensor, crop_size: tuple[int, int], padding: float = 1.25
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`crop_region` in tensor operations (float32, the same bits): padded, aspect-fixed
    centres and scales (N, 2) of (N, 4) xyxy boxes."""
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    center = torch.stack([(x1 + x2) * 0.5, (y1 + y2) * 0.5], dim=1)
    pad = float(np.float32(padding))  # the float32 value, as NumPy multiplies by it
    w, h = (x2 - x1) * pad, (y2 - y1) * pad
    aspect = float(np.float32(crop_size[0] / crop_size[1]))
    wider = w > h * aspect
    scale = torch.where(
        wider[:, None], torch.stack([w, w / aspect], dim=1), torch.stack([h * aspect, h], dim=1)
    )
    return center, scale


def affine_matrix_torch(
    center: torch.Tensor, scale: torch.Tensor, crop_size: tuple[int, int]
) -> torch.Tensor:
    """:func:`image_to_crop_matrix` (no rotation) in tensor operations: (N, 2, 3) float64
    image -> crop matrices with OpenCV's last bits.

    The three point pairs are built in float32 as the reference builds them, and the 6x6 system
    is solved by the elimination ``cv2.getAffineTransform`` performs (partial pivoting, ties to
    the upper row, products and sums rounded separately; §3.2-3.3), vectorised over N. A
    closed-form solve differs in the last bit, which moves warped pixels in a few % of crops.
    """
    w_out, h_out = crop_size
    cx, cy = center[:, 0].float(), center[:, 1].float()
    src1x = (cx.double() + -0.5 * scale[:, 0].double()).float()  # fl32(c + d), d = (-sw/2, 0)
    src2y = cy + (cx - src1x)  # src1 + (src0 - src1) turned by 90 degrees, float32
    xs = [t.double() for t in (cx, src1x, src1x)]
    ys = [t.double() for t in (cy, cy, src2y)]
    us = (w_out / 2, 0.0, 0.0)
    vs = (h_out / 2, h_out / 2, h_out / 2 + w_out / 2)
    one, zero = torch.ones_like(xs[0]), torch.zeros_like(xs[0])
    rows, rhs = [], []
    for i in range(3):
        rows += [[xs[i], ys[i], one, zero, zero, zero], [zero, zero, zero, xs[i], ys[i], one]]
        rhs += [zero + us[i], zero + vs[i]]
    a = torch.stack([torch.stack(r, dim=1) for r in rows], dim=1)  # (N, 6, 6)
    b = torch.stack(rhs, dim=1)  # (N, 6)
    index = torch.arange(6, device=a.device)
    singular = torch.zeros_like(xs[0], dtype=torch.bool)
    for i in range(6):
        # Pivot: the first row k >= i of largest |a[k, i]|; swap rows i and k.
        column = a[:, i:, i].abs()
        k = column.argmax(dim=1, keepdim=True)
        singular = singular | (column.gather(1, k)[:, 0] < 100 * 2.0**-52)  # a zero-size box
        k = k + i  # (N, 1)
        perm = torch.where(index == i, k, torch.where(index == k, torch.full_like(k, i), index))
        a = a.gather(1, perm[:, :, None].expand_as(a))
        b = b.gather(1, perm)
        # Rows below i: a[j] += (a[j, i] * (-1 / a[i, i])) * a[i]; the rows above are untouched
        # (alpha = 0) and the columns <= i are never read again.
        alpha = a[:, :, i] * (-1.0 / a[:, i : i + 1, i])
        alpha = torch.where(index > i, alpha, torch.zeros_like(alpha))
        a = a + alpha[:, :, None] * a[:, i : i + 1, :]
        b = b + alpha * b[:, i : i + 1]
    m: list[torch.Tensor] = [zero] * 6
    for i in range(5, -1, -1):
        acc = b[:, i]
        for k in range(i + 1, 6):
            acc = acc - a[:, i, k] * m[k]
        m[i] = acc / a[:, i, i]
    # OpenCV answers a singular system with the zero matrix: the crop repeats pixel (0, 0).
    out = torch.stack(m, dim=1).masked_fill(singular[:, None], 0.0)
    return out.reshape(-1, 2, 3)


def _source_grid(
    center: torch.Tensor, scale: torch.Tensor, crop_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source position of every crop pixel, (N, h, w) float64 in 1/32 image pixels (whole
    numbers), computed as OpenCV 4.x's fixed-point warp computes it (§3.4, variant A)."""
    w_out, h_out = crop_size
    mat = affine_matrix_torch(center, scale, crop_size)
    a, b, c = mat[:, 0, 0], mat[:, 0, 1], mat[:, 0, 2]
    d, e, f = mat[:, 1, 0], mat[:, 1, 1], mat[:, 1, 2]
    det = a * e - b * d
    inv = torch.where(det != 0, 1.0 / det, torch.zeros_like(det))
    a11, a22, a12, a21 = e * inv, a * inv, b * -inv, d * -inv
    b1 = -a11 * c - a12 * f
    b2 = -a21 * c - a22 * f
    cols = torch.arange(w_out, dtype=torch.float64, device=mat.device)[None]  # (1, w)
    rows = torch.arange(h_out, dtype=torch.float64, device=mat.device)[None]  # (1, h)
    # Per column: rne(A11 X 1024), rne(A21 X 1024); per row: rne((A12 Y + B1) 1024) + 16, ...
    x_col = torch.round(a11[:, None] * cols * 1024)
    y_col = torch.round(a21[:, None] * cols * 1024)
    x_row = torch.round((a12[:, None] * rows + b1[:, None]) * 1024) + 16
    y_row = torch.round((a22[:, None] * rows + b2[:, None]) * 1024) + 16
    xq = torch.floor((x_row[:, :, None] + x_col[:, None, :]) / 32)  # >> 5
    yq = torch.floor((y_row[:, :, None] + y_col[:, None, :]) / 32)
    return xq, yq


def warp_crops(
    image: torch.Tensor,
    center: torch.Tensor,
    scale: torch.Tensor,
    crop_size: tuple[int, int],
    method: WarpMethod = "fixed",
) -> torch.Tensor:
    """Crops (N, h, w, C) float32 (whole grey levels 0..255) of one (H, W, C) image, each showing
    the region (center, scale) as :func:`crop` does, in tensor operations for batches on a device.

    ``"fixed"`` reproduces OpenCV 4.x's fixed-point bilinear warp (matrix, 1/32-pixel grid,
    integer weights, rounding) with gathers: equal to :func:`crop`. ``"grid_sample"`` samples
    the same 1/32-pixel positions with ``torch.nn.functional.grid_sample`` (one fused op; float
    weights, so a pixel whose exact value is a rounding tie can come out one grey level off).
    """
    w_out, h_out = crop_size
    height, width, channels = image.shape
    xq, yq = _source_grid(center, scale, crop_size)  # (N, h, w), 1/32 pixels
    pixels = image.float()
    if method == "grid_sample":
        # Normalised coordinates (align_corners=False): g = (2 x + 1) / W - 1.
        grid = torch.stack([(xq / 16 + 1) / width - 1, (yq / 16 + 1) / height - 1], dim=-1)
        # All crops as one tall grid over the single image: no copy of the image per crop.
        out = F.grid_sample(
            pixels.permute(2, 0, 1)[None],
            grid.float().reshape(1, -1, w_out, 2),
            mode="bilinear",
            padding_mode="zeros",
            align_corners=False,
        )  # (1, C, N * h, w)
        out = out[0].reshape(channels, -1, h_out, w_out).permute(1, 2, 3, 0)
        return torch.floor(out + 0.5).clamp(0, 255)
    if method != "fixed":
        raise InputError(f"warp method must be 'fixed' or 'grid_sample', not {method!r}")
    ix, iy = torch.floor(xq / 32), torch.floor(yq / 32)  # whole pixels
    fx, fy = xq - ix * 32, yq - iy * 32  # fractions, 1/32
    flat = pixels.reshape(-1, channels)
    total = torch.zeros((), device=image.device)
    for dy, wy in ((0, 32 - fy), (1, fy)):  # the four neighbours, each zero outside the image
        row = iy + dy
        for dx, wx in ((0, 32 - fx), (1, fx)):
            col = ix + dx
            inside = (row >= 0) & (row < height) & (col >= 0) & (col < width)
            index = row.clamp(0, height - 1) * width + col.clamp(0, width - 1)
            weight = torch.where(inside, wx * wy, torch.zeros_like(wx)).float()  # 0..1024
            total = total + flat[index.long().reshape(-1)].reshape(
                *index.shape, channels
            ) * weight.unsqueeze(-1)
    return torch.floor((total + 512) / 1024)  # (sum * 32 + 16384) >> 15, exact in float32


def crop_to_image_torch(
    points: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, crop_size: tuple[int, int]
) -> torch.Tensor:
    """:func:`crop_to_image` in tensor operations: the same float64 arithmetic, rounded once to
    float32. points (N, K, 2) crop pixels; center, scale (N, 2) float32."""
    size = torch.tensor(crop_size, dtype=torch.float64, device=points.device)
    half = (0.5 * scale.float()).double()  # the reference halves in float32
    out = points.double() / size * scale.double()[:, None] + center.double()[:, None]
    return (out - half[:, None]).float()
