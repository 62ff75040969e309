"""Instance rescoring and OKS-based non-maximum suppression (§7.3, 7.4).

The reference ran these steps under NumPy 1.x, whose scalar promotion rules differ from NumPy 2:
rescoring happened in float64 (each float32 keypoint score widened) and OKS-NMS in float32.
Every cast below is explicit, so NumPy 1 and NumPy 2 give the reference's bits.
"""

from collections.abc import Callable
from typing import Literal

import numpy as np

from ..errors import InputError
from ..structures import rescore  # noqa: F401 (re-exported: evaluation.rescore)

TieOrder = Literal["stable", "numpy"]
"""How equal instance scores are ordered in OKS-NMS: ``"stable"`` (the same on every machine) or
``"numpy"`` (NumPy's default argsort, as the reference; CPU- and version-dependent)."""
TIE_ORDERS = ("stable", "numpy")

_EPS32 = np.float32(np.spacing(1.0))  # 2**-52, exactly representable in float32
_HALF32 = np.float32(0.5)


def _pairwise_row_sums(t: np.ndarray) -> np.ndarray:
    """Row sums of an (n, K) array in NumPy's pairwise summation order for one contiguous row.

    K < 8: sequential; K <= 128: eight strided partial sums combined as a tree, then the rest
    sequentially; larger K: split in two (at a multiple of 8) and recurse. Arithmetic stays in
    ``t.dtype``, so float32 inputs give float32 sums rounded exactly as ``np.sum`` of a row.
    """
    n = t.shape[1]
    if n < 8:
        res = np.zeros(t.shape[0], dtype=t.dtype)
        for i in range(n):
            res = res + t[:, i]
        return res
    if n <= 128:
        r = [t[:, j] for j in range(8)]
        stop = n - n % 8
        for i in range(8, stop, 8):
            r = [r[j] + t[:, i + j] for j in range(8)]
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(stop, n):
            res = res + t[:, i]
        return res
    half = n // 2
    half -= half % 8
    return _pairwise_row_sums(t[:, :half]) + _pairwise_row_sums(t[:, half:])


