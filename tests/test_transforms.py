"""Training augmentation replayed with fixed seeds on the COCO sample (§8.1-8.2, 3.5).

Statistical checks use a bound of 5 binomial standard deviations, sqrt(p (1 - p) / n): a correct
implementation fails one of them with probability < 1e-6 (the seeds are fixed anyway, so the
outcome is deterministic); a wrong probability (e.g. 0.5 for 0.6 or 0.3) is far outside.
"""

from fractions import Fraction

import numpy as np
import pytest
from conftest import ANN_FILE, COCO

from nextpose.config import AugmentConfig, Config
from nextpose.data import transforms
from nextpose.data.coco import CocoKeypoints
from nextpose.data.images import read_image
from nextpose.data.transforms import (
    PoseSample,
    TrainTransform,
    flip_sample,
    random_box_transform,
    random_flip,
    random_half_body,
    topdown_affine,
    transform_points,
    truncated_normal,
)
from nextpose.geometry import box_to_center_scale, crop, fix_aspect_ratio, image_to_crop_matrix
from nextpose.keypoints import COCO_KEYPOINTS, KeypointSet

INPUT = (192, 256)
COCO_FLIP = np.array(COCO_KEYPOINTS.flip_indices)
UPPER, LOWER = list(COCO_KEYPOINTS.upper_body), list(COCO_KEYPOINTS.lower_body)


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    return abs(hits / n - p) <= 5 * np.sqrt(p * (1 - p) / n)


@pytest.fixture(scope="module")
def instances():
    return CocoKeypoints(ANN_FILE).ground_truth_instances()


@pytest.fixture(scope="module")
def person(instances):
    """Instance 442619 (image 785, 640x425): all 17 keypoints visible, 11 upper + 6 lower."""
    inst = instances[0]
    assert inst.id == 442619 and inst.visible.sum() == 17
    return inst


def _sample(inst, image=None) -> PoseSample:
    center, scale = box_to_center_scale(inst.bbox[None])
    if image is None:
        image = np.zeros((1, 1, 3), np.uint8)  # geometry-only steps do not look at pixels
    return PoseSample(image, center[0], scale[0], inst.keypoints.copy(), inst.visible.copy())


def _round32(q: Fraction) -> np.float32:
    """The float32 nearest to the exact rational ``q`` (ties to even)."""
    best = np.float32(float(q))
    for c in (np.nextafter(best, np.float32(-np.inf)), np.nextafter(best, np.float32(np.inf))):
        dc, db = abs(Fraction(float(c)) - q), abs(Fraction(float(best)) - q)
        if dc < db or (dc == db and int(np.array(c).view(np.uint32)) % 2 == 0):
            best = c
    return best


