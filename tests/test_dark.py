"""DARK (§10.1): decoding on well-defined and near-flat peaks, every backend, the unbiased
targets, the ResNet presets' decoding, and the options that choose it."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, IMAGES, ORACLE, ORACLE_RUNS, crops_of

import nextpose
from nextpose import checkpoint
from nextpose.cli import main
from nextpose.codec import decode_heatmaps, encode_heatmaps, modulate
from nextpose.codec_torch import decode_heatmaps_torch, modulate_torch
from nextpose.config import Config, ConfigError, InferenceConfig
from nextpose.data.images import read_image
from nextpose.model import PoseNet
from nextpose.opencv import cv2
from nextpose.presets import PRESETS

RESNET = sorted(n for n in PRESETS if n.startswith("resnet"))


def _gaussians(centres: np.ndarray, size: tuple[int, int], sigma: float) -> np.ndarray:
    """(N, K, h, w) float32 unnormalised Gaussians at sub-pixel ``centres`` (N, K, 2)."""
    w, h = size
    x = np.arange(w, dtype=np.float64)
    y = np.arange(h, dtype=np.float64)[:, None]
    cx, cy = centres[..., 0, None, None], centres[..., 1, None, None]
    return np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


def _oracle_final() -> np.ndarray:
    runs = [np.load(ORACLE_RUNS / f"oracle_{r}_flip.npz")["hm_final"] for r in ("gt", "det")]
    return np.concatenate(runs).astype(np.float32)


# --- decoding --------------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "sigma", "kernel"), [((48, 64), 2.0, 11), ((72, 96), 3.0, 11),
                                                       ((72, 96), 3.0, 17)])  # fmt: skip
def test_dark_recovers_sub_pixel_gaussian_peaks(size, sigma, kernel):
    rng = np.random.default_rng(1)
    w, h = size
    m = kernel // 2 + 1  # the blur pads with zeros: a peak nearer the border is pulled inward
    centres = rng.uniform([m, m], [w - 1 - m, h - 1 - m], (6, 17, 2))
    heatmaps = _gaussians(centres, size, sigma)
    msra, _ = decode_heatmaps(heatmaps)
    dark, scores = decode_heatmaps(heatmaps, "dark", kernel)
    assert np.abs(dark - centres).max() < 0.01
    assert np.abs(msra - centres).max() > 0.1  # the quarter-pixel grid cannot do that
    np.testing.assert_array_equal(scores, heatmaps.reshape(6, 17, -1).max(axis=2))
    tensor, tscores = decode_heatmaps_torch(torch.from_numpy(heatmaps), "dark", kernel)
    assert np.abs(tensor.numpy() - dark).max() < 1e-4
    np.testing.assert_array_equal(tscores.numpy(), scores)


def test_modulation_is_opencvs_blur_of_the_zero_padded_map_rescaled_then_log():
    heatmaps = _oracle_final()[:2]
    ours = modulate(heatmaps, 11)
    for i, j in [(0, 0), (1, 16), (0, 7)]:
        padded = np.zeros((74, 58), np.float32)
        padded[5:-5, 5:-5] = heatmaps[i, j]
        blurred = cv2.GaussianBlur(padded, (11, 11), sigmaX=0)[5:-5, 5:-5]
        blurred = blurred * (heatmaps[i, j].max() / blurred.max())
        np.testing.assert_array_equal(ours[i, j], np.log(np.maximum(blurred, np.float32(1e-10))))
    # The tensor version: the same up to float32 summation order.
    theirs = modulate_torch(torch.from_numpy(heatmaps), 11).numpy()
    assert np.abs(theirs - ours).max() <= 1e-5 * np.abs(ours).max()


def _reference_step(logs: np.ndarray, x: int, y: int) -> np.ndarray:
    """One keypoint's Taylor step as the reference's scalar loop computes it under NumPy 1.x:
    float32 differences promoted to float64 by the Python scalars 0.5, 2 and 0.25."""
    h = logs.astype(np.float64)
    f = logs
    gx = 0.5 * np.float64(f[y, x + 1] - f[y, x - 1])
    gy = 0.5 * np.float64(f[y + 1, x] - f[y - 1, x])
    hxx = 0.25 * (h[y, x + 2] - 2 * h[y, x] + h[y, x - 2])
    hxy = 0.25 * np.float64(f[y + 1, x + 1] - f[y - 1, x + 1] - f[y + 1, x - 1] + f[y - 1, x - 1])
    hyy = 0.25 * (h[y + 2, x] - 2 * h[y, x] + h[y - 2, x])
    if hxx * hyy - hxy**2 == 0:
        return np.zeros(2)
    hessian = np.array([[hxx, hxy], [hxy, hyy]])
    return (-np.linalg.inv(hessian) @ np.array([[gx], [gy]]))[:, 0]


def test_dark_on_oracle_heatmaps_follows_the_reference_step_by_step():
    heatmaps = _oracle_final()  # near-flat peaks: the Taylor step is ill-conditioned here
    n, k, hh, ww = heatmaps.shape
    dark, scores = decode_heatmaps(heatmaps, "dark")
    _, msra_scores = decode_heatmaps(heatmaps)
    np.testing.assert_array_equal(scores, msra_scores)
    logs = modulate(heatmaps, 11)
    flat = heatmaps.reshape(n, k, -1)
    moved = 0
    for i in range(n):
        for j in range(k):
            index = int(flat[i, j].argmax())
            x, y = index % ww, index // ww
            start = np.array([x, y], np.float32)
            if scores[i, j] <= 0:
                np.testing.assert_array_equal(dark[i, j], [-1, -1])
            elif 1 < x < ww - 2 and 1 < y < hh - 2:
                expected = start.astype(np.float64) + _reference_step(logs[i, j], x, y)
                np.testing.assert_array_equal(dark[i, j], expected.astype(np.float32))
                moved += 1
            else:  # at the border: the argmax, without MSRA's quarter step
                np.testing.assert_array_equal(dark[i, j], start)
    assert moved > n * k // 2
    # The tensor decoder on the same maps: its blur's last bits move these flat peaks a little.
    tensor, _ = decode_heatmaps_torch(torch.from_numpy(heatmaps), "dark")
    assert np.abs(tensor.numpy() - dark).max() * 4 < 0.08  # crop pixels


def test_bad_decoding_is_refused():
    with pytest.raises(ConfigError, match="decode='unbiased' must be one of msra, dark"):
        decode_heatmaps(np.zeros((1, 1, 8, 8), np.float32), "unbiased")
    with pytest.raises(ConfigError, match=r"inference\.decode"):
        InferenceConfig(decode="DARK")
    with pytest.raises(ConfigError, match=r"codec\.blur_kernel_size=10 must be odd"):
        Config().override(["codec.blur_kernel_size=10"])


# --- encoding ----------------------------------------------------------------------------------


def test_unbiased_targets_are_gaussians_at_the_sub_pixel_centre():
    points = np.array([[101.3, 150.7], [3.0, 5.5], [-30.0, 10.0], [-23.9, 10.0], [50, 60]],
                      np.float32)  # fmt: skip
    visible = np.array([1, 1, 1, 1, 0], np.float32)
    heatmaps, weights = encode_heatmaps(points, visible, (192, 256), (48, 64), 2.0, unbiased=True)
    p = points / np.float32(4)
    expected = _gaussians(p[None].astype(np.float64), (48, 64), 2.0)[0]
    expected[2] = 0  # right = p + 7 = -0.5 < 0: rejected
    expected[4] = 0  # unlabelled
    assert np.abs(heatmaps - expected).max() <= 1e-6
    # Real-valued window: p_x = -5.975, right = 1.025 >= 0 keeps it (MSRA's mu would be -5).
    np.testing.assert_array_equal(weights, [1, 1, 0, 1, 0])
    assert heatmaps.dtype == np.float32 and heatmaps[3].max() > 0
    # The peak is where the keypoint is: DARK's decoder finds it back.
    found, _ = decode_heatmaps(heatmaps[None, :1], "dark")
    assert np.abs(found[0, 0] - p[0]).max() < 0.01
    biased, _ = encode_heatmaps(points, visible, (192, 256), (48, 64), 2.0)
    assert biased[0].max() == 1 and heatmaps[0].max() < 1  # MSRA's peak sits on a pixel


def test_unbiased_training_targets_come_from_the_config():
    from nextpose.data.coco import CocoKeypoints
    from nextpose.data.datasets import TrainDataset

    config = Config().override(["codec.unbiased=true"])
    assert config.codec.unbiased is True
    instances = CocoKeypoints(ANN_FILE).ground_truth_instances()
    a = TrainDataset(instances, COCO, Config())[0]
    b = TrainDataset(instances, COCO, config)[0]
    np.testing.assert_array_equal(a["image"], b["image"])  # the same sample, other targets
    model = config.model
    sizes = (model.input_size, model.heatmap_size)
    expected, _ = encode_heatmaps(b["keypoints"], b["visible"], *sizes, 2.0, unbiased=True)
    np.testing.assert_array_equal(b["heatmaps"], expected)
    assert not np.array_equal(a["heatmaps"], b["heatmaps"])


# --- the options and the presets ---------------------------------------------------------------


def test_old_configs_decode_msra():
    data = Config().to_dict()
    del data["inference"]["decode"], data["codec"]["unbiased"], data["codec"]["blur_kernel_size"]
    config = Config.from_dict(data)
    assert config.inference.decode == "msra" and config.codec.unbiased is False


def _tiny_resnet(name: str, path):
    """A checkpoint of preset ``name``'s config with tiny widths (random weights)."""
    config = PRESETS[name].config
    model_config = replace(config.model, blocks=(1, 1, 1, 1), width_per_group=8,
                           deconv_channels=16)  # fmt: skip
    config = replace(config, model=model_config)
    torch.manual_seed(0)
    model = PoseNet(model_config)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    for m in model.head.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            torch.nn.init.normal_(m.weight, std=0.05)
    checkpoint.save_model(path, model, config, preset=name)
    return path


