"""Equivalence with the reference (mmpose 1.3.2) on the COCO sample, with the oracle's weights.

Tolerances (from the issues): network inputs 1e-5 absolute; heatmaps 1e-5 relative to their
largest magnitude (the oracle weights make activations ~1e4 on purpose); keypoints 1e-3 image
pixels; scores 1e-5 relative. Measured: inputs bit-equal, heatmaps ~3e-6, keypoints bit-equal.
"""

import json
from itertools import groupby

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE, ORACLE_RUNS, crops_of

import nextpose
from nextpose.evaluation import MMPOSE_METRIC_NAMES, evaluate_predictions, predictions_from_arrays
from nextpose.evaluation.evaluate import predict_instances

pytestmark = pytest.mark.slow  # full-size resnext50: minutes on 2 cores

RUNS = ["gt_flip", "gt_noflip", "det_flip", "det_noflip"]


@pytest.fixture(scope="module")
def estimator(oracle_weights):
    return nextpose.load("resnext50_coco_256x192", oracle_weights)


def _instances(boxes: str):
    coco = nextpose.CocoKeypoints(ANN_FILE)
    if boxes == "gt":
        return coco.ground_truth_instances()
    return coco.detection_instances(DET_FILE)


@pytest.fixture(scope="module")
def evaluated(estimator):
    """Per run: the instances and what the evaluation pipeline (worker processes) predicts."""
    cache = {}

    def get(run: str):
        if run not in cache:
            boxes, flip = run.split("_")
            instances = _instances(boxes)
            cache[run] = (
                instances,
                predict_instances(estimator, instances, COCO, flip=flip == "flip", progress=False),
            )
        return cache[run]

    return get


def _relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("run", RUNS)
def test_keypoints_equal_reference(evaluated, run):
    oracle = np.load(ORACLE_RUNS / f"oracle_{run}.npz")
    instances, pred = evaluated(run)
    assert [i.id for i in instances] == oracle["id"].tolist()
    assert [i.image_id for i in instances] == oracle["img_id"].tolist()
    np.testing.assert_array_equal(np.stack([i.bbox for i in instances]), oracle["bbox_xyxy"])
    np.testing.assert_array_equal([i.bbox_score for i in instances], oracle["bbox_score"])
    np.testing.assert_array_equal(pred.centers, oracle["input_center"])
    np.testing.assert_array_equal(pred.scales, oracle["input_scale"])
    assert np.abs(pred.keypoints - oracle["kpts_img"]).max() <= 1e-3
    relative = np.abs(pred.scores - oracle["kpt_scores"]) / np.abs(oracle["kpt_scores"])
    assert relative.max() <= 1e-5


@pytest.mark.parametrize("run", RUNS)
def test_results_file_and_metrics_equal_reference(evaluated, run, tmp_path):
    instances, pred = evaluated(run)
    predictions = predictions_from_arrays(
        [i.id for i in instances],
        [i.image_id for i in instances],
        pred.keypoints,
        pred.scores,
        np.stack([i.bbox for i in instances]),
        [i.bbox_score for i in instances],
        pred.scales,
        [i.category_id for i in instances],
    )
    metrics = evaluate_predictions(predictions, ANN_FILE, out_dir=tmp_path)
    ours = json.loads((tmp_path / "keypoints.json").read_text())
    ref = json.loads((ORACLE_RUNS / f"results_{run}.keypoints.json").read_text())
    assert len(ours) == len(ref)  # the same instances survive OKS-NMS, in the same order
    for o, r in zip(ours, ref, strict=True):
        assert (o["image_id"], o["category_id"]) == (r["image_id"], r["category_id"])
        np.testing.assert_allclose(o["bbox"], r["bbox"], rtol=0, atol=1e-3)
        kpts_o, kpts_r = np.reshape(o["keypoints"], (17, 3)), np.reshape(r["keypoints"], (17, 3))
        assert np.abs(kpts_o[:, :2] - kpts_r[:, :2]).max() <= 1e-3
        np.testing.assert_allclose(kpts_o[:, 2], kpts_r[:, 2], rtol=1e-5)
        assert o["score"] == pytest.approx(r["score"], rel=1e-5)
    expected = json.loads((ORACLE_RUNS / f"metrics_{run}.json").read_text())
    for name, ref_name in MMPOSE_METRIC_NAMES.items():
        assert metrics[name] == pytest.approx(expected[ref_name], abs=1e-9)


@pytest.mark.parametrize("run", ["gt_flip", "gt_noflip"])
def test_predict_many_equals_reference(estimator, run):
    """The user-facing path: crops of all images batched through one call."""
    oracle = np.load(ORACLE_RUNS / f"oracle_{run}.npz")
    instances = _instances("gt")
    groups = [list(g) for _, g in groupby(instances, key=lambda i: i.image_file)]
    poses = estimator.predict_many(
        [COCO / g[0].image_file for g in groups],
        [np.stack([np.append(i.bbox, i.bbox_score) for i in g]) for g in groups],
        flip=run == "gt_flip",
    )
    keypoints = np.concatenate([p.keypoints for p in poses])
    scores = np.concatenate([p.scores for p in poses])
    assert np.abs(keypoints - oracle["kpts_img"]).max() <= 1e-3
    assert (np.abs(scores - oracle["kpt_scores"]) / np.abs(oracle["kpt_scores"])).max() <= 1e-5
    eager = estimator.with_options(backend="eager").predict_many(
        [COCO / g[0].image_file for g in groups],
        [np.stack([np.append(i.bbox, i.bbox_score) for i in g]) for g in groups],
        flip=run == "gt_flip",
    )  # the reference's kernels: keypoints and scores bit for bit
    np.testing.assert_array_equal(np.concatenate([p.keypoints for p in eager]), oracle["kpts_img"])
    np.testing.assert_array_equal(np.concatenate([p.scores for p in eager]), oracle["kpt_scores"])


