"""Training targets (§8.3), the loss (8.4) and the training dataset's repeatability."""

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO
from torch.utils.data import DataLoader

from nextpose.codec import decode_heatmaps, encode_heatmaps
from nextpose.config import AugmentConfig, Config, DataConfig
from nextpose.data.coco import CocoKeypoints
from nextpose.data.datasets import TrainDataset, collate_train
from nextpose.data.images import read_image
from nextpose.data.transforms import PoseSample, TrainTransform
from nextpose.geometry import box_to_center_scale
from nextpose.training.loss import KeypointMSELoss

SMALL = dict(input_size=(192, 256), heatmap_size=(48, 64), sigma=2.0)
LARGE = dict(input_size=(288, 384), heatmap_size=(72, 96), sigma=3.0)


def _encode(points, visible=None, size=SMALL):
    points = np.asarray(points, np.float32).reshape(-1, 2)
    visible = np.ones(len(points), np.float32) if visible is None else visible
    return encode_heatmaps(points, np.asarray(visible, np.float32), **size)


def _support(channel: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the non-zero part, inclusive."""
    ys, xs = np.nonzero(channel)
    return xs.min(), ys.min(), xs.max(), ys.max()


# --- encoder ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "width"), [(SMALL, 13), (LARGE, 19)])
def test_window_is_6_sigma_plus_1_with_an_exact_float32_gaussian(size, width):
    heatmaps, weights = _encode([[101.0, 150.5]], size=size)  # p = (25.25, 37.625) -> mu (25, 38)
    assert heatmaps.shape == (1, size["heatmap_size"][1], size["heatmap_size"][0])
    assert heatmaps.dtype == np.float32 and weights.dtype == np.float32
    assert weights[0] == 1
    r = width // 2
    assert _support(heatmaps[0]) == (25 - r, 38 - r, 25 + r, 38 + r)
    assert heatmaps[0, 38, 25] == 1  # peak on the integer pixel, no sub-pixel offset
    d = np.arange(-r, r + 1, dtype=np.float32)
    sigma = size["sigma"]
    g = np.exp(-(d[None] ** 2 + d[:, None] ** 2) / np.float32(2 * sigma**2)).astype(np.float32)
    np.testing.assert_array_equal(heatmaps[0, 38 - r : 38 + r + 1, 25 - r : 25 + r + 1], g)


def test_centre_pixel_is_truncated_toward_zero_not_floored():
    heatmaps, weights = _encode([[-5.0, 100.0], [-6.5, 100.0]])
    # p = -1.25: p + 0.5 = -0.75 truncates to 0 (floor would give -1).
    assert heatmaps[0, 25, 0] == 1 and weights[0] == 1
    # p = -1.625: p + 0.5 = -1.125 truncates to -1, off the map; the map keeps the Gaussian's tail.
    assert heatmaps[1].max() == np.float32(np.exp(np.float32(-1 / 8)))
    assert _support(heatmaps[1]) == (0, 19, 5, 31) and weights[1] == 1


def test_window_ending_at_zero_keeps_weight_one_with_an_empty_channel():
    # sigma 2, stride 4: x = -32 -> mu_x = trunc(-7.5) = -7, right = -7 + 6 + 1 = 0 (not < 0).
    heatmaps, weights = _encode([[-32.0, 100.0], [100.0, -32.0], [-36.0, 100.0], [100.0, -36.0]])
    assert not heatmaps[:2].any()
    np.testing.assert_array_equal(weights, [1, 1, 0, 0])  # x = -36: right = -1 -> rejected


def test_window_starting_past_the_last_column_or_row_is_rejected():
    # left = mu - 6 must be < 48 (columns) and top < 64 (rows).
    heatmaps, weights = _encode(
        [[53 * 4.0, 100.0], [54 * 4.0, 100.0], [100.0, 69 * 4.0], [100.0, 70 * 4.0]]
    )
    np.testing.assert_array_equal(weights, [1, 0, 1, 0])
    assert _support(heatmaps[0])[::2] == (47, 47) and _support(heatmaps[2])[1::2] == (63, 63)
    assert not heatmaps[1].any() and not heatmaps[3].any()


def test_unlabelled_keypoints_get_no_target_and_weight_zero():
    heatmaps, weights = _encode([[100.0, 100.0], [50.0, 50.0]], visible=[0.0, 1.0])
    assert not heatmaps[0].any() and heatmaps[1].any()
    np.testing.assert_array_equal(weights, [0, 1])


def test_encode_decode_round_trip():
    rng = np.random.default_rng(0)
    for size in (SMALL, LARGE):
        (w, h), (wh, hh) = size["input_size"], size["heatmap_size"]
        stride = w / wh
        points = np.stack([rng.uniform(0, w - 1, 2000), rng.uniform(0, h - 1, 2000)], 1)
        points = points.astype(np.float32)
        heatmaps, weights = _encode(points, size=size)
        assert weights.all()  # every crop pixel gets a target
        loc, _ = decode_heatmaps(heatmaps[None])
        err = np.abs(loc[0] * stride - points)
        # The peak sits on the nearest heatmap pixel (<= 0.5 px off) and is symmetric, so the
        # quarter step does not move it; only points past the last pixel centre (p > Wh - 0.5)
        # are clipped to the last pixel, <= 1 heatmap px off.
        inside = (points / stride + 0.5 < [wh, hh]).all(axis=1)
        assert err[inside].max() <= 0.5 * stride + 1e-4
        assert err.max() <= 1.0 * stride
        assert (~inside).sum() > 0


# --- out-of-crop keypoints through the pipeline -------------------------------------------


def test_keypoints_outside_the_crop_get_weight_zero_but_stay_visible():
    still = AugmentConfig(
        flip_prob=0, half_body_prob=0, shift_prob=0, scale_factor=(1.0, 1.0), rotate_prob=0
    )
    config = Config(data=DataConfig(augment=still))
    keypoints = np.array([[100, 100], [110, 125], [400, 100], [-300, 100]], np.float32)
    sample = PoseSample(
        image=np.zeros((200, 200, 3), np.uint8),
        center=np.array([100, 100], np.float32),
        scale=np.array([75, 100], np.float32),
        keypoints=keypoints,
        visible=np.ones(4, np.float32),
    )
    out = TrainTransform(config)(sample, np.random.default_rng(0))
    np.testing.assert_allclose(out.keypoints[:2], [[96, 128], [121.6, 192]], atol=1e-4)
    assert out.keypoints[2, 0] > 192 + 24 and out.keypoints[3, 0] < -24
    np.testing.assert_array_equal(out.visible, 1)
    _, weights = encode_heatmaps(out.keypoints, out.visible, **SMALL)
    np.testing.assert_array_equal(weights, [1, 1, 0, 0])


# --- loss ------------------------------------------------------------------------------------


def test_loss_is_the_weighted_mean_over_all_elements():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(2, 3, 4, 5, generator=gen)
    target = torch.rand(2, 3, 4, 5, generator=gen)
    weights = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    loss = KeypointMSELoss()(pred, target, weights)
    kept = ((pred - target) ** 2)[weights.bool()]
    # Zero-weight channels count in the denominator (2*3*4*5 = 120); no 1/2 factor.
    torch.testing.assert_close(loss, kept.sum() / 120)
    assert KeypointMSELoss()(target, target, weights) == 0
    torch.testing.assert_close(KeypointMSELoss(loss_weight=2.0)(pred, target, weights), 2 * loss)
    with pytest.raises(ValueError, match="must be"):
        KeypointMSELoss()(pred, target, weights[:, :2])


# --- dataset ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def instances():
    return CocoKeypoints(ANN_FILE).ground_truth_instances()


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in a)


def test_dataset_items_are_set_by_seed_epoch_and_index(instances):
    config = Config()
    ds = TrainDataset(instances, COCO, config)
    first = [ds[i] for i in range(len(ds))]
    other = TrainDataset(instances, COCO, config)  # another "worker", visiting in reverse order
    assert all(_equal(other[i], first[i]) for i in reversed(range(len(ds))))
    ds.set_epoch(1)
    second = [ds[i] for i in range(len(ds))]
    assert sum(not _equal(a, b) for a, b in zip(first, second, strict=True)) >= len(ds) - 1
    ds.set_epoch(0)
    assert all(_equal(ds[i], first[i]) for i in range(len(ds)))  # resuming at epoch 0
    reseeded = TrainDataset(instances, COCO, Config(data=DataConfig(seed=1)))
    assert not all(_equal(reseeded[i], first[i]) for i in range(len(ds)))


def test_dataset_item_is_the_transform_with_the_documented_generator(instances):
    config = Config()
    ds = TrainDataset(instances, COCO, config)
    ds.set_epoch(3)
    inst = instances[5]
    center, scale = box_to_center_scale(inst.bbox[None], config.data.padding)
    sample = PoseSample(
        read_image(COCO / inst.image_file), center[0], scale[0], inst.keypoints, inst.visible
    )
    out = TrainTransform(config)(sample, np.random.default_rng([config.data.seed, 3, 5]))
    heatmaps, weights = encode_heatmaps(out.keypoints, out.visible, **SMALL)
    item = ds[5]
    np.testing.assert_array_equal(item["image"], out.image)
    np.testing.assert_array_equal(item["heatmaps"], heatmaps)
    np.testing.assert_array_equal(item["weights"], weights)
    assert item["rotation"] == out.rotation and item["flipped"] == out.flipped


def test_collate_and_persistent_workers_match_a_single_process(instances):
    ds = TrainDataset(instances, COCO, Config())
    batch = collate_train([ds[0], ds[1]])
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (2, 256, 192, 3)
    assert batch["heatmaps"].shape == (2, 17, 64, 48) and batch["weights"].shape == (2, 17)
    assert batch["heatmaps"].dtype == batch["weights"].dtype == torch.float32
    assert batch["rotation"].shape == (2,) and batch["flipped"].dtype == torch.bool

    def epochs(workers: int) -> list[dict]:
        data = TrainDataset(instances, COCO, Config())
        loader = DataLoader(data, batch_size=4, num_workers=workers, collate_fn=collate_train,
                            persistent_workers=workers > 0)  # fmt: skip
        out = []
        for epoch in range(2):
            data.set_epoch(epoch)  # must reach the already running workers
            out.extend(loader)
        return out

    single, multi = epochs(0), epochs(2)
    for a, b in zip(single, multi, strict=True):
        assert a.pop("error") == b.pop("error") == [""] * len(a["index"])
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(single[0]["image"], single[3]["image"])  # epoch 0 != epoch 1


def test_unreadable_image_names_the_file_and_adds_nothing_to_the_loss(instances, tmp_path):
    (tmp_path / instances[0].image_file).write_bytes(b"not a jpeg")
    ds = TrainDataset(instances[:1], tmp_path, Config())
    item = ds[0]  # no exception: one bad file never stops a run
    assert instances[0].image_file in item["error"] and "not a readable image" in item["error"]
    assert not item["weights"].any() and not item["heatmaps"].any() and not item["image"].any()
    assert collate_train([item])["error"] == [item["error"]]
