"""Training augmentation: random flip, half-body crop, box shift/scale/rotation, then the crop.

Each step works on a :class:`PoseSample` (one person in one image) and returns a new one; the
input is never modified. Randomness always comes from an explicit ``np.random.Generator``, drawn
in the reference's order (§8.1): flip (1 draw), half body (0-2 draws), box transform (4
truncated normals, then 3 uniforms). The float32 arithmetic follows §8.2 and 3.2-3.5, so the
only departure from the reference is the random stream itself (NumPy's ``Generator`` instead of
the global ``RandomState`` + scipy).
"""

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..config import AugmentConfig, Config
from ..geometry import fix_aspect_ratio, image_to_crop_matrix, warp_to_crop
from ..keypoints import KeypointSet
from ..opencv import cv2


@dataclass
class PoseSample:
    """One person in one image, as the augmentation steps see it.

    Attributes:
        image: (H, W, 3) uint8 RGB, the whole picture (the crop after :func:`topdown_affine`).
        center: (2,) float32, centre of the region to crop, image pixels.
        scale: (2,) float32, (w, h) of that region, image pixels (not yet aspect-fixed).
        keypoints: (K, 2) float32, image pixels (crop pixels after :func:`topdown_affine`).
        visible: (K,) float32, 1 for labelled keypoints, 0 otherwise.
        rotation: float32 degrees; the crop shows the region rotated by this angle.
        flipped: whether the image was mirrored.
    """

    image: np.ndarray
    center: np.ndarray
    scale: np.ndarray
    keypoints: np.ndarray
    visible: np.ndarray
    rotation: np.float32 = dataclasses.field(default_factory=lambda: np.float32(0.0))
    flipped: bool = False


def truncated_normal(rng: np.random.Generator, size: int, bound: float = 1.0) -> np.ndarray:
    """``size`` standard-normal draws restricted to [-bound, bound], float32.

    Rejection sampling: draws outside the interval are thrown away and drawn again, so the
    accepted values follow the truncated distribution exactly.
    """
    out = np.empty(0, np.float64)
    while out.size < size:
        z = rng.standard_normal(size - out.size)
        out = np.concatenate([out, z[np.abs(z) <= bound]])
    return out.astype(np.float32)


def flip_sample(sample: PoseSample, flip_indices: Sequence[int]) -> PoseSample:
    """Mirror a sample horizontally (§8.2, RandomFlip).

    The image columns are reversed; keypoints are first reordered by ``flip_indices`` (left and
    right swap), then ``x' = (W - 1) - x``; the centre becomes ``x' = (W - x) - 1``. Both are
    float32 and the two evaluation orders are the reference's (they differ in the last bit for
    some values). The scale does not change.
    """
    width = sample.image.shape[1]
    order = np.asarray(flip_indices, dtype=np.intp)
    keypoints = sample.keypoints[order].astype(np.float32)
    keypoints[:, 0] = np.float32(width - 1) - keypoints[:, 0]
    center = sample.center.astype(np.float32)
    center[0] = (np.float32(width) - center[0]) - np.float32(1)
    return dataclasses.replace(
        sample,
        image=cv2.flip(np.ascontiguousarray(sample.image), 1),  # = image[:, ::-1], 40x faster
        center=center,
        keypoints=keypoints,
        visible=sample.visible[order].astype(np.float32),
        flipped=not sample.flipped,
    )


def random_flip(
    sample: PoseSample,
    rng: np.random.Generator,
    augment: AugmentConfig,
    keypoint_set: KeypointSet,
) -> PoseSample:
    """Flip with probability ``augment.flip_prob`` (one uniform draw)."""
    if rng.random() < augment.flip_prob:
        return flip_sample(sample, keypoint_set.flip_indices)
    return sample


def half_body_indices(
    visible: np.ndarray,
    rng: np.random.Generator,
    augment: AugmentConfig,
    keypoint_set: KeypointSet,
) -> np.ndarray | None:
    """Which keypoints a half-body crop frames, or None for no half-body crop (§8.2).

    No draw when fewer than ``half_body_min_keypoints`` are visible; otherwise one draw decides
    whether to apply (probability ``half_body_prob``) and, if applied, a second one whether the
    upper half is preferred (probability ``half_body_upper_prob``). A half needs at least
    ``half_body_min_upper`` / ``half_body_min_lower`` visible keypoints; when only one half
    qualifies it is used whatever the preference.
    """
    if visible.sum() < augment.half_body_min_keypoints:
        return None
    if rng.random() > augment.half_body_prob:
        return None
    upper = np.array([i for i in keypoint_set.upper_body if visible[i] > 0], dtype=np.intp)
    lower = np.array([i for i in keypoint_set.lower_body if visible[i] > 0], dtype=np.intp)
    prefer_upper = rng.random() < augment.half_body_upper_prob
    upper_ok = len(upper) >= augment.half_body_min_upper
    lower_ok = len(lower) >= augment.half_body_min_lower
    if not upper_ok and not lower_ok:
        return None
    if not lower_ok:
        return upper
    if not upper_ok:
        return lower
    return upper if prefer_upper else lower