def _fma32(a, b, c) -> np.float32:
    return _round32(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


# --- flip ------------------------------------------------------------------------------------


def test_flip_mirrors_image_and_swaps_left_right(person):
    image = read_image(COCO / person.image_file)
    s = _sample(person, image)
    f = flip_sample(s, COCO_KEYPOINTS.flip_indices)
    w = np.float32(image.shape[1])
    np.testing.assert_array_equal(f.image, image[:, ::-1])
    np.testing.assert_array_equal(f.keypoints[:, 0], (w - 1) - s.keypoints[COCO_FLIP, 0])
    np.testing.assert_array_equal(f.keypoints[:, 1], s.keypoints[COCO_FLIP, 1])
    np.testing.assert_array_equal(f.visible, s.visible[COCO_FLIP])
    assert f.keypoints[9, 0] == (w - 1) - s.keypoints[10, 0]  # left wrist <- mirrored right wrist
    assert f.center[0] == (w - s.center[0]) - 1 and f.center[1] == s.center[1]
    np.testing.assert_array_equal(f.scale, s.scale)
    assert f.flipped and not s.flipped
    assert s.image is image  # the input is untouched


def test_flip_rounds_centre_and_keypoints_in_their_own_orders():
    # Width 1025, x = 4e-5: (W - x) - 1 = 1024 exactly, (W - 1) - x = 1023.99994 in float32.
    x = np.float32(4e-5)
    s = PoseSample(
        image=np.zeros((2, 1025, 3), np.uint8),
        center=np.array([x, 1], np.float32),
        scale=np.array([10, 10], np.float32),
        keypoints=np.array([[x, 1]], np.float32),
        visible=np.ones(1, np.float32),
    )
    f = flip_sample(s, [0])
    assert f.center[0] == np.float32(1024.0)
    assert f.keypoints[0, 0] == np.float32(1024.0) - x == np.float32(1023.99994)


def test_random_flip_probability_and_single_draw(person):
    s = _sample(person)
    kps = COCO_KEYPOINTS
    for prob, expect in ((0.0, 0), (1.0, 300)):
        aug = AugmentConfig(flip_prob=prob)
        rng = np.random.default_rng(1)
        assert sum(random_flip(s, rng, aug, kps).flipped for _ in range(300)) == expect
    rng = np.random.default_rng(2)
    hits = sum(random_flip(s, rng, AugmentConfig(), kps).flipped for _ in range(2000))
    assert _binomial_ok(hits, 2000, 0.5)
    rng, twin = np.random.default_rng(3), np.random.default_rng(3)
    random_flip(s, rng, AugmentConfig(), kps)
    twin.random()
    assert rng.bit_generator.state == twin.bit_generator.state


# --- half body -------------------------------------------------------------------------------


def _half_box(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = points.astype(np.float32)
    return pts.mean(axis=0), (pts.max(axis=0) - pts.min(axis=0)) * np.float32(1.5)


def test_half_body_replays_choice_centre_and_scale(person):
    s = _sample(person)
    aug = AugmentConfig(half_body_prob=1.0)
    chosen = {"upper": 0, "lower": 0}
    for seed in range(40):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        out = random_half_body(s, rng, aug, COCO_KEYPOINTS)
        twin.random()  # apply?  (always, prob 1)
        upper = twin.random() < 0.7
        assert rng.bit_generator.state == twin.bit_generator.state  # exactly two draws
        center, scale = _half_box(s.keypoints[UPPER if upper else LOWER])
        np.testing.assert_array_equal(out.center, center)
        np.testing.assert_array_equal(out.scale, scale)
        np.testing.assert_array_equal(out.keypoints, s.keypoints)
        chosen["upper" if upper else "lower"] += 1
    assert min(chosen.values()) > 0


def test_half_body_uses_only_visible_keypoints_and_the_half_that_qualifies(person):
    s = _sample(person)
    s.visible[LOWER[2:]] = 0  # 11 upper + 2 lower visible: the lower half does not qualify
    s.keypoints[LOWER[2:]] = 0
    aug = AugmentConfig(half_body_prob=1.0, half_body_upper_prob=0.0)  # would prefer lower
    center, scale = _half_box(s.keypoints[UPPER])
    for seed in range(20):
        out = random_half_body(s, np.random.default_rng(seed), aug, COCO_KEYPOINTS)
        np.testing.assert_array_equal(out.center, center)
        np.testing.assert_array_equal(out.scale, scale)
    s.visible[UPPER[9:]] = 0  # now 9 upper visible: mean and extent over those only
    center, scale = _half_box(s.keypoints[UPPER[:9]])
    out = random_half_body(s, np.random.default_rng(0), aug, COCO_KEYPOINTS)
    np.testing.assert_array_equal(out.center, center)
    np.testing.assert_array_equal(out.scale, scale)


def test_half_body_needs_enough_visible_keypoints_and_then_draws_nothing(person):
    s = _sample(person)
    s.visible[8:] = 0  # 8 visible < 9
    rng, twin = np.random.default_rng(0), np.random.default_rng(0)
    out = random_half_body(s, rng, AugmentConfig(half_body_prob=1.0), COCO_KEYPOINTS)
    assert out is s
    assert rng.bit_generator.state == twin.bit_generator.state
    s.visible[:] = 1  # 17 visible, but the configured minimum is higher
    out = random_half_body(
        s, rng, AugmentConfig(half_body_prob=1.0, half_body_min_keypoints=18), COCO_KEYPOINTS
    )
    assert out is s


def test_half_body_with_a_custom_keypoint_set():
    # 20 keypoints: upper 0-4, lower 5-9, 10-19 belong to neither half.
    kps = KeypointSet(
        names=tuple(f"k{i}" for i in range(20)),
        flip_indices=tuple(range(20)),
        sigmas=(0.05,) * 20,
        upper_body=tuple(range(5)),
        lower_body=tuple(range(5, 10)),
    )
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 100, (20, 2)).astype(np.float32)
    aug = AugmentConfig(half_body_prob=1.0, half_body_upper_prob=1.0)  # would prefer upper
    visible = np.zeros(20, np.float32)
    visible[[0, 5, 6, 7, 8, 9, *range(10, 18)]] = 1  # 1 upper, 5 lower, 8 others
    s = PoseSample(np.zeros((1, 1, 3), np.uint8), points[0], points[1], points, visible)
    out = random_half_body(s, rng, aug, kps)
    center, scale = _half_box(points[5:10])
    np.testing.assert_array_equal(out.center, center)
    np.testing.assert_array_equal(out.scale, scale)
    visible[[8, 9, 18, 19]] = [0, 0, 1, 1]  # 1 upper, 3 lower
    out = random_half_body(s, rng, AugmentConfig(half_body_prob=1.0, half_body_min_lower=4), kps)
    assert out is s  # neither half qualifies


def test_half_body_probabilities(person):
    s = _sample(person)
    rng = np.random.default_rng(5)
    upper_center, _ = _half_box(s.keypoints[UPPER])
    applied = upper = 0
    n = 3000
    for _ in range(n):
        out = random_half_body(s, rng, AugmentConfig(), COCO_KEYPOINTS)
        if out is not s:
            applied += 1
            upper += bool(np.array_equal(out.center, upper_center))
    assert _binomial_ok(applied, n, 0.3)
    assert _binomial_ok(upper, applied, 0.7)


# --- box shift / scale / rotation --------------------------------------------------------------


def test_truncated_normal_shape_and_spread():
    t = truncated_normal(np.random.default_rng(0), 20000)
    assert t.dtype == np.float32 and t.shape == (20000,)
    assert np.abs(t).max() <= 1
    # Standard normal truncated to [-1, 1]: sd 0.5396, P(|t| < 0.5) = 0.3829 / 0.6827 = 0.5609
    # (a uniform on [-1, 1] would give sd 0.577 and 0.5).
    assert abs(t.mean()) < 0.02
    assert abs(t.std() - 0.5396) < 0.01
    assert _binomial_ok(int((np.abs(t) < 0.5).sum()), 20000, 0.5609)


def test_box_transform_replays_the_formula(person):
    s = _sample(person)
    aug = AugmentConfig()
    for seed in range(30):
        rng, twin = np.random.default_rng(seed), np.random.default_rng(seed)
        out = random_box_transform(s, rng, aug)
        t = truncated_normal(twin, 4)
        shift = t[:2] * np.float32(0.16) if twin.random() < 0.3 else np.zeros(2, np.float32)
        factor = t[2] * np.float32(0.5) + np.float32(1.0) if twin.random() < 1.0 else 1
        rot = t[3] * np.float32(80.0) if twin.random() < 0.6 else np.float32(0)
        assert rng.bit_generator.state == twin.bit_generator.state
        np.testing.assert_array_equal(out.center, s.center + shift * s.scale)  # current scale
        np.testing.assert_array_equal(out.scale, s.scale * factor)
        assert out.rotation == rot and isinstance(out.rotation, np.float32)


def test_box_transform_ranges_and_probabilities(person):
    s = _sample(person)
    rng = np.random.default_rng(7)
    n = 4000
    outs = [random_box_transform(s, rng, AugmentConfig()) for _ in range(n)]
    rot = np.array([o.rotation for o in outs])
    factor = np.array([o.scale / s.scale for o in outs])
    shift = np.array([(o.center - s.center) / s.scale for o in outs])
    assert np.abs(rot).max() <= 80 and np.abs(rot).max() > 70
    assert _binomial_ok(int((rot != 0).sum()), n, 0.6)
    assert factor.min() >= 0.5 - 1e-6 and factor.max() <= 1.5 + 1e-6
    np.testing.assert_allclose(factor[:, 0], factor[:, 1], rtol=1e-6)  # isotropic
    assert abs(factor.mean() - 1) < 0.02
    assert np.abs(shift).max() <= 0.16 + 1e-6
    assert _binomial_ok(int((np.abs(shift).sum(axis=1) > 0).sum()), n, 0.3)
    # Other settings are honoured.
    aug = AugmentConfig(scale_factor=(0.8, 1.2), rotate_factor=30.0, rotate_prob=1.0,
                        shift_prob=0.0)  # fmt: skip
    outs = [random_box_transform(s, rng, aug) for _ in range(500)]
    rot = np.array([o.rotation for o in outs])
    factor = np.array([o.scale[0] / s.scale[0] for o in outs])
    assert np.all(rot != 0) and np.abs(rot).max() <= 30
    assert factor.min() >= 0.8 - 1e-6 and factor.max() <= 1.2 + 1e-6
    assert all(np.array_equal(o.center, s.center) for o in outs)
    outs = [random_box_transform(s, rng, AugmentConfig(scale_prob=0.0)) for _ in range(50)]
    assert all(np.array_equal(o.scale, s.scale) for o in outs)


# --- crop and keypoint transform ----------------------------------------------------------------


def test_unrotated_keypoints_take_the_diagonal_path(person):
    image = read_image(COCO / person.image_file)
    s = _sample(person, image)
    out = topdown_affine(s, INPUT)
    scale = fix_aspect_ratio(s.scale[None], 0.75)[0]
    np.testing.assert_array_equal(out.scale, scale)
    np.testing.assert_array_equal(out.image, crop(image, s.center, scale, INPUT, np.float32(0)))
    m = image_to_crop_matrix(s.center, scale, np.float32(0), INPUT).astype(np.float32)
    # The solver leaves off-diagonal entries of ~1e-17 here, not exact zeros; below FLT_EPSILON
    # OpenCV ignores them.
    assert abs(m[0, 1]) <= 2**-23 and abs(m[1, 0]) <= 2**-23
    points = np.random.default_rng(0).uniform(-50, 700, (300, 2)).astype(np.float32)
    points[:17] = s.keypoints
    got = transform_points(points, image_to_crop_matrix(s.center, scale, np.float32(0), INPUT))
    np.testing.assert_array_equal(out.keypoints, got[:17])
    fused = [(_fma32(m[0, 0], x, m[0, 2]), _fma32(m[1, 1], y, m[1, 2])) for x, y in points]
    np.testing.assert_array_equal(got, np.array(fused, np.float32))
    # Rounding the product first (no fused multiply-add) gives other bits for some points.
    plain = np.stack([m[0, 0] * points[:, 0] + m[0, 2], m[1, 1] * points[:, 1] + m[1, 2]], 1)
    assert np.any(plain != got)


def test_rotated_keypoints_take_the_general_path(person, monkeypatch):
    s = _sample(person)
    s.rotation = np.float32(-33.7)
    scale = fix_aspect_ratio(s.scale[None], 0.75)[0]
    matrix = image_to_crop_matrix(s.center, scale, s.rotation, INPUT)
    # The crop uses this matrix, built from the float32 angle (float32 sine and cosine; the
    # float64 ones give a matrix differing in the last bits, which only rarely shows).
    angles = []

    def spy(center, scale, rotation, size):
        angles.append(rotation)
        return image_to_crop_matrix(center, scale, rotation, size)

    monkeypatch.setattr(transforms, "image_to_crop_matrix", spy)
    out = topdown_affine(s, INPUT)
    assert angles == [s.rotation] and isinstance(angles[0], np.float32)
    np.testing.assert_array_equal(out.keypoints, transform_points(s.keypoints, matrix))
    m = matrix.astype(np.float32)
    points = np.random.default_rng(1).uniform(-50, 700, (300, 2)).astype(np.float32)
    got = transform_points(points, matrix)
    expected = [
        (
            _round32(Fraction(float(_fma32(m[0, 0], x, m[0, 1] * y))) + Fraction(float(m[0, 2]))),
            _round32(Fraction(float(_fma32(m[1, 0], x, m[1, 1] * y))) + Fraction(float(m[1, 2]))),
        )
        for x, y in points
    ]
    np.testing.assert_array_equal(got, np.array(expected, np.float32))
    direct = (points.astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
    assert np.any(direct != got)  # float64 maths would give other bits
    np.testing.assert_allclose(direct, got, atol=1e-3)


def _dot_image(shape: tuple[int, int], x: float, y: float, sigma: float = 2.0) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = 250 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return np.repeat(np.rint(blob).astype(np.uint8)[..., None], 3, axis=2)


def test_a_dot_at_a_keypoint_lands_at_the_transformed_keypoint(instances):
    """The warped image and the transformed keypoints agree through flip, rotation and scaling."""
    transform = TrainTransform(Config())
    checked = flipped = rotated = 0
    for seed in range(16):
        inst = instances[seed % len(instances)]
        size = (inst.image_size[1], inst.image_size[0])
        k = int(np.flatnonzero(inst.visible)[seed % int(inst.visible.sum())])
        x, y = inst.keypoints[k]
        if not (8 <= x <= size[1] - 9 and 8 <= y <= size[0] - 9):
            continue  # a dot cut by the image border has a shifted centroid
        image = _dot_image(size, x, y)
        out = transform(_sample(inst, image), np.random.default_rng(seed))
        slot = COCO_FLIP[k] if out.flipped else k  # where keypoint k went
        px, py = out.keypoints[slot]
        if not (8 <= px <= INPUT[0] - 9 and 8 <= py <= INPUT[1] - 9):
            continue  # the dot must be well inside the crop for its centroid to be exact
        mass = out.image[..., 0].astype(np.float64)
        yy, xx = np.mgrid[0 : INPUT[1], 0 : INPUT[0]]
        centroid = np.array([(mass * xx).sum(), (mass * yy).sum()]) / mass.sum()
        np.testing.assert_allclose(centroid, [px, py], atol=0.15)
        checked += 1
        flipped += out.flipped
        rotated += out.rotation != 0
    assert checked >= 8 and flipped >= 2 and rotated >= 2


def test_train_transform_is_flip_half_body_box_then_crop(person):
    image = read_image(COCO / person.image_file)
    config = Config()
    aug, kps = config.data.augment, config.keypoints
    for seed in range(5):
        out = TrainTransform(config)(_sample(person, image), np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        s = random_flip(_sample(person, image), rng, aug, kps)
        s = random_half_body(s, rng, aug, kps)
        s = topdown_affine(random_box_transform(s, rng, aug), INPUT)
        for field in ("image", "center", "scale", "keypoints", "visible"):
            np.testing.assert_array_equal(getattr(out, field), getattr(s, field))
        assert out.rotation == s.rotation and out.flipped == s.flipped
        assert out.visible.sum() == person.visible.sum()  # visibility is not changed
