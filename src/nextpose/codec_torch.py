"""The decoding of :mod:`nextpose.codec` in tensor operations, so it runs where the heatmaps are
(a GPU, or inside an exported ONNX graph)."""

import torch
import torch.nn.functional as F

from .codec import blur_kernel
from .config import check_decode


def decode_heatmaps_torch(
    heatmaps: torch.Tensor, decode: str = "msra", blur_kernel_size: int = 11
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_heatmaps` in tensor operations: the same result on any device, and exportable
    to ONNX (argmax, comparisons, gathers; for ``dark`` also two convolutions and float64
    arithmetic), so decoding runs where the heatmaps are.

    ``msra`` gives :func:`decode_heatmaps`' numbers bit for bit. ``dark`` follows the same
    steps, but its blur sums in another order than OpenCV's (float32 last-bit differences), and
    so does the log; near-flat peaks, where the Taylor step is ill-conditioned, amplify those.

    Args:
        heatmaps: (N, K, Hh, Wh) float32.
        decode, blur_kernel_size: as for :func:`decode_heatmaps`.

    Returns:
        locations (N, K, 2) float32 heatmap pixels and scores (N, K) float32, as
        :func:`decode_heatmaps` gives them (first maximum; (-1, -1) where the maximum is <= 0).
    """
    if check_decode(decode) == "dark":
        return _decode_dark_torch(heatmaps, blur_kernel_size)
    h, w = _size(heatmaps)
    flat = _flat(heatmaps, h, w)
    index, scores, x, y = _argmax(flat, w)

    def at(dx: int, dy: int) -> torch.Tensor:  # the value dx, dy away (clamped; masked below)
        return flat.gather(2, (index + dy * w + dx).clamp(0, h * w - 1))

    # Quarter-pixel step toward the higher neighbour, with the reference's asymmetric bounds.
    ok_x = (x > 1) & (x < w - 1) & (y > 0) & (y < h)
    ok_y = (y > 1) & (y < h - 1) & (x > 0) & (x < w)
    zero = torch.zeros_like(scores)
    dx = torch.where(ok_x, at(1, 0) - at(-1, 0), zero)
    dy = torch.where(ok_y, at(0, 1) - at(0, -1), zero)
    locations = torch.cat([x, y], dim=2).to(heatmaps.dtype)
    locations = locations + 0.25 * torch.sign(torch.cat([dx, dy], dim=2))
    return locations, scores.squeeze(2)


def _size(heatmaps: torch.Tensor) -> tuple[int, int]:
    # Plain ints: an exported graph keeps the heatmap size fixed and only N dynamic.
    return int(heatmaps.shape[-2]), int(heatmaps.shape[-1])


def _flat(heatmaps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, K, Hh, Wh) -> (N, K, Hh * Wh), row-major. Not ``flatten(2)``: exported, that is a
    reshape to (N, K, -1), which ONNX Runtime cannot solve for N = 0 (a frame without people)."""
    return heatmaps.reshape(-1, heatmaps.shape[1], h * w)


def _argmax(
    flat: torch.Tensor, w: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first maximum of row-major heatmaps (N, K, Hh * Wh): its index, value and x, y
    (N, K, 1); x and y are -1 where the maximum is <= 0 (a NaN maximum keeps its place, as
    in the reference)."""
    index = flat.argmax(dim=2, keepdim=True)
    scores = flat.gather(2, index)
    valid = ~(scores <= 0)
    x = torch.where(valid, torch.remainder(index, w), torch.full_like(index, -1))
    y = torch.where(valid, torch.div(index, w, rounding_mode="floor"), torch.full_like(index, -1))
    return index, scores, x, y


def modulate_torch(heatmaps: torch.Tensor, blur_kernel_size: int = 11) -> torch.Tensor:
    """:func:`modulate` in tensor operations: a separable zero-padded convolution with OpenCV's
    kernel (rows, then columns, as OpenCV filters), the rescale, and the log."""
    n, k, h, w = heatmaps.shape
    b = (blur_kernel_size - 1) // 2
    kernel = torch.from_numpy(blur_kernel(blur_kernel_size).copy()).to(heatmaps)
    maps = heatmaps.reshape(n * k, 1, h, w)
    blurred = F.conv2d(maps, kernel.view(1, 1, 1, -1), padding=(0, b))
    blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1), padding=(b, 0)).reshape(n, k, h, w)
    peak = heatmaps.amax(dim=(2, 3), keepdim=True)
    blurred = blurred * (peak / blurred.amax(dim=(2, 3), keepdim=True))
    return torch.log(torch.clamp(blurred, min=1e-10))


def _decode_dark_torch(
    heatmaps: torch.Tensor, blur_kernel_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_decode_dark` in tensor operations (float64 where the reference is)."""
    h, w = _size(heatmaps)
    index, scores, x, y = _argmax(_flat(heatmaps, h, w), w)
    logs = _flat(modulate_torch(heatmaps, blur_kernel_size), h, w)

    def at(dx: int, dy: int) -> torch.Tensor:  # float32, dx, dy away (clamped; masked below)
        return logs.gather(2, (index + dy * w + dx).clamp(0, h * w - 1))

    centre = at(0, 0).double()
    gx = 0.5 * (at(1, 0) - at(-1, 0)).double()
    gy = 0.5 * (at(0, 1) - at(0, -1)).double()
    hxx = 0.25 * (at(2, 0).double() - 2 * centre + at(-2, 0).double())
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)).double()
    hyy = 0.25 * (at(0, 2).double() - 2 * centre + at(0, -2).double())
    det = hxx * hyy - hxy * hxy
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (det != 0)
    safe = torch.where(ok, det, torch.ones_like(det))
    zero = torch.zeros_like(det)
    ox = torch.where(ok, -(hyy * gx - hxy * gy) / safe, zero)
    oy = torch.where(ok, -(hxx * gy - hxy * gx) / safe, zero)
    locations = torch.cat([x, y], dim=2).double() + torch.cat([ox, oy], dim=2)
    return locations.to(heatmaps.dtype), scores.squeeze(2)
