"""Property-based tests (hypothesis) of geometry, codec, OKS and NMS invariants (issue 7).

Every test is derandomized (the same examples on every run, so CI is stable) and runs 200
examples unless it says otherwise; the module takes a few seconds.
"""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nextpose.codec import decode_heatmaps, encode_heatmaps
from nextpose.data.transforms import PoseSample, flip_sample
from nextpose.evaluation import oks_iou, oks_nms, soft_oks_nms
from nextpose.geometry import (
    box_to_center_scale,
    crop_to_image,
    fix_aspect_ratio,
    image_to_crop_matrix,
)
from nextpose.keypoints import COCO_KEYPOINTS
from nextpose.model.tta import flip_test

EXAMPLES = 200
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, deadline=None)
SIGMAS = COCO_KEYPOINTS.sigmas_array()
FLIP = list(COCO_KEYPOINTS.flip_indices)
CROP_SIZES = st.sampled_from([(64, 96), (192, 256), (288, 384)])  # (w, h) of the presets
EPS32 = float(np.finfo(np.float32).eps)


def _seeds() -> st.SearchStrategy[np.random.Generator]:
    """A NumPy generator seeded by hypothesis (arrays drawn from it shrink by their seed)."""
    return st.integers(0, 2**32 - 1).map(np.random.default_rng)


# -- geometry ------------------------------------------------------------------------------------


@PROPERTY
@given(
    cx=st.floats(-2000, 6000), cy=st.floats(-2000, 6000), w=st.floats(16, 4000),
    h=st.floats(16, 4000), size=CROP_SIZES, rng=_seeds(),
)  # fmt: skip
def test_crop_to_image_and_back(cx, cy, w, h, size, rng):
    """crop -> image (``crop_to_image``) -> crop (the warp's matrix) returns every point.

    Bound: the image coordinate is rounded once to float32 (relative error eps/2) and the
    matrix's source points are float32 too, so the error in crop pixels is a few float32 ulps
    of ``|centre| + scale`` magnified by the zoom ``crop_w / scale_w``: 4 eps (|c| + s) * zoom.
    """
    center = np.array([cx, cy], np.float32)
    scale = fix_aspect_ratio(np.array([w, h], np.float32), size[0] / size[1])
    points = rng.uniform(-0.5 * size[0], 1.5 * size[0], (17, 2)).astype(np.float32)
    image_points = crop_to_image(points[None], center[None], scale, size)[0]
    m = image_to_crop_matrix(center, scale[0], 0.0, size)
    again = image_points.astype(np.float64) @ m[:, :2].T + m[:, 2]
    zoom = size[0] / scale[0, 0]
    bound = 4 * EPS32 * (np.abs(center).max() + scale.max()) * zoom + 1e-6
    assert np.abs(again - points).max() <= bound


@PROPERTY
@given(
    cx=st.floats(-1000, 3000), cy=st.floats(-1000, 3000), w=st.floats(8, 2000),
    h=st.floats(8, 2000), rotation=st.floats(-180, 180), size=CROP_SIZES,
)  # fmt: skip
def test_the_region_centre_maps_to_the_crop_centre_at_any_rotation(cx, cy, w, h, rotation, size):
    center = np.array([cx, cy], np.float32)
    scale = fix_aspect_ratio(np.array([w, h], np.float32), size[0] / size[1])[0]
    m = image_to_crop_matrix(center, scale, np.float32(rotation), size)
    mapped = m @ [float(cx), float(cy), 1.0]
    zoom = size[0] / scale[0]
    bound = 8 * EPS32 * (np.abs(center).max() + scale.max()) * zoom + 1e-6
    assert np.abs(mapped - [size[0] / 2, size[1] / 2]).max() <= bound
    # A rotation only turns the crop: the zoom is the same in every direction, to the float32
    # rounding of the points the matrix is solved from (coordinates up to |centre| + scale, over
    # a region of the smaller scale: a small box far from the origin rounds most).
    rtol = 8 * EPS32 * (np.abs(center).max() + scale.max()) / scale.min()
    np.testing.assert_allclose(np.linalg.svd(m[:, :2], compute_uv=False), zoom, rtol=rtol)


