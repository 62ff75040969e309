"""Keypoints <-> heatmaps: Gaussian training targets (MSRA, or DARK's sub-pixel ones), and
decoding by argmax plus either the quarter-pixel step toward the higher neighbour (``msra``) or
DARK's Taylor step on the blurred log-heatmap (``dark``, Zhang et al., CVPR 2020; §10.1)."""

from functools import lru_cache

import numpy as np

from .config import check_decode
from .opencv import cv2


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
    unbiased: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian target heatmaps and keypoint weights, made exactly as the reference (§8.3;
    ``unbiased``: §10.1).

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
        unbiased: DARK targets: the Gaussian is centred on the keypoint's exact sub-pixel
            position ``kp / stride`` and covers the whole map; the rejection test uses the
            real-valued window ``[p - 3 sigma, p + 3 sigma + 1]``.

    Returns:
        heatmaps (K, Hh, Wh) float32 and weights (K,) float32.
    """
    if unbiased:
        return _encode_unbiased(keypoints, visible, input_size, heatmap_size, sigma)
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


def _encode_unbiased(
    keypoints: np.ndarray,
    visible: np.ndarray,
    input_size: tuple[int, int],
    heatmap_size: tuple[int, int],
    sigma: float,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`encode_heatmaps` with ``unbiased=True`` (§10.1), all in float32."""
    keypoints = np.asarray(keypoints, dtype=np.float32).reshape(-1, 2)
    visible = np.asarray(visible, dtype=np.float32).reshape(-1)
    w, h = heatmap_size
    heatmaps = np.zeros((len(keypoints), h, w), np.float32)
    weights = visible.copy()
    stride = (np.asarray(input_size, np.float32) / np.asarray(heatmap_size, np.float32)).astype(
        np.float32
    )
    centres = keypoints / stride  # float32, sub-pixel
    sigma = float(sigma)  # Python floats keep the arithmetic in float32 (NumPy 1 and 2 alike)
    radius = 3 * sigma
    x = np.arange(w, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)[:, None]
    for i, p in enumerate(centres):
        if visible[i] < 0.5:
            continue
        left, top = p - radius
        right, bottom = p + radius + 1
        if left >= w or top >= h or right < 0 or bottom < 0:
            weights[i] = 0
            continue
        gaussian = np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2) / (2 * sigma**2))
        np.maximum(gaussian, heatmaps[i], out=heatmaps[i])
    return heatmaps, weights


