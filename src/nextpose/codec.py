"""Heatmaps -> keypoints: argmax plus the quarter-pixel step toward the higher neighbour (MSRA)."""

import numpy as np


def decode_heatmaps(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint locations and scores from heatmaps, exactly as the reference decodes (spec 6.2-6.4).

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