@PROPERTY
@given(
    box=st.tuples(*[st.floats(-1000, 1000)] * 2, *[st.floats(0, 2000)] * 2),
    aspect=st.sampled_from([0.75, 0.5, 1.0, 4 / 3]),
)  # fmt: skip
def test_aspect_fix_grows_to_the_aspect_and_keeps_the_centre(box, aspect):
    x, y, w, h = box
    center, scale = box_to_center_scale(np.array([[x, y, x + w, y + h]], np.float32))
    fixed = fix_aspect_ratio(scale, aspect)
    assert (fixed >= scale).all()  # never shrinks: the whole box stays in the crop
    if fixed.min() > 0:
        np.testing.assert_allclose(fixed[0, 0] / fixed[0, 1], aspect, rtol=1e-6)
    np.testing.assert_allclose(center, [[x + w / 2, y + h / 2]], rtol=1e-6, atol=1e-4)


@PROPERTY
@given(width=st.integers(1, 4096), rng=_seeds())
def test_flipping_a_sample_twice_gives_it_back(width, rng):
    """The image comes back bit for bit, keypoint order and visibility exactly, and coordinates
    within one float32 ulp of the image width (``x' = (W - 1) - x`` rounds once per flip)."""
    image = rng.integers(0, 256, (3, width, 3), dtype=np.uint8)
    sample = PoseSample(
        image=image,
        center=rng.uniform(-width, 2 * width, 2).astype(np.float32),
        scale=rng.uniform(1, 3 * width, 2).astype(np.float32),
        keypoints=rng.uniform(-width, 2 * width, (17, 2)).astype(np.float32),
        visible=rng.integers(0, 2, 17).astype(np.float32),
    )
    twice = flip_sample(flip_sample(sample, FLIP), FLIP)
    np.testing.assert_array_equal(twice.image, image)
    np.testing.assert_array_equal(twice.visible, sample.visible)
    ulp = float(np.spacing(np.float32(3 * width)))
    np.testing.assert_allclose(twice.keypoints, sample.keypoints, rtol=0, atol=ulp)
    np.testing.assert_allclose(twice.center, sample.center, rtol=0, atol=2 * ulp)
    assert not twice.flipped and flip_sample(sample, FLIP).flipped


@PROPERTY
@given(h=st.integers(1, 48), w=st.integers(1, 48), rng=_seeds())
def test_flip_test_averages_with_the_swapped_shifted_mirror_pass(h, w, rng):
    """The library's flip test, with a network that returns its input: the mirrored pass comes
    back un-mirrored, left/right channels swapped and shifted one column right (first column
    kept), and is averaged with the plain pass (§6.1); joint batching changes nothing."""
    heatmaps = torch.from_numpy(rng.standard_normal((2, 17, h, w)).astype(np.float32))
    swapped = heatmaps[:, FLIP]
    shifted = torch.cat([swapped[..., :1], swapped[..., :-1]], dim=3)
    want = (heatmaps + shifted) * 0.5
    for joint in (False, True):
        got = flip_test(lambda x: x.clone(), heatmaps, FLIP, joint=joint)
        assert torch.equal(got, want)


@PROPERTY
@given(size=st.sampled_from([(16, 24), (48, 64)]), rng=_seeds())
def test_decoding_a_mirrored_heatmap_mirrors_the_keypoint(size, rng):
    w, h = size
    points = np.stack([rng.integers(2, w - 2, 17), rng.integers(0, h, 17)], axis=1)
    heatmaps, _ = encode_heatmaps(points * 4.0, np.ones(17), (4 * w, 4 * h), (w, h), 2.0)
    heatmaps *= rng.uniform(0.1, 1.0, (17, 1, 1)).astype(np.float32)
    found, _ = decode_heatmaps(heatmaps[None])
    mirrored, _ = decode_heatmaps(heatmaps[None, :, :, ::-1].copy())
    np.testing.assert_array_equal(mirrored[0, :, 0], w - 1 - found[0, :, 0])
    np.testing.assert_array_equal(mirrored[0, :, 1], found[0, :, 1])


