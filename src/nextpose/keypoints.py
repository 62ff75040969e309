"""Keypoint sets: names, left/right mirror partners, OKS sigmas and skeleton (COCO-17 built in)."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeypointSet:
    """What a model's K output channels mean.

    Attributes:
        names: one name per keypoint, in channel order.
        flip_indices: a horizontally mirrored person has keypoint k where the original had
            ``flip_indices[k]`` (left and right swap).
        sigmas: per-keypoint OKS falloff (COCO keypoint evaluation).
        skeleton: index pairs drawn as limbs.
        upper_body, lower_body: keypoint indices used by half-body augmentation.
    """

    names: tuple[str, ...]
    flip_indices: tuple[int, ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...] = ()
    upper_body: tuple[int, ...] = ()
    lower_body: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        k = len(self.names)
        if len(self.flip_indices) != k or len(self.sigmas) != k:
            raise ValueError(
                f"keypoint set: {k} names but {len(self.flip_indices)} flip indices and "
                f"{len(self.sigmas)} sigmas; all three must have one entry per keypoint"
            )
        if sorted(self.flip_indices) != list(range(k)):
            raise ValueError(f"keypoint set: flip_indices {self.flip_indices} is not a permutation")
        for pair in self.skeleton:
            if not all(0 <= i < k for i in pair):
                raise ValueError(f"keypoint set: skeleton link {pair} is out of range for {k}")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def sigmas_array(self) -> np.ndarray:
        """(K,) float32 sigmas: the reference computes (2 sigma)^2 in float32."""
        return np.asarray(self.sigmas, dtype=np.float32)


COCO_KEYPOINTS = KeypointSet(
    names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
        "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_indices=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    sigmas=(
        0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
        0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    ),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
)  # fmt: skip
