"""The GPU paths, on a GPU (skipped without CUDA; ``pytest -m gpu`` runs only these): fp32 gives
the CPU's keypoints on the oracle sample, the crops cut on the GPU are OpenCV's, CUDA graphs and
reduced precision run, and training steps with AMP."""

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE
from test_training import DATA, _config, _losses

import nextpose
from nextpose.codec import decode_heatmaps
from nextpose.codec_torch import decode_heatmaps_torch
from nextpose.geometry import crop, crop_region
from nextpose.geometry_torch import warp_crops
from nextpose.training import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def detections() -> dict[str, np.ndarray]:
    """The reference detector's boxes of the sample, per image."""
    per_image: dict[str, list] = {}
    for inst in nextpose.CocoKeypoints(ANN_FILE).detection_instances(DET_FILE):
        per_image.setdefault(inst.image_file, []).append(inst.bbox)
    return {name: np.stack(boxes) for name, boxes in per_image.items()}


def _predict(estimator, detections) -> tuple[np.ndarray, np.ndarray]:
    names = list(detections)
    poses = estimator.predict_many([COCO / n for n in names], [detections[n] for n in names])
    return np.concatenate([p.keypoints for p in poses]), np.concatenate([p.scores for p in poses])


def test_fp32_on_the_gpu_gives_the_cpu_keypoints(oracle_weights, detections):
    """resnext50 with the oracle's weights on the 2,006 detector-box keypoints: every GPU path
    in fp32 (IEEE convolutions, not TF32) equals the CPU's eager path, as the CPU's fast paths
    do (BENCHMARKS.md); scores to float32 summation-order noise."""
    cpu = nextpose.load("resnext50_coco_256x192", oracle_weights, backend="eager")
    want, want_scores = _predict(cpu, detections)
    for options in ({"backend": "eager"}, {"backend": "fast"}, {"device_crops": True}):
        gpu = nextpose.load("resnext50_coco_256x192", oracle_weights, device="cuda", **options)
        got, scores = _predict(gpu, detections)
        equal = (np.abs(got - want).max(-1) <= 1e-3).mean()
        assert equal >= 0.99, (options, equal)
        assert (np.abs(scores - want_scores) / np.abs(want_scores)).max() <= 1e-4, options


def test_gpu_crops_and_decode_equal_the_cpu(detections):
    """OpenCV's fixed-point warp redone on the GPU gives OpenCV's pixels, and the tensor decode
    on the GPU gives the NumPy decode's keypoints."""
    for name, boxes in detections.items():
        image = nextpose.read_image(COCO / name)
        center, scale = crop_region(boxes, (192, 256))
        want = np.stack([crop(image, c, s, (192, 256)) for c, s in zip(center, scale, strict=True)])
        tensors = (torch.from_numpy(a).cuda() for a in (image, center, scale))
        np.testing.assert_array_equal(warp_crops(*tensors, (192, 256)).cpu().numpy(), want)
    heatmaps = torch.rand(16, 17, 64, 48, generator=torch.Generator().manual_seed(0))
    locations, scores = decode_heatmaps_torch(heatmaps.cuda())
    want_locations, want_scores = decode_heatmaps(heatmaps.numpy())
    np.testing.assert_array_equal(locations.cpu().numpy(), want_locations)
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)


def test_dark_decoding_on_the_gpu_recovers_peaks_as_the_cpu():
    """DARK's tensor decoding on the GPU (convolution blur, float64 Taylor step) recovers
    sub-pixel Gaussian peaks as the reference path on the CPU does."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(7, [40, 56], (8, 17, 2))
    x, y = np.arange(48.0), np.arange(64.0)[:, None]
    heatmaps = np.exp(
        -((x - centres[..., 0, None, None]) ** 2 + (y - centres[..., 1, None, None]) ** 2) / 8
    ).astype(np.float32)
    want, want_scores = decode_heatmaps(heatmaps, "dark")
    got, scores = decode_heatmaps_torch(torch.from_numpy(heatmaps).cuda(), "dark")
    assert np.abs(got.cpu().numpy() - want).max() < 1e-4
    assert np.abs(want - centres).max() < 0.01
    np.testing.assert_array_equal(scores.cpu().numpy(), want_scores)


def test_cuda_graphs_and_reduced_precision(tiny_checkpoint, detections):
    """The compile backend (inductor + CUDA graphs) equals fast, compiling one graph for one
    crop and one for other batch sizes per precision; bf16 and fp16 give finite keypoints near
    fp32's."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for precision in ("fp32", "bf16"):  # autocast is part of the compiled graph
        fast = nextpose.load(str(tiny_checkpoint), device="cuda", precision=precision)
        graphs = nextpose.load(
            str(tiny_checkpoint), device="cuda", backend="compile", precision=precision
        )
        for name, count in zip(detections, (1, 5, 3, 2), strict=False):
            image, boxes = COCO / name, detections[name][:count]
            want, got = fast.predict(image, boxes), graphs.predict(image, boxes)
            near = (np.abs(got.keypoints - want.keypoints).max(-1) <= 1e-3).mean()
            assert near >= (1 if precision == "fp32" else 0.9), (precision, near)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 4
    fast = nextpose.load(str(tiny_checkpoint), device="cuda")
    want, _ = _predict(fast, detections)
    for precision in ("bf16", "fp16"):
        low = nextpose.load(str(tiny_checkpoint), device="cuda", precision=precision)
        got, scores = _predict(low, detections)
        assert np.isfinite(scores).all()
        near = (np.abs(got - want).max(-1) <= 4.0).mean()  # a heatmap pixel is 4 image pixels
        assert near >= 0.9, (precision, near)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_training_with_amp_on_the_gpu(tmp_path, amp):
    config = _config(epochs=1, amp=amp, channels_last=True)
    train(config, DATA, tmp_path, pretrained="none", device="cuda", progress=False)
    losses = _losses(tmp_path)
    assert len(losses) == 3 and all(0 < loss < 1 for loss in losses)
    estimator = nextpose.load(tmp_path / "last.pth", device="cuda")
    assert np.isfinite(estimator.predict(COCO / "000000000785.jpg").scores).all()