# -- codec ---------------------------------------------------------------------------------------


@PROPERTY
@given(
    size=st.sampled_from([((64, 96), (16, 24)), ((192, 256), (48, 64)), ((288, 384), (72, 96))]),
    sigma=st.sampled_from([1.0, 2.0, 3.0]),
    rng=_seeds(),
)
def test_encode_then_decode_is_within_half_a_heatmap_pixel(size, sigma, rng):
    """Encoding centres the Gaussian on the nearest heatmap pixel ``mu = trunc(p / s + 0.5)``;
    the Gaussian is symmetric about mu, so decoding finds mu with no quarter-pixel step.
    Hence |decoded * stride - p| <= stride / 2 for every keypoint whose mu lies on the map
    (p in [-stride/2, (W - 1/2) stride)), plus float32 rounding of p / stride."""
    (iw, ih), (w, h) = size
    stride = iw / w
    keypoints = np.stack(
        [rng.uniform(-0.5, w - 0.5, 17) * stride, rng.uniform(-0.5, h - 0.5, 17) * stride], axis=1
    ).astype(np.float32)
    heatmaps, weights = encode_heatmaps(keypoints, np.ones(17), (iw, ih), (w, h), sigma)
    assert (weights == 1).all()
    locations, scores = decode_heatmaps(heatmaps[None])
    np.testing.assert_array_equal(scores, 1.0)  # the peak is exactly 1
    error = np.abs(locations[0] * stride - keypoints)
    assert error.max() <= stride / 2 + 1e-4


@PROPERTY
@given(size=st.sampled_from([(16, 24), (48, 64)]), rng=_seeds())
def test_decoded_keypoints_are_the_maxima_and_stay_on_the_map(size, rng):
    w, h = size
    heatmaps = rng.standard_normal((3, 17, h, w)).astype(np.float32)
    locations, scores = decode_heatmaps(heatmaps)
    np.testing.assert_array_equal(scores, heatmaps.max(axis=(2, 3)))
    positive = scores > 0
    assert (locations[positive] >= -0.25).all()
    assert (locations[positive][:, 0] <= w - 1 + 0.25).all()
    assert (locations[positive][:, 1] <= h - 1 + 0.25).all()
    assert (locations[~positive] == -1).all()


# -- OKS -----------------------------------------------------------------------------------------


def _pose(rng: np.random.Generator, spread: float = 100.0) -> np.ndarray:
    return (rng.uniform(0, 500, 2) + rng.standard_normal((17, 2)) * spread).astype(np.float32)


@PROPERTY
@given(rng=_seeds(), area=st.floats(1, 1e6), noise=st.floats(0, 200))
def test_oks_of_identical_poses_is_one_and_is_in_zero_one(rng, area, noise):
    pose = _pose(rng)
    others = np.stack([pose, pose + (rng.standard_normal((17, 2)) * noise).astype(np.float32)])
    oks = oks_iou(pose, others, area, np.array([area, area * 2], np.float32), SIGMAS)
    assert oks[0] == 1.0
    assert (oks >= 0).all() and (oks <= 1).all()


@PROPERTY
@given(rng=_seeds(), a1=st.floats(1, 1e5), a2=st.floats(1, 1e5))
def test_oks_is_symmetric(rng, a1, a2):
    """The distances and the mean area are the same both ways round: equal bits."""
    p, q = _pose(rng), _pose(rng)
    ab = oks_iou(p, q[None], a1, np.array([a2], np.float32), SIGMAS)
    ba = oks_iou(q, p[None], a2, np.array([a1], np.float32), SIGMAS)
    assert ab[0] == ba[0]


