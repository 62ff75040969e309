"""Video: follow people across frames (greedy IoU matching) and smooth their keypoints (One-Euro).

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a low-pass filter whose cutoff
frequency rises with speed: a still keypoint is smoothed hard (its jitter removed), a moving one
lightly (little lag). Speeds are measured in person sizes per second (the longer side of the box),
so the same settings suit people near and far from the camera.
"""

from dataclasses import dataclass, replace

import numpy as np

from .errors import InputError
from .structures import Poses


@dataclass(frozen=True)
class OneEuro:
    """One-Euro filter settings.

    Attributes:
        min_cutoff: cutoff frequency (Hz) for a still keypoint; lower is smoother but lags more.
        beta: cutoff increase (Hz) per unit of speed (person sizes per second); higher follows
            fast motion more closely.
        d_cutoff: cutoff frequency (Hz) of the filter on the speed itself.
    """

    min_cutoff: float = 1.0
    beta: float = 4.0
    d_cutoff: float = 1.0

    def __post_init__(self) -> None:
        if self.min_cutoff <= 0 or self.d_cutoff <= 0 or self.beta < 0:
            raise InputError("One-Euro settings need min_cutoff > 0, d_cutoff > 0 and beta >= 0")


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    """Smoothing factor of an exponential filter with this cutoff (Hz) at time step dt (s)."""
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """One-Euro filter over an array of 2-D points (e.g. (K, 2) keypoints), one cutoff per point."""

    def __init__(self, settings: OneEuro = OneEuro()):
        self.settings = settings
        self._x: np.ndarray | None = None  # last filtered value
        self._dx: np.ndarray | None = None  # last filtered velocity, units / s
        self._t: float | None = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        """The filtered value of ``x`` (..., 2) observed at time ``t`` (seconds).

        Args:
            scale: the size that speeds are divided by (e.g. the person's box size in pixels).
        """
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.astype(np.float32)
        s = self.settings
        dt = t - self._t
        dx = (x - self._x) / dt
        self._dx = self._dx + _alpha(s.d_cutoff, dt) * (dx - self._dx)
        speed = np.linalg.norm(self._dx, axis=-1, keepdims=True) / max(scale, 1e-6)
        a = _alpha(s.min_cutoff + s.beta * speed, dt)
        self._x = self._x + a * (x - self._x)
        self._t = t
        return self._x.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) intersection over union of xyxy boxes a (N, 4) and b (M, 4)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class _Track:
    id: int
    box: np.ndarray
    missed: int
    filter: OneEuroFilter | None


class PoseTracker:
    """Gives each person a track id that persists across frames, optionally smoothing keypoints.

    Each frame's boxes are matched to the tracks' last boxes greedily, highest IoU first, pairs
    below ``iou_threshold`` never matched; an unmatched box starts a new track; a track unmatched
    for more than ``max_missed`` frames ends. Ids count up from 0 and are never reused.

    Args:
        iou_threshold: the least IoU for a box to continue a track.
        max_missed: frames a track survives without a match (occlusions, missed detections).
        smoothing: One-Euro settings to smooth each track's keypoints; None leaves them as is.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_missed: int = 10,
        smoothing: OneEuro | None = None,
    ):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoothing = smoothing
        self._tracks: list[_Track] = []
        self._next_id = 0

    def reset(self) -> None:
        self._tracks, self._next_id = [], 0

    def update(self, poses: Poses, t: float) -> tuple[np.ndarray, Poses]:
        """Track ids (N,) int64 for the people of one frame at time ``t`` (seconds), and the poses
        with smoothed keypoints (the same object when smoothing is off)."""
        n = len(poses)
        iou = box_iou(poses.boxes, np.array([tr.box for tr in self._tracks]).reshape(-1, 4))
        assigned = np.full(n, -1, np.int64)
        used: set[int] = set()
        if iou.size:
            order = np.argsort(-iou, axis=None, kind="stable")
            for flat in order:
                i, j = divmod(int(flat), iou.shape[1])
                if iou[i, j] < self.iou_threshold:
                    break
                if assigned[i] < 0 and j not in used:
                    assigned[i] = j
                    used.add(j)
        ids = np.empty(n, np.int64)
        keypoints = poses.keypoints.copy()
        current: list[_Track] = []
        for i in range(n):
            box = poses.boxes[i].astype(np.float32)
            if assigned[i] >= 0:
                track = self._tracks[assigned[i]]
                track.box, track.missed = box, 0
            else:
                track = _Track(self._next_id, box, 0, None)
                if self.smoothing is not None:
                    track.filter = OneEuroFilter(self.smoothing)
                self._next_id += 1
            ids[i] = track.id
            current.append(track)
            if track.filter is not None:
                size = float(max(box[2] - box[0], box[3] - box[1]))
                keypoints[i] = track.filter(poses.keypoints[i], t, size)
        for j, track in enumerate(self._tracks):
            if j not in used:
                track.missed += 1
                if track.missed <= self.max_missed:
                    current.append(track)
        self._tracks = current
        if self.smoothing is None:
            return ids, poses
        return ids, replace(poses, keypoints=keypoints)