def test_predict_decodes_as_the_preset_says_or_as_asked(tmp_path):
    path = _tiny_resnet("resnet50_dark_coco_256x192", tmp_path / "dark.pth")
    box = [[280, 44, 499, 391]]
    image = read_image(IMAGES[0])
    estimator = nextpose.load(str(path), backend="eager")
    assert estimator.config.inference.decode == "dark"
    own = estimator.predict(image, box)
    asked = estimator.predict(image, box, decode="msra")
    msra = nextpose.load(str(path), backend="eager", decode="msra").predict(image, box)
    np.testing.assert_array_equal(asked.keypoints, msra.keypoints)
    assert not np.array_equal(own.keypoints, msra.keypoints)
    np.testing.assert_array_equal(own.scores, msra.scores)
    # The estimator's decode() of the network's heatmaps gives the engine's keypoints.
    crops, centers, scales = crops_of(image, box, estimator.input_size)
    heatmaps = estimator.heatmaps(estimator.normalize(crops))
    keypoints, _ = estimator.decode(heatmaps.numpy(), centers, scales)
    np.testing.assert_array_equal(keypoints, own.keypoints)
    keypoints, _ = estimator.decode(heatmaps, centers, scales)  # the tensor as it comes
    np.testing.assert_array_equal(keypoints, own.keypoints)
    with pytest.raises(nextpose.InputError, match=r"heatmaps of shape \(1, 17, 32, 24\): this "
                       r"model's are \(N, 17, 64, 48\)"):  # fmt: skip
        estimator.decode(heatmaps[:, :, ::2, ::2], centers, scales)
    with pytest.raises(ConfigError, match="decode"):
        nextpose.load(str(path), decode="udp")