def decode_heatmaps(
    heatmaps: np.ndarray, decode: str = "msra", blur_kernel_size: int = 11
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoint locations and scores from heatmaps, exactly as the reference decodes (§6.2-6.4;
    ``decode="dark"``: §10.1, the reference's own OpenCV blur and NumPy 1.x arithmetic).

    Args:
        heatmaps: (N, K, Hh, Wh) float32.
        decode: ``msra`` (argmax + quarter-pixel step) or ``dark`` (argmax + Taylor step).
        blur_kernel_size: DARK's Gaussian modulation kernel (odd), heatmap pixels.

    Returns:
        locations (N, K, 2) float32 in heatmap pixels, and scores (N, K) float32 = the maxima.
        A map whose maximum is <= 0 gives location (-1, -1); its score is kept as it is.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if check_decode(decode) == "dark":
        return _decode_dark(heatmaps, blur_kernel_size)
    n, k, h, w = heatmaps.shape
    x, y, scores = _argmax(heatmaps)

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


def _argmax(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer x, y (N, K) of each map's first maximum, (-1, -1) where it is <= 0, and the
    maxima (N, K) float32 (§6.2)."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    index = flat.argmax(axis=2)  # the first maximum in row-major order
    scores = np.take_along_axis(flat, index[..., None], axis=2)[..., 0]
    x = (index % w).astype(np.int64)
    y = (index // w).astype(np.int64)
    x[scores <= 0] = -1
    y[scores <= 0] = -1
    return x, y, scores


@lru_cache(maxsize=8)
def blur_kernel(size: int) -> np.ndarray:
    """(size,) float32: the 1-D kernel ``cv2.GaussianBlur`` uses for float32 images with
    sigma 0 (OpenCV's rule ``sigma = 0.3 ((size - 1) / 2 - 1) + 0.8``; 2.0 for 11)."""
    kernel = cv2.getGaussianKernel(size, 0, ktype=cv2.CV_32F).reshape(-1)
    kernel.flags.writeable = False
    return kernel


def modulate(heatmaps: np.ndarray, blur_kernel_size: int = 11) -> np.ndarray:
    """DARK's modulated log-heatmaps (N, K, Hh, Wh) float32 (§10.1 steps 1-2): each map
    zero-padded by ``(size - 1) / 2``, blurred by ``cv2.GaussianBlur`` (size x size, sigma from
    OpenCV's rule), cropped back, rescaled to its original maximum, then ``log(max(h, 1e-10))``.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    n, k, h, w = heatmaps.shape
    b = (blur_kernel_size - 1) // 2
    padded = np.zeros((h + 2 * b, w + 2 * b), np.float32)
    out = np.empty_like(heatmaps)
    with np.errstate(divide="ignore", invalid="ignore"):  # a flat zero map: 0 / 0, as there
        for i in range(n):
            for j in range(k):
                padded[b : b + h, b : b + w] = heatmaps[i, j]
                size = (blur_kernel_size, blur_kernel_size)
                blurred = cv2.GaussianBlur(padded, size, 0)[b : b + h, b : b + w]
                out[i, j] = blurred * (heatmaps[i, j].max() / blurred.max())
        np.maximum(out, np.float32(1e-10), out=out)
        np.log(out, out=out)
    return out


def _decode_dark(heatmaps: np.ndarray, blur_kernel_size: int) -> tuple[np.ndarray, np.ndarray]:
    """DARK decoding as the reference runs it under NumPy 1.x (§10.1): the scalar expressions
    ``0.5 * (a - b)`` and ``a - 2 * b + c`` there promote float32 heatmap values to float64, so
    the first differences are float32, the rest of the Taylor step float64, and the keypoint
    float32 again at the end."""
    x, y, scores = _argmax(heatmaps)
    locations = np.stack([x, y], axis=-1).astype(np.float32)
    h, w = heatmaps.shape[2:]
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2)
    if not ok.any():
        return locations, scores
    logs = modulate(heatmaps, blur_kernel_size)
    ni, ki = np.nonzero(ok)
    xi, yi = x[ok], y[ok]

    def at(dx: int, dy: int) -> np.ndarray:  # float32 values dx, dy away
        return logs[ni, ki, yi + dy, xi + dx]

    f64 = np.float64
    centre = at(0, 0).astype(f64)
    gx = 0.5 * (at(1, 0) - at(-1, 0)).astype(f64)
    gy = 0.5 * (at(0, 1) - at(0, -1)).astype(f64)
    hxx = 0.25 * (at(2, 0).astype(f64) - 2 * centre + at(-2, 0).astype(f64))
    hxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)).astype(f64)
    hyy = 0.25 * (at(0, 2).astype(f64) - 2 * centre + at(0, -2).astype(f64))
    step = hxx * hyy - hxy**2 != 0
    hessian = np.stack([hxx, hxy, hxy, hyy], axis=-1).reshape(-1, 2, 2)[step]
    gradient = np.stack([gx, gy], axis=-1).reshape(-1, 2, 1)[step]
    try:
        inverse = np.linalg.inv(hessian)
    except np.linalg.LinAlgError:  # an exactly singular LU pivot: no step there
        inverse = np.stack([_inverse_or_zero(m) for m in hessian]) if len(hessian) else hessian
    offset = (-inverse @ gradient)[..., 0]
    rows, cols = ni[step], ki[step]
    locations[rows, cols] = (locations[rows, cols].astype(f64) + offset).astype(np.float32)
    return locations, scores


def _inverse_or_zero(matrix: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(matrix)
    except np.linalg.LinAlgError:
        return np.zeros_like(matrix)