@PROPERTY
@given(rng=_seeds(), area=st.floats(100, 1e5), shift=st.floats(-1000, 1000))
def test_oks_falls_with_distance_and_ignores_translation(rng, area, shift):
    pose = _pose(rng)
    step = (rng.standard_normal((17, 2)) * 5).astype(np.float32)
    farther = np.stack([pose + step, pose + 2 * step, pose + 4 * step])
    areas = np.full(3, area, np.float32)
    oks = oks_iou(pose, farther, area, areas, SIGMAS)
    assert oks[0] >= oks[1] >= oks[2]
    moved = oks_iou(pose + np.float32(shift), farther + np.float32(shift), area, areas, SIGMAS)
    np.testing.assert_allclose(moved, oks, atol=1e-4)  # float32 rounding of the shifted points


# -- NMS -----------------------------------------------------------------------------------------


@st.composite
def _crowds(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Up to 12 poses around a few people (so some overlap), distinct scores, positive areas."""
    rng = draw(_seeds())
    n = draw(st.integers(1, 12))
    people = np.stack([_pose(rng, 40) for _ in range(draw(st.integers(1, 4)))])
    noise = draw(st.sampled_from([0.5, 3.0, 15.0]))
    kpts = people[rng.integers(0, len(people), n)] + rng.standard_normal((n, 17, 2)) * noise
    scores = rng.permutation(n) / n + rng.uniform(0, 0.5 / n)  # distinct
    areas = rng.uniform(2000, 40000, n)
    return kpts.astype(np.float32), scores, areas.astype(np.float32)


@PROPERTY
@given(crowd=_crowds(), threshold=st.sampled_from([0.5, 0.7, 0.9]))
def test_oks_nms_invariants(crowd, threshold):
    kpts, scores, areas = crowd
    keep = oks_nms(kpts, scores, areas, SIGMAS, threshold)
    n = len(scores)
    assert len(set(keep.tolist())) == len(keep) and set(keep.tolist()) <= set(range(n))
    assert keep[0] == np.argmax(scores)  # the best pose is always kept, first
    assert (np.diff(scores[keep]) < 0).all()  # in descending score order
    # Kept poses do not suppress each other ...
    for i, a in enumerate(keep):
        others = kpts[keep[i + 1 :]]
        oks = oks_iou(kpts[a], others, areas[a], areas[keep[i + 1 :]], SIGMAS)
        assert (oks <= np.float32(threshold)).all()
    # ... and each dropped pose overlaps a kept pose of higher score.
    for d in sorted(set(range(n)) - set(keep.tolist())):
        better = keep[scores[keep] > scores[d]]
        oks = oks_iou(kpts[d], kpts[better], areas[d], areas[better], SIGMAS)
        assert (oks > np.float32(threshold)).any()
    # Idempotent: NMS of the kept poses keeps them all.
    again = oks_nms(kpts[keep], scores[keep], areas[keep], SIGMAS, threshold)
    np.testing.assert_array_equal(keep[again], keep)


@PROPERTY
@given(crowd=_crowds(), seed=st.integers(0, 2**16))
def test_oks_nms_does_not_depend_on_the_input_order(crowd, seed):
    kpts, scores, areas = crowd
    order = np.random.default_rng(seed).permutation(len(scores))
    keep = oks_nms(kpts, scores, areas, SIGMAS)
    shuffled = oks_nms(kpts[order], scores[order], areas[order], SIGMAS)
    np.testing.assert_array_equal(order[shuffled], keep)


@PROPERTY
@given(crowd=_crowds(), max_dets=st.integers(1, 20), seed=st.integers(0, 2**16))
def test_soft_oks_nms_invariants(crowd, max_dets, seed):
    kpts, scores, areas = crowd
    keep = soft_oks_nms(kpts, scores, areas, SIGMAS, max_dets=max_dets)
    assert len(keep) == min(len(scores), max_dets)  # soft: nothing dropped below the cap
    assert len(set(keep.tolist())) == len(keep) and keep[0] == np.argmax(scores)
    order = np.random.default_rng(seed).permutation(len(scores))
    shuffled = soft_oks_nms(kpts[order], scores[order], areas[order], SIGMAS, max_dets=max_dets)
    np.testing.assert_array_equal(order[shuffled], keep)