@pytest.mark.parametrize("backend", ["eager", "onnxruntime"])
def test_a_preset_with_weights_decodes_as_asked(backend, tiny_checkpoint, tmp_path, monkeypatch):
    """A preset name and a weights file: ``decode`` overrides the preset's decoding on every
    backend, whether or not a cached graph is found."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "weights.pth"
    torch.save(
        {"state_dict": torch.load(tiny_checkpoint, weights_only=True)["state_dict"]}, weights
    )
    image, box = read_image(IMAGES[0]), [[280, 44, 499, 391]]
    own = nextpose.load("tiny_coco_96x64", weights, backend=backend).predict(image, box)
    want = nextpose.load(str(tiny_checkpoint), backend=backend).predict(image, box, decode="dark")
    assert not np.array_equal(want.keypoints, own.keypoints)
    for _ in range(2):  # the second onnxruntime load finds the graph cached
        dark = nextpose.load("tiny_coco_96x64", weights, backend=backend, decode="dark")
        assert dark.config.inference.decode == "dark"
        np.testing.assert_array_equal(dark.predict(image, box).keypoints, want.keypoints)


@pytest.mark.parametrize("backend", ["fast", "onnxruntime"])
def test_every_backend_decodes_dark_as_the_reference_path(backend, tmp_path):
    pytest.importorskip("onnxruntime")
    path = _tiny_resnet("resnet50_dark_coco_256x192", tmp_path / "dark.pth")
    image = read_image(IMAGES[1])
    boxes = [[0, 0, image.shape[1], image.shape[0]], [20, 30, 200, 300]]
    eager = nextpose.load(str(path), backend="eager")
    other = nextpose.load(str(path), backend=backend)
    crops, _, _ = crops_of(image, boxes, eager.input_size)
    for net in (eager, other):
        heatmaps = net.heatmaps(net.normalize(crops)).numpy()
        reference, scores = decode_heatmaps(heatmaps, "dark")
        keypoints, got_scores = net.network.keypoints(crops, True, "dark")
        keypoints = np.asarray(keypoints) / 4
        if net is not eager and backend == "onnxruntime":  # the graph's own heatmaps,
            # decoded by the reference's arithmetic (the PyTorch model's differ in the last bits)
            graph_heatmaps = net.network.session(True).run(None, {"crops": crops})[2]
            np.testing.assert_array_equal(keypoints, decode_heatmaps(graph_heatmaps, "dark")[0])
        else:  # CPU torch backends: the reference path itself
            np.testing.assert_array_equal(keypoints, reference)
        scale = np.abs(scores).max()  # the graph folds BatchNorm: last-bit heatmap changes
        np.testing.assert_allclose(np.asarray(got_scores), scores, rtol=0, atol=1e-5 * scale)


def test_exported_graph_carries_its_decoding(tmp_path):
    onnx = pytest.importorskip("onnx")
    path = _tiny_resnet("resnet50_coco_256x192", tmp_path / "plain.pth")
    out = tmp_path / "dark.onnx"
    assert main(["export", str(path), str(out), "--decode", "dark"]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["nextpose.decode"] == "dark"
    ort = pytest.importorskip("onnxruntime")
    estimator = nextpose.load(str(path), backend="eager")
    image = read_image(IMAGES[2])
    crops, _, _ = crops_of(image, [[10, 10, 300, 400]], estimator.input_size)
    keypoints, _ = ort.InferenceSession(str(out)).run(None, {"crops": crops})
    heatmaps = estimator.heatmaps(estimator.normalize(crops)).numpy()
    expected, _ = decode_heatmaps(heatmaps, "dark")
    msra, _ = decode_heatmaps(heatmaps)
    difference = np.abs(keypoints / 4 - expected)
    assert np.quantile(difference, 0.8) < 1e-4  # see the backend test for the rest
    assert np.quantile(np.abs(keypoints / 4 - msra), 0.8) > 0.01


@pytest.mark.parametrize("name", RESNET)
def test_eval_runs_on_every_resnet_preset(name, tmp_path, capsys):
    path = _tiny_resnet(name, tmp_path / f"{name}.pth")
    out = tmp_path / "eval"
    args = ["eval", str(path), "--images", str(COCO), "--ann-file", str(ANN_FILE), "--gt-boxes",
            "--no-flip", "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    results = json.loads((out / "keypoints.json").read_text())
    assert len(results) == 12
    assert set(json.loads((out / "metrics.json").read_text())) >= {"AP", "AR"}


def test_predict_cli_takes_decode(tmp_path):
    path = _tiny_resnet("resnet50_coco_256x192", tmp_path / "plain.pth")
    runs = {}
    for decode in ("msra", "dark"):
        out = tmp_path / f"{decode}.json"
        # one backend for both (auto runs DARK eager): the same heatmaps, decoded two ways
        args = ["predict", str(path), str(IMAGES[0]), "--decode", decode, "--no-progress",
                "--backend", "eager", "--out", str(out)]  # fmt: skip
        assert main(args) == 0
        runs[decode] = np.array(json.loads(out.read_text())[0]["keypoints"])
    assert not np.array_equal(runs["msra"][:, :2], runs["dark"][:, :2])
    np.testing.assert_array_equal(runs["msra"][:, 2], runs["dark"][:, 2])


@pytest.mark.slow
def test_full_size_dark_preset_evaluates_with_manifest_weights(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_weights", ORACLE / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    manifest = json.loads((ORACLE / "manifest_resnet50.json").read_text())
    weights = tmp_path / "resnet50_seed0.pth"
    torch.save(make_weights.make_checkpoint(manifest, 0, False), weights)
    out = tmp_path / "eval"
    args = ["eval", "resnet50_dark_coco_256x192", "--checkpoint", str(weights), "--images",
            str(COCO), "--ann-file", str(ANN_FILE), "--gt-boxes", "--no-progress",
            "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert len(json.loads((out / "keypoints.json").read_text())) == 12
