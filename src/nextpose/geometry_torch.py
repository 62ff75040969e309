"""The maps of :mod:`nextpose.geometry` in tensor operations: they run on any device and export
to ONNX, so a batch of crops can be cut where the network runs (a GPU, or inside an ONNX graph),
with the same bits as the OpenCV path (tests)."""

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

WarpMethod = Literal["fixed", "grid_sample"]


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
