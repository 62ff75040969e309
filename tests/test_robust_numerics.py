"""Numerical edge cases (issue 7): boxes of a few pixels, keypoints on the crop border,
all-negative and flat heatmaps, zero areas. Nothing may crash or produce NaN/inf."""

import numpy as np
import pytest
import torch
from conftest import IMAGES

import nextpose
from nextpose.codec import decode_heatmaps, encode_heatmaps
from nextpose.config import Config
from nextpose.data.transforms import PoseSample, TrainTransform
from nextpose.evaluation import oks_iou, oks_nms, rescore, soft_oks_nms
from nextpose.evaluation.coco_eval import build_results, predictions_from_arrays
from nextpose.geometry import crop, crop_region, crop_to_image
from nextpose.keypoints import COCO_KEYPOINTS
from nextpose.training.loss import KeypointMSELoss

SIGMAS = COCO_KEYPOINTS.sigmas_array()
INPUT, HEATMAP = (64, 96), (16, 24)  # (w, h) of the tiny preset


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return nextpose.load(tiny_checkpoint)


def _finite(*arrays) -> bool:
    return all(np.isfinite(np.asarray(a)).all() for a in arrays)


# -- boxes of a few pixels -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "box", [[100, 80, 100, 80], [100, 80, 101, 81], [100, 80, 102, 83], [0, 0, 0.5, 3]]
)
def test_boxes_of_a_few_pixels(estimator, box):
    image = nextpose.read_image(IMAGES[0])
    for flip in (True, False):
        poses = estimator.predict(image, [box], flip=flip)
        assert _finite(poses.keypoints, poses.scores, poses.centers, poses.scales)
        # Everything stays within the (tiny) crop region around the box.
        lo = poses.centers[0] - poses.scales[0] / 2 - 1
        hi = poses.centers[0] + poses.scales[0] / 2 + 1
        assert (poses.keypoints[0] >= lo).all() and (poses.keypoints[0] <= hi).all()


def test_image_of_one_pixel(estimator):
    poses = estimator.predict(np.full((1, 1, 3), 200, np.uint8))  # whole-image box [0, 0, 1, 1]
    assert poses.keypoints.shape == (1, 17, 2) and _finite(poses.keypoints, poses.scores)
    np.testing.assert_array_equal(poses.boxes, [[0, 0, 1, 1]])
    lo = poses.centers[0] - poses.scales[0] / 2
    hi = poses.centers[0] + poses.scales[0] / 2
    found = poses.scores[0] > 0
    assert (poses.keypoints[0][found] >= lo).all() and (poses.keypoints[0][found] <= hi).all()
    # A heatmap without a positive value puts its keypoint at heatmap location (-1, -1) (spec
    # §6.2, §6.5), one heatmap pixel before the region's corner.
    np.testing.assert_allclose(
        poses.keypoints[0][~found],
        np.broadcast_to(lo - poses.scales[0] / HEATMAP, (int((~found).sum()), 2)),
        rtol=1e-6,
    )


def test_crop_of_a_zero_size_region_is_finite():
    image = np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)
    center, scale = crop_region(np.array([[10, 10, 10, 10]], np.float32), INPUT)
    assert (scale == 0).all()
    out = crop(image, center[0], scale[0], INPUT)
    assert out.shape == (96, 64, 3)
    back = crop_to_image(np.full((1, 3, 2), 30.0), center, scale, INPUT)
    assert _finite(back) and (back == 10).all()  # a point region: everything maps onto it


def test_huge_box_is_finite(estimator):
    poses = estimator.predict(np.zeros((40, 40, 3), np.uint8), [[-1e6, -1e6, 1e6, 1e6]])
    assert _finite(poses.keypoints, poses.scores)


# -- keypoints on the crop border ----------------------------------------------------------------


def test_keypoints_on_the_crop_border_encode_without_nan():
    w, h = INPUT
    edge = np.array(
        [[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1], [w, h], [-0.5, 10], [w - 0.5, 10],
         [-1.5, -1.5], [w + 6, h / 2], [-8, h / 2], [w / 2, -7.9], [w / 2, h + 7.9]],
        np.float32,
    )  # fmt: skip
    heatmaps, weights = encode_heatmaps(edge, np.ones(len(edge)), INPUT, HEATMAP, 2.0)
    assert _finite(heatmaps, weights)
    assert heatmaps.min() >= 0 and heatmaps.max() <= 1
    assert set(np.unique(weights)) <= {0.0, 1.0}
    inside = (edge >= 0).all(axis=1) & (edge[:, 0] <= w - 1) & (edge[:, 1] <= h - 1)
    for i in np.flatnonzero(inside):  # peak on the border or one pixel past it
        assert weights[i] == 1 and heatmaps[i].max() >= np.exp(-2 / (2 * 2.0**2)) - 1e-6
    locations, _ = decode_heatmaps(heatmaps[None])
    for i in np.flatnonzero(inside):
        stride = np.array(INPUT) / np.array(HEATMAP)
        assert np.abs(locations[0, i] * stride - edge[i]).max() <= stride.max()