@pytest.mark.parametrize("run", RUNS)
def test_inputs_and_heatmaps_equal_reference(estimator, run):
    boxes, flip = run.split("_")
    oracle = np.load(ORACLE_RUNS / f"oracle_{run}.npz")
    instances = _instances(boxes)
    images = {i.image_file: nextpose.read_image(COCO / i.image_file) for i in instances}
    crops = [crops_of(images[i.image_file], i.bbox[None], (192, 256))[0] for i in instances]
    inputs = estimator.normalize(np.concatenate(crops))
    x = inputs.double()
    stats = torch.stack(
        [x.sum((1, 2, 3)), (x * x).sum((1, 2, 3)), x.amin((1, 2, 3)), x.amax((1, 2, 3))], 1
    )
    np.testing.assert_allclose(stats.numpy(), oracle["input_stats"], rtol=1e-9, atol=1e-6)
    if flip == "noflip":
        return
    sel = oracle["sel_index"]
    assert np.abs(inputs[sel].numpy() - oracle["inputs"]).max() <= 1e-5
    with torch.inference_mode():
        raw = estimator.model(inputs[sel]).numpy()
        mirrored_raw = estimator.model(inputs[sel].flip(3)).numpy()
    # The plain model on the reference's contiguous (N, 3, h, w) input: the same kernels, bits
    np.testing.assert_array_equal(raw, oracle["hm_raw"])
    np.testing.assert_array_equal(mirrored_raw, oracle["hm_flipped_input_raw"])
    eager = estimator.with_options(backend="eager").heatmaps(inputs[sel], flip=True).numpy()
    np.testing.assert_array_equal(eager, oracle["hm_final"])
    # BatchNorm folded, channels-last: last bits
    fast = estimator.with_options(backend="fast").heatmaps(inputs[sel], flip=True).numpy()
    assert _relative(fast, oracle["hm_final"]) <= 1e-5
    if "hm_final_f16" in oracle.files:  # every instance, stored as float16 (2.5e-4 relative)
        all_final = estimator.heatmaps(inputs, flip=True).numpy()
        scale = oracle["hm_final_scale"][:, None, None, None]
        assert _relative(all_final, oracle["hm_final_f16"].astype(np.float32) * scale) <= 2.5e-4
        flat = all_final.reshape(len(all_final), 17, -1)
        np.testing.assert_array_equal(flat.argmax(-1), oracle["hm_final_argmax"])


def test_predict_api_equals_reference_inference_topdown(estimator):
    """mmpose's ``inference_topdown`` on one image with unclipped xyxy boxes."""
    ref = json.loads((ORACLE_RUNS / "inference_topdown_000000197388.json").read_text())
    boxes = [p["bbox_xyxy"] for p in ref["predictions"]]
    poses = estimator.predict(COCO / ref["image"], boxes)
    expected_kpts = np.array([p["keypoints"] for p in ref["predictions"]], np.float32)
    expected_scores = np.array([p["keypoint_scores"] for p in ref["predictions"]], np.float32)
    assert poses.keypoints.shape == (5, 17, 2)
    assert np.abs(poses.keypoints - expected_kpts).max() <= 1e-3
    assert (np.abs(poses.scores - expected_scores) / np.abs(expected_scores)).max() <= 1e-5
    eager = estimator.with_options(backend="eager").predict(COCO / ref["image"], boxes)
    np.testing.assert_array_equal(eager.keypoints, expected_kpts)  # the README's "bit for bit"
    np.testing.assert_array_equal(eager.scores, expected_scores)


@pytest.mark.parametrize("run", ["gt_flip", "det_noflip"])
def test_crop_regions_and_crop_keypoints_equal_reference(estimator, run):
    """The steps between box and keypoint: the padded centre and scale before the aspect fix
    (§2.1), and the decoded keypoints in input-crop pixels before back-projection (§6.4)."""
    from nextpose.geometry import box_to_center_scale, crop_region

    oracle = np.load(ORACLE_RUNS / f"oracle_{run}.npz")
    center, scale = box_to_center_scale(oracle["bbox_xyxy"], 1.25)
    np.testing.assert_array_equal(center, oracle["bbox_center"])
    np.testing.assert_array_equal(scale, oracle["bbox_scale_padded"])
    centers, scales = crop_region(oracle["bbox_xyxy"], (192, 256), 1.25)
    np.testing.assert_array_equal(centers, oracle["input_center"])
    np.testing.assert_array_equal(scales, oracle["input_scale"])
    instances = _instances(run.split("_")[0])
    images = {i.image_file: nextpose.read_image(COCO / i.image_file) for i in instances}
    crops = np.concatenate(
        [crops_of(images[i.image_file], i.bbox[None], (192, 256))[0] for i in instances]
    )
    network = estimator.with_options(backend="eager").network
    keypoints, scores = network.keypoints(crops, run.endswith("_flip"))
    keypoints, scores = np.asarray(keypoints), np.asarray(scores)
    np.testing.assert_array_equal(keypoints, oracle["kpts_input"])
    np.testing.assert_array_equal(scores, oracle["kpt_scores"])