def random_half_body(
    sample: PoseSample,
    rng: np.random.Generator,
    augment: AugmentConfig,
    keypoint_set: KeypointSet,
) -> PoseSample:
    """Sometimes replace the region by one framing only the upper or lower body.

    The new centre is the float32 mean of the chosen keypoints, the new scale their extent times
    ``half_body_padding`` (no box padding, no aspect fix here; a zero extent is possible and is
    rescued by the aspect fix in :func:`topdown_affine`).
    """
    chosen = half_body_indices(sample.visible, rng, augment, keypoint_set)
    if chosen is None:
        return sample
    points = sample.keypoints[chosen].astype(np.float32)
    center = points.mean(axis=0).astype(np.float32)
    extent = points.max(axis=0) - points.min(axis=0)
    scale = (extent * np.float32(augment.half_body_padding)).astype(np.float32)
    return dataclasses.replace(sample, center=center, scale=scale)


def random_box_transform(
    sample: PoseSample, rng: np.random.Generator, augment: AugmentConfig
) -> PoseSample:
    """Randomly shift, scale and rotate the region (§8.2, RandomBBoxTransform).

    With ``t`` four truncated standard normals in [-1, 1] (float32):
    shift ``t[:2] * shift_factor`` (a fraction of the current scale) with prob ``shift_prob``;
    scale factor ``t[2] * (hi - lo) / 2 + (hi + lo) / 2`` with prob ``scale_prob``;
    rotation ``t[3] * rotate_factor`` degrees with prob ``rotate_prob``.
    """
    t = truncated_normal(rng, 4)
    offset = t[:2] * np.float32(augment.shift_factor)
    if not rng.random() < augment.shift_prob:
        offset = np.zeros(2, np.float32)
    lo, hi = augment.scale_factor
    factor = t[2] * np.float32((hi - lo) * 0.5) + np.float32((hi + lo) * 0.5)
    if not rng.random() < augment.scale_prob:
        factor = np.float32(1.0)
    rotation = t[3] * np.float32(augment.rotate_factor)
    if not rng.random() < augment.rotate_prob:
        rotation = np.float32(0.0)
    scale = sample.scale.astype(np.float32)
    return dataclasses.replace(
        sample,
        center=(sample.center + offset * scale).astype(np.float32),
        scale=(scale * factor).astype(np.float32),
        rotation=np.float32(rotation),
    )


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 float64 affine ``matrix`` to (K, 2) float32 points with ``cv2.transform``.

    OpenCV rounds the matrix to float32 and, when both off-diagonal entries are within FLT_EPSILON
    of zero (every unrotated crop), ignores them (§3.5); calling it keeps those exact bits.
    """
    points = np.ascontiguousarray(points, dtype=np.float32).reshape(1, -1, 2)
    return cv2.transform(points, np.asarray(matrix, dtype=np.float64))[0]


def topdown_affine(
    sample: PoseSample, input_size: tuple[int, int], source: str = "the image"
) -> PoseSample:
    """Cut the network input out of the image and move the keypoints into crop pixels.

    The scale is first grown to the crop's aspect ratio (§2.2); the image is warped with
    bilinear interpolation and a black border (§3.4) by the image->crop matrix built with the
    float32 rotation (§3.2-3.3). Visibility is left unchanged, even for keypoints that land
    outside the crop. The result's ``image`` is the (h, w, 3) crop, ``keypoints`` are crop
    pixels and ``scale`` is the aspect-fixed scale.
    """
    w_in, h_in = input_size
    scale = fix_aspect_ratio(sample.scale[None], w_in / h_in)[0]
    matrix = image_to_crop_matrix(sample.center, scale, np.float32(sample.rotation), input_size)
    image = warp_to_crop(sample.image, matrix, (w_in, h_in), source)
    return dataclasses.replace(
        sample,
        image=image,
        scale=scale,
        keypoints=transform_points(sample.keypoints, matrix),
    )


class TrainTransform:
    """The whole augmentation chain of a configuration: flip, half body, box transform, crop.

    ``TrainTransform(config)(sample, rng)`` returns the cropped sample (see
    :func:`topdown_affine`); heatmap targets are made from it by ``codec.encode_heatmaps``.
    """

    def __init__(self, config: Config):
        self.augment = config.data.augment
        self.keypoint_set = config.keypoints
        self.input_size = config.model.input_size

    def augment_region(self, sample: PoseSample, rng: np.random.Generator) -> PoseSample:
        """The random steps only (still in image pixels, no crop yet)."""
        sample = random_flip(sample, rng, self.augment, self.keypoint_set)
        sample = random_half_body(sample, rng, self.augment, self.keypoint_set)
        return random_box_transform(sample, rng, self.augment)

    def __call__(
        self, sample: PoseSample, rng: np.random.Generator, source: str = "the image"
    ) -> PoseSample:
        """The augmented crop of ``sample``; ``source`` names the image in errors."""
        return topdown_affine(self.augment_region(sample, rng), self.input_size, source)
