"""Keypoints <-> heatmaps (MSRA): Gaussian training targets, and argmax plus the quarter-pixel
step toward the higher neighbour for decoding."""

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def _gaussian_patch(sigma: float) -> np.ndarray:
    """The (n, n) float32 Gaussian window, n = 6 sigma + 1, peak exactly 1 at its centre."""
    radius = 3 * sigma
    x = np.arange(0, 2 * radius + 1, dtype=np.float32)
    y = x[:, None]
    c = (2 * radius + 1) // 2
    patch = np.exp(-((x - c) ** 2 + (y - c) ** 2) / (2 * sigma**2))
    patch.flags.writeable = False
    return patch


def encode_heatmaps(
    keypoints: np.ndarray,
    visible: np.ndarray,
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian target heatmaps and keypoint weights, made exactly as the reference (§8.3).

    Each labelled keypoint gets an unnormalised float32 Gaussian (peak 1, no sub-pixel offset)
    centred on the heatmap pixel ``mu = trunc(kp / stride + 0.5)`` (toward zero, so any point in
    (-1.5, 0.5) heatmap pixels lands on pixel 0), over a (6 sigma + 1)-wide window clipped to the
    map and pasted by element-wise maximum. A keypoint whose window misses the map gets weight 0;
    the reference's off-by-one keeps weight 1 (with an empty channel) when the window ends exactly
    at column/row 0.

    Args:
        keypoints: (K, 2) float32, crop (network input) pixels.
        visible: (K,) float32; keypoints below 0.5 are unlabelled (empty channel, weight = visible).
        input_size: (w, h) of the crop; heatmap_size: (w, h) of the heatmaps.
        sigma: Gaussian standard deviation, heatmap pixels (2 at 256x192, 3 at 384x288).

    Returns:
        heatmaps (K, Hh, Wh) float32 and weights (K,) float32.
    """
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
    visible = np.asarray(visible, dtype=np.float32).reshape(-1)
    w, h = heatmap_size
    k = len(keypoints)
    heatmaps = np.zeros((k, h, w), np.float32)
    weights = visible.copy()
    stride = (np.asarray(input_size, np.float32) / np.asarray(heatmap_size, np.float32)).astype(
        np.float32
    )
    mu = (keypoints / stride + np.float32(0.5)).astype(np.int64)  # truncates toward zero
    sigma = float(sigma)  # a Python float keeps the Gaussian in float32 (NumPy 2 promotion)
    radius = 3 * sigma
    lefts = (mu[:, 0] - radius).astype(np.int64)
    tops = (mu[:, 1] - radius).astype(np.int64)
    rights = (mu[:, 0] + radius + 1).astype(np.int64)
    bottoms = (mu[:, 1] + radius + 1).astype(np.int64)
    patch = _gaussian_patch(sigma)
    for i in range(k):
        if visible[i] < 0.5:
            continue
        left, top, right, bottom = int(lefts[i]), int(tops[i]), int(rights[i]), int(bottoms[i])
        if left >= w or top >= h or right < 0 or bottom < 0:
            weights[i] = 0
            continue
        x1, x2 = max(0, left), min(w, right)
        y1, y2 = max(0, top), min(h, bottom)
        if x2 <= x1 or y2 <= y1:  # right == 0 or bottom == 0: nothing to paste, weight kept
            continue
        region = heatmaps[i, y1:y2, x1:x2]
        np.maximum(region, patch[y1 - top : y2 - top, x1 - left : x2 - left], out=region)
    return heatmaps, weights


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint locations and scores from heatmaps, exactly as the reference decodes (§6.2-6.4).

    Args:
        heatmaps: (N, K, Hh, Wh) float32.

    Returns:
        locations (N, K, 2) float32 in heatmap pixels, and scores (N, K) float32 = the maxima.
        A map whose maximum is <= 0 gives location (-1, -1); its score is kept as it is.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    index = flat.argmax(axis=2)  # first maximum in row-major order
    scores = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
    x = (index % w).astype(np.int64)
    y = (index // w).astype(np.int64)
    invalid = scores <= 0
    x[invalid] = -1
    y[invalid] = -1

    # Quarter-pixel refinement, with the reference's exact (asymmetric) bounds.
    nn_, kk = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    dx = np.zeros((n, k), np.float32)
    dy = np.zeros((n, k), np.float32)
    ok_x = (x > 1) & (x < w - 1) & (y > 0) & (y < h)
    ok_y = (y > 1) & (y < h - 1) & (x > 0) & (x < w)
    i = ok_x
    dx[i] = heatmaps[nn_[i], kk[i], y[i], x[i] + 1] - heatmaps[nn_[i], kk[i], y[i], x[i] - 1]
    i = ok_y
    dy[i] = heatmaps[nn_[i], kk[i], y[i] + 1, x[i]] - heatmaps[nn_[i], kk[i], y[i] - 1, x[i]]
    locations = np.stack([x, y], axis=-1).astype(np.float32)
    locations += np.float32(0.25) * np.sign(np.stack([dx, dy], axis=-1))
    return locations, scores


def decode_heatmaps_torch(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`decode_heatmaps` in tensor operations: the same result on any device, and exportable
    to ONNX (argmax, comparisons and gathers only), so decoding runs where the heatmaps are.

    Args:
        heatmaps: (N, K, Hh, Wh) float32.

    Returns:
        locations (N, K, 2) float32 heatmap pixels and scores (N, K) float32, as
        :func:`decode_heatmaps` gives them (first maximum; (-1, -1) where the maximum is <= 0).
    """
    h, w = heatmaps.shape[-2:]
    flat = heatmaps.flatten(2)  # (N, K, Hh * Wh), row-major
    index = flat.argmax(dim=2, keepdim=True)  # the first maximum
    scores = flat.gather(2, index)
    x = torch.remainder(index, w)
    y = torch.div(index, w, rounding_mode="floor")
    valid = scores > 0
    x = torch.where(valid, x, torch.full_like(x, -1))
    y = torch.where(valid, y, torch.full_like(y, -1))

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