def pairwise_prefix_sums(t: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``np.sum(t[i, :counts[i]])`` for every row i, rounded as NumPy rounds each such sum.

    Args:
        t: (n, K) values, K <= 128; entries at and after ``counts[i]`` in row i must be 0.
        counts: (n,) how many leading entries of each row are summed (0..K).

    Returns:
        (n,) sums in ``t.dtype``. NumPy sums a contiguous row of m <= 128 values sequentially
        when m < 8, else as eight strided partial sums over the first ``m - m % 8`` values,
        combined as a tree, then the rest sequentially; rows are grouped by that split, and
        the zero padding adds exactly nothing.
    """
    n, k = t.shape
    if k > 128:
        raise ValueError(f"pairwise_prefix_sums: at most 128 columns, got {k}")
    out = np.zeros(n, dtype=t.dtype)
    stops = np.where(counts < 8, 0, counts - counts % 8)
    for stop in np.unique(stops).tolist():
        rows = stops == stop
        block = t[rows]
        if stop == 0:
            res = np.zeros(len(block), dtype=t.dtype)
            start = 0
        else:
            r = [block[:, j] for j in range(8)]
            for i in range(8, stop, 8):
                r = [r[j] + block[:, i + j] for j in range(8)]
            res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
            start = stop
        for i in range(start, k):
            res = res + block[:, i]
        out[rows] = res
    return out


def oks_iou(
    keypoints: np.ndarray,
    others: np.ndarray,
    area: float,
    other_areas: np.ndarray,
    sigmas: np.ndarray,
) -> np.ndarray:
    """Object keypoint similarity of one pose against several, in float32 (§7.4 step 3).

    Args:
        keypoints: (K, 2) or (K, 3) pose; only x, y (image pixels) are used.
        others: (M, K, 2) or (M, K, 3) poses to compare with.
        area: the pose's area (px^2; the crop-scale product, float32).
        other_areas: (M,) areas of ``others``.
        sigmas: (K,) per-keypoint OKS sigmas (float32; the variances ``(2 sigma)^2`` are float32).

    Returns:
        (M,) float32 OKS in [0, 1]. All K keypoints count; keypoint scores play no part.
    """
    g = np.asarray(keypoints, dtype=np.float32)
    d = np.asarray(others, dtype=np.float32)
    sig = np.asarray(sigmas, dtype=np.float32)
    k = g.shape[0]
    if d.ndim != 3 or d.shape[1] != k or len(sig) != k:
        raise ValueError(
            f"oks_iou: pose (K={k}), others {d.shape} and {len(sig)} sigmas do not agree"
        )
    if len(d) == 0:
        return np.zeros(0, dtype=np.float32)
    return _oks(g[None, :, :2], d[:, :, :2], np.float32(area), other_areas, sig)


def _oks(
    g: np.ndarray, d: np.ndarray, a_g: np.ndarray, a_d: np.ndarray, sigmas: np.ndarray
) -> np.ndarray:
    """Broadcast float32 OKS of poses ``g`` (..., K, 2) against ``d`` (..., K, 2) -> (...)."""
    var = (sigmas * np.float32(2)) ** 2
    dx = d[..., 0] - g[..., 0]
    dy = d[..., 1] - g[..., 1]
    den = (np.asarray(a_g, dtype=np.float32) + np.asarray(a_d, dtype=np.float32)) * _HALF32 + _EPS32
    e = (dx * dx + dy * dy) / var / den[..., None] * _HALF32
    k = e.shape[-1]
    total = _pairwise_row_sums(np.exp(-e).reshape(-1, k)).reshape(e.shape[:-1])
    return (total / np.float32(k)).astype(np.float32)


def _oks_matrix(kpts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(N, N) float32 OKS of every pose pair: the same bits as :func:`oks_iou` per pair."""
    pts = kpts[:, :, :2]
    return _oks(pts[:, None], pts[None, :], areas[:, None], areas[None, :], sigmas)


def _descending_order(scores: np.ndarray, tie_order: TieOrder = "stable") -> np.ndarray:
    """Indices by descending score: an ascending argsort, reversed, as the reference does.

    ``"stable"``: equal scores come out highest index first, the same on every machine; it is the
    order classic NumPy 1 gives for up to 16 instances per image. ``"numpy"``: NumPy's default
    (unstable) argsort, exactly the reference's call, whose tie order depends on the NumPy version
    and the CPU's SIMD sort (AVX-512 vs AVX2, §7.4); use it to get the reference's numbers on
    the machine it ran on.
    """
    if tie_order == "stable":
        return np.argsort(scores, kind="stable")[::-1]
    if tie_order == "numpy":
        return np.argsort(scores)[::-1]
    raise InputError(f"tie_order must be one of {TIE_ORDERS}, got {tie_order!r}")


_MATRIX_MAX = 256  # up to this many poses per image, all pair OKS are computed at once


def _pair_oks(
    kpts: np.ndarray, areas: np.ndarray, sigmas: np.ndarray
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``f(i, idx)`` -> float32 OKS of pose i against poses idx (precomputed for small N)."""
    if len(kpts) <= _MATRIX_MAX:
        matrix = _oks_matrix(kpts, areas, sigmas)
        return lambda i, idx: matrix[i, idx]
    return lambda i, idx: oks_iou(kpts[i], kpts[idx], areas[i], areas[idx], sigmas)


def _check_inputs(
    keypoints: np.ndarray, scores: np.ndarray, areas: np.ndarray, sigmas: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    kpts = np.asarray(keypoints, dtype=np.float32)
    sc = np.asarray(scores).reshape(-1)
    ar = np.asarray(areas, dtype=np.float32).reshape(-1)
    sig = np.asarray(sigmas, dtype=np.float32).reshape(-1)
    if kpts.ndim != 3 or not (len(kpts) == len(sc) == len(ar)) or kpts.shape[1] != len(sig):
        raise ValueError(
            f"NMS inputs: keypoints {kpts.shape}, scores {sc.shape}, areas {ar.shape}, "
            f"sigmas {sig.shape}; expected (N, K, 2|3), (N,), (N,), (K,)"
        )
    return kpts, sc, ar, sig


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray,
    threshold: float = 0.9,
    tie_order: TieOrder = "stable",
) -> np.ndarray:
    """Greedy OKS non-maximum suppression over the poses of one image.

    The highest-scoring remaining pose is kept and every other pose whose OKS with it exceeds
    ``float32(threshold)`` is dropped (kept when ``oks <= float32(threshold)``).

    Args:
        keypoints: (N, K, 2|3) poses, image pixels.
        scores: (N,) instance scores (from :func:`rescore`); equal scores: highest index first
            (``tie_order="stable"``).
        areas: (N,) pose areas (px^2).
        sigmas: (K,) OKS sigmas.
        threshold: OKS above which a lower-scored pose is suppressed.
        tie_order: order of equal scores, ``"stable"`` or ``"numpy"`` (see
            :func:`_descending_order`).

    Returns:
        int64 indices of the kept poses, in keep order (descending score).
    """
    kpts, sc, ar, sig = _check_inputs(keypoints, scores, areas, sigmas)
    thr = np.float32(threshold)
    order = _descending_order(sc, tie_order)
    pair = _pair_oks(kpts, ar, sig)
    keep: list[int] = []
    while len(order) > 0:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[pair(i, rest) <= thr]
    return np.asarray(keep, dtype=np.int64)


def soft_oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: np.ndarray,
    sigma: float = 0.9,
    max_dets: int = 20,
    tie_order: TieOrder = "stable",
) -> np.ndarray:
    """Soft OKS-NMS: instead of dropping overlapping poses, decay their scores.

    Repeatedly keep the best remaining pose, then multiply every other remaining score by
    ``exp(-oks^2 / sigma)`` (Gaussian decay; OKS float32) and re-sort by the decayed scores.
    Stops after ``max_dets`` poses. As in mmpose's CocoMetric, ``sigma`` is the NMS threshold
    setting and the decayed scores only decide the order: the results keep their own scores.

    Args:
        keypoints: (N, K, 2|3) poses, image pixels.
        scores: (N,) instance scores.
        areas: (N,) pose areas (px^2).
        sigmas: (K,) OKS sigmas.
        sigma: Gaussian decay parameter (> 0).
        max_dets: most poses kept.
        tie_order: order of equal (decayed) scores, ``"stable"`` or ``"numpy"``.

    Returns:
        int64 indices of the kept poses, in keep order.
    """
    kpts, sc, ar, sig = _check_inputs(keypoints, scores, areas, sigmas)
    if sigma <= 0:
        raise ValueError(f"soft_oks_nms: sigma must be > 0, got {sigma}")
    sig32 = np.float32(sigma)
    order = _descending_order(sc, tie_order)
    pair = _pair_oks(kpts, ar, sig)
    current = sc[order]
    keep: list[int] = []
    while len(order) > 0 and len(keep) < max_dets:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        oks = pair(i, rest)
        current = current[1:] * np.exp(-(oks * oks) / sig32)
        resort = _descending_order(current, tie_order)
        order = rest[resort]
        current = current[resort]
    return np.asarray(keep, dtype=np.int64)