def test_training_sample_with_keypoints_on_the_image_border():
    config = Config()
    image = np.zeros((120, 80, 3), np.uint8)
    keypoints = np.zeros((17, 2), np.float32)
    keypoints[::2] = [79, 119]  # bottom-right pixel
    sample = PoseSample(image, np.array([40, 60], np.float32), np.array([100, 150], np.float32),
                        keypoints, np.ones(17, np.float32))  # fmt: skip
    transform = TrainTransform(config)
    for seed in range(20):  # flips, half-body crops, rotations
        out = transform(sample, np.random.default_rng(seed))
        heatmaps, weights = encode_heatmaps(
            out.keypoints, out.visible, config.model.input_size, config.model.heatmap_size, 2.0
        )
        assert _finite(out.keypoints, out.center, out.scale, heatmaps, weights)


# -- heatmaps that peak nowhere ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fill", ["negative", "zero", "constant", "tiny", "one_pixel", "two_pixels"]
)
def test_degenerate_heatmaps_decode_to_finite_keypoints(estimator, fill):
    rng = np.random.default_rng(0)
    shape = {"one_pixel": (2, 17, 1, 1), "two_pixels": (2, 17, 2, 2)}.get(fill, (2, 17, 24, 16))
    heatmaps = {
        "negative": -rng.random(shape, np.float32) - 1e-3,
        "zero": np.zeros(shape, np.float32),
        "constant": np.full(shape, 0.25, np.float32),
        "tiny": rng.random(shape, np.float32) * 1e-30,
    }.get(fill, rng.standard_normal(shape).astype(np.float32))
    locations, scores = decode_heatmaps(heatmaps)
    assert _finite(locations, scores)
    if fill in ("negative", "zero"):
        assert (locations == -1).all()  # no peak: the reference's (-1, -1)
    centers = np.array([[100, 100], [50, 60]], np.float32)
    scales = np.array([[80, 120], [0, 0]], np.float32)
    if shape[2:] != (24, 16):  # not this model's heatmaps: refused, not decoded at a guess
        with pytest.raises(nextpose.InputError, match=r"heatmaps of shape \(2, 17, \d, \d\)"):
            estimator.decode(heatmaps, centers, scales)
        kpt_scores = scores
    else:
        keypoints, kpt_scores = estimator.decode(heatmaps, centers, scales)
        assert _finite(keypoints, kpt_scores)
    instance = rescore(kpt_scores, np.ones(2, np.float32))
    assert _finite(instance) and (instance >= 0).all()
    if fill in ("negative", "zero", "tiny"):  # no keypoint above 0.2: rescored to 0
        assert (instance == 0).all()


def test_all_negative_network_output_gives_finite_results(tiny_checkpoint):
    estimator = nextpose.load(tiny_checkpoint)
    final = estimator.model.head.final_layer  # every heatmap pixel = its channel's bias < 0
    with torch.no_grad():
        final.weight.zero_()
        final.bias.copy_(-torch.linspace(0.1, 2.0, 17))
    poses = estimator.predict(nextpose.read_image(IMAGES[0]), [[100, 50, 300, 400]])
    assert _finite(poses.keypoints, poses.scores) and (poses.scores < 0).all()
    records = poses.to_coco(image_id=785)
    assert records[0]["score"] == 0.0  # no keypoint above 0.2: rescored to 0, not NaN


# -- OKS, NMS and the loss at the extremes -------------------------------------------------------


def test_oks_with_zero_areas_and_far_points_is_finite():
    pose = np.random.default_rng(1).random((17, 2)).astype(np.float32) * 100
    others = np.stack([pose, pose + 1e6, pose + 1])
    for area in (0.0, 1e-12, 1e12):
        oks = oks_iou(pose, others, area, np.full(3, area, np.float32), SIGMAS)
        assert _finite(oks) and ((oks >= 0) & (oks <= 1)).all()
        assert oks[0] == pytest.approx(1.0, abs=1e-6)


def test_nms_with_zero_areas_identical_poses_and_equal_scores():
    pose = np.random.default_rng(2).random((17, 2)).astype(np.float32)
    kpts = np.stack([pose] * 4)
    scores = np.zeros(4)
    areas = np.zeros(4, np.float32)
    assert len(oks_nms(kpts, scores, areas, SIGMAS)) == 1
    assert len(soft_oks_nms(kpts, scores, areas, SIGMAS)) == 4


def test_results_of_degenerate_predictions_are_finite():
    n = 3
    preds = predictions_from_arrays(
        ids=range(n), img_ids=[1] * n, keypoints=np.zeros((n, 17, 2)),
        keypoint_scores=-np.ones((n, 17)), bboxes=np.zeros((n, 4)), bbox_scores=np.zeros(n),
        scales=np.zeros((n, 2)),
    )  # fmt: skip
    for nms in ("oks", "soft_oks", "none"):
        for r in build_results(preds, nms=nms):
            assert _finite(r["keypoints"], r["score"], r["bbox"])


def test_loss_with_all_weights_zero():
    pred = torch.randn(2, 17, 24, 16, requires_grad=True)
    loss = KeypointMSELoss()(pred, torch.zeros_like(pred), torch.zeros(2, 17))
    loss.backward()
    assert loss.item() == 0 and torch.isfinite(pred.grad).all()
