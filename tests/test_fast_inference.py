"""The fast inference paths: tensor twins of the decode and crop maths (equal to the NumPy /
OpenCV reference bit for bit), BatchNorm folding, the backends and the read-ahead of images."""

import copy
import importlib.util
import json
import re
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE, IMAGES

import nextpose
from nextpose import runtime
from nextpose.codec import decode_heatmaps
from nextpose.codec_torch import decode_heatmaps_torch
from nextpose.engine import ordered_map
from nextpose.geometry import crop, crop_region, crop_to_image, image_to_crop_matrix
from nextpose.geometry_torch import (
    affine_matrix_torch,
    crop_region_torch,
    crop_to_image_torch,
    warp_crops,
)
from nextpose.model import PoseNet
from nextpose.optimize import (
    PackedBottleneck,
    PackedConv2d,
    ReducedPrecision,
    SubpixelConvTranspose2d,
    aot_compile,
    emulate_autocast,
    fold_batchnorm,
    prepack,
    prepare_for_inference,
    subpixel_deconvolutions,
)
from nextpose.options import (
    PRECISIONS,
    RunOptions,
    auto_backend,
    cpu_capability,
    cpu_supports_bf16,
    onnxruntime_available,
)
from nextpose.predictor import PoseEstimator
from nextpose.presets import get_preset
from nextpose.runtime import TorchNetwork, compiled_cache_path

TINY = get_preset("tiny_coco_96x64").config
SIZE = TINY.model.input_size


def network(net, device="cpu", precision="fp32", **how) -> TorchNetwork:
    """The runtime's PyTorch network for ``net`` (the tiny model's config)."""
    return TorchNetwork(net, TINY, RunOptions(device=device, precision=precision), **how)


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    return nextpose.load(str(tiny_checkpoint), backend="eager").model


@pytest.fixture(scope="module")
def sample_boxes():
    """Per sample image: its detector boxes (the oracle's), plus boxes partly or wholly outside."""
    coco = nextpose.CocoKeypoints(ANN_FILE)
    out = {}
    for inst in coco.detection_instances(DET_FILE):
        out.setdefault(inst.image_file, []).append(inst.bbox)
    for name, boxes in out.items():
        h, w = nextpose.read_image(COCO / name).shape[:2]
        extra = [[-50, -30, 80, 200], [w - 40, h - 60, w + 90, h + 10], [w + 5, 0, w + 60, 50]]
        out[name] = np.concatenate([np.stack(boxes), np.array(extra, np.float32)])
    return out


@pytest.fixture(scope="module")
def few_boxes(sample_boxes):
    """Four detector boxes and the three outside ones per image: enough for the model tests."""
    return {name: np.concatenate([b[:4], b[-3:]]) for name, b in sample_boxes.items()}


def test_torch_decode_equals_numpy_decode():
    rng = np.random.default_rng(0)
    maps = np.round(rng.standard_normal((40, 17, 8, 6)), 1).astype(np.float32)  # many ties
    maps[0] = -1  # all negative: (-1, -1), score kept
    maps[1, 0] = 0.0
    maps[1, 1] = -0.0
    for i, (row, col) in enumerate([(0, None), (-1, None), (None, 0), (None, -1), (1, None)]):
        target = maps[2 + i]
        if row is not None:
            target[:, row, :] += 10  # maxima on the first/last/second row
        else:
            target[:, :, col] += 10
    maps[7, :, 3, 2] = maps[7, :, 3, 4] = 20  # equal neighbours: no step
    want = decode_heatmaps(maps)
    got = decode_heatmaps_torch(torch.from_numpy(maps))
    np.testing.assert_array_equal(got[0].numpy(), want[0])
    np.testing.assert_array_equal(got[1].numpy(), want[1])
    assert (want[0][0] == -1).all() and (want[0] % 0.25 == 0).all()


def test_affine_matrix_equals_opencv_solver():
    rng = np.random.default_rng(1)
    centers = rng.uniform(-500, 3000, (2000, 2)).astype(np.float32)
    scales = rng.uniform(0.5, 2000, (2000, 2)).astype(np.float32)
    for size in [(192, 256), (288, 384), SIZE]:
        got = affine_matrix_torch(torch.from_numpy(centers), torch.from_numpy(scales), size)
        pairs = zip(centers, scales, strict=True)
        want = np.stack([image_to_crop_matrix(c, s, 0.0, size) for c, s in pairs])
        np.testing.assert_array_equal(got.numpy(), want)  # the last bits too


def test_degenerate_regions_warp_as_opencv_warps_them():
    """A zero-size box makes the 6x6 system singular: OpenCV's matrix is zero, and so its crop
    repeats pixel (0, 0); a zero-width one, or one with negative sizes (kept from detection
    files, §1.4), is a regular region. The tensor path gives the same matrices and crops."""
    image = nextpose.read_image(IMAGES[0])
    boxes = np.array(
        [[60, 40, 60, 40], [0, 0, 0, 0], [60, 40, 60.000001, 40], [80, 30, 80, 200],
         [150, 90, 110, 20], [150, 20, 110, 90]],
        np.float32,
    )  # fmt: skip
    size = (192, 256)
    center, scale = crop_region(boxes, size)
    assert (scale[:2] == 0).all() and (scale[4] < 0).all()
    t = torch.from_numpy(image), torch.from_numpy(center), torch.from_numpy(scale)
    want = np.stack(
        [image_to_crop_matrix(c, s, 0.0, size) for c, s in zip(center, scale, strict=True)]
    )
    assert (want[:3] == 0).all()
    np.testing.assert_array_equal(affine_matrix_torch(t[1], t[2], size).numpy(), want)
    crops = np.stack([crop(image, c, s, size) for c, s in zip(center, scale, strict=True)])
    assert (crops[:3] == image[0, 0]).all()
    np.testing.assert_array_equal(warp_crops(*t, size).numpy(), crops)


def test_tensor_regions_and_back_projection_equal_numpy(sample_boxes):
    boxes = np.concatenate(list(sample_boxes.values()))
    center, scale = crop_region(boxes, (192, 256))
    tc, ts = crop_region_torch(torch.from_numpy(boxes), (192, 256))
    np.testing.assert_array_equal(tc.numpy(), center)
    np.testing.assert_array_equal(ts.numpy(), scale)
    points = np.random.default_rng(2).uniform(-4, 200, (len(boxes), 17, 2)).astype(np.float32)
    got = crop_to_image_torch(torch.from_numpy(points), tc, ts, (192, 256))
    np.testing.assert_array_equal(got.numpy(), crop_to_image(points, center, scale, (192, 256)))


@pytest.mark.parametrize("size", [(192, 256), SIZE])
def test_fixed_point_warp_equals_opencv(sample_boxes, size):
    differing = []
    for name, boxes in sample_boxes.items():
        image = nextpose.read_image(COCO / name)
        center, scale = crop_region(boxes, size)
        want = np.stack([crop(image, c, s, size) for c, s in zip(center, scale, strict=True)])
        args = (torch.from_numpy(image), torch.from_numpy(center), torch.from_numpy(scale), size)
        np.testing.assert_array_equal(warp_crops(*args).numpy(), want)  # "fixed": bit-exact
        diff = np.abs(warp_crops(*args, method="grid_sample").numpy() - want)
        assert diff.max() <= 1
        differing.append(diff.mean())
    assert 0 < np.mean(differing) < 0.01  # grid_sample: float weights, a grey level off at ties


def test_fold_batchnorm_matches_the_plain_model(tiny_model):
    folded = fold_batchnorm(tiny_model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tiny_model.modules())  # a copy
    deconv = folded.head.deconv_layers[3]  # equal in/out channels: the inductor trap's pattern
    assert deconv.in_channels == deconv.out_channels and deconv.bias is not None
    x = torch.randn(3, 3, SIZE[1], SIZE[0])
    fast = prepare_for_inference(tiny_model, channels_last=True)
    with torch.inference_mode():
        want = tiny_model(x)
        for net, inputs in ((folded, x), (fast, x.contiguous(memory_format=torch.channels_last))):
            got = net(inputs)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_fold_refuses_a_batchnorm_without_convolution():
    model = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="no convolution"):
        fold_batchnorm(model)


def test_auto_backend_choice():
    """auto: ONNX Runtime for fp32 on an AVX2-only CPU when the extra is installed (measured
    fastest there), the fast PyTorch graph on AVX-512 CPUs, without the extra, below fp32 and
    off the CPU."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_backend(cpu, "fp32", onnxruntime=True, capability="AVX2") == "onnxruntime"
    assert auto_backend(cpu, "fp32", onnxruntime=False, capability="AVX2") == "fast"
    for capability in ("AVX512", "AVX512_BF16"):
        assert auto_backend(cpu, "fp32", onnxruntime=True, capability=capability) == "fast"
    for precision in ("bf16", "fp16"):
        assert auto_backend(cpu, precision, onnxruntime=True, capability="AVX2") == "fast"
    for precision in PRECISIONS:
        assert auto_backend(cuda, precision, onnxruntime=True, capability="AVX2") == "fast"
    avx2_only = not cpu_capability().upper().startswith("AVX512")
    want = "onnxruntime" if onnxruntime_available() and avx2_only else "fast"
    assert RunOptions().resolve().backend == want
    # DARK: eager in fp32 on any CPU (the reference's heatmaps bit for bit); otherwise as MSRA
    for capability in ("AVX2", "AVX512", "AVX512_BF16"):
        for extra in (True, False):
            got = auto_backend(cpu, "fp32", onnxruntime=extra, capability=capability, decode="dark")
            assert got == "eager"
    assert auto_backend(cpu, "bf16", onnxruntime=True, capability="AVX2", decode="dark") == "fast"
    assert auto_backend(cuda, "fp32", onnxruntime=True, capability="AVX2", decode="dark") == "fast"
    assert RunOptions().resolve("dark").backend == "eager"


def test_a_dark_model_runs_eager_under_auto(tiny_checkpoint):
    """The model's own decoding picks it: a DARK preset's config, or ``decode="dark"`` at load;
    a backend asked for by name is kept."""
    preset = nextpose.get_preset("tiny_coco_96x64")
    dark = replace(preset.config, inference=replace(preset.config.inference, decode="dark"))
    assert PoseEstimator(PoseNet(preset.config.model), dark).backend == "eager"
    assert nextpose.load(str(tiny_checkpoint), decode="dark").backend == "eager"
    assert nextpose.load(str(tiny_checkpoint), decode="dark", backend="fast").backend == "fast"
    msra = nextpose.load(str(tiny_checkpoint))
    assert msra.backend == auto_backend("cpu", "fp32")
    assert msra.with_options(batch_size=4).backend == msra.backend


def test_a_call_decoding_by_dark_runs_where_a_dark_model_would(tiny_checkpoint):
    """predict(decode="dark") on a model loaded for MSRA under auto gives the keypoints of one
    loaded for DARK (eager, one network made once); a backend asked for by name is kept."""
    from conftest import IMAGES

    boxes = [[10, 10, 200, 300], [50, 40, 330, 420]]
    msra = nextpose.load(str(tiny_checkpoint))
    dark = nextpose.load(str(tiny_checkpoint), decode="dark")
    assert msra.for_decode("msra") is msra and msra.for_decode(None) is msra
    assert msra.for_decode("dark").backend == "eager"
    assert msra.for_decode("dark") is msra.for_decode("dark")
    assert msra.for_decode("dark").model is msra.model  # the weights are shared
    want = dark.predict(IMAGES[0], boxes)
    got = msra.predict(IMAGES[0], boxes, decode="dark")
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.scores, want.scores)
    (many,) = msra.predict_many([IMAGES[0]], [boxes], decode="dark")
    np.testing.assert_array_equal(many.keypoints, want.keypoints)
    named = nextpose.load(str(tiny_checkpoint), backend="fast")
    assert named.for_decode("dark") is named


def test_auto_backend_without_the_onnx_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name)
    )
    assert not onnxruntime_available()
    assert RunOptions().resolve().backend == "fast"


def test_run_option_choices():
    with pytest.raises(nextpose.InputError, match="backend"):
        RunOptions(backend="tensorrt")
    with pytest.raises(nextpose.InputError, match="precision"):
        RunOptions(precision="int8")
    with pytest.raises(nextpose.InputError, match="batch_size"):
        RunOptions(batch_size=0)
    with pytest.raises(
        nextpose.InputError, match="onnxruntime runs on the CPU, not on device 'cuda'"
    ):
        RunOptions(device="cuda", backend="onnxruntime").resolve()
    with pytest.raises(nextpose.InputError, match="fp32 only, not precision fp16: use precision"):
        RunOptions(backend="onnxruntime", precision="fp16").resolve()
    if not cpu_supports_bf16():
        with pytest.raises(nextpose.InputError, match="native bf16"):
            RunOptions(precision="bf16").resolve()


def test_fast_backend_keypoints_equal_eager(tiny_checkpoint, few_boxes):
    """Folding and channels-last change heatmaps in the last bits only: the same keypoints."""
    eager = nextpose.load(str(tiny_checkpoint), backend="eager")
    fast = nextpose.load(str(tiny_checkpoint), backend="fast")
    assert fast.backend == "fast" and eager.backend == "eager"
    names = list(few_boxes)
    want = eager.predict_many([COCO / n for n in names], [few_boxes[n] for n in names])
    got = fast.predict_many([COCO / n for n in names], [few_boxes[n] for n in names])
    kpts = np.concatenate([p.keypoints for p in got])
    ref = np.concatenate([p.keypoints for p in want])
    np.testing.assert_array_equal(kpts, ref)  # the same keypoints, bit for bit
    scores = np.concatenate([p.scores for p in got])
    ref_scores = np.concatenate([p.scores for p in want])
    assert np.abs(scores - ref_scores).max() <= 1e-5 * np.abs(ref_scores).max()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="needs oneDNN")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prepacked_convolutions_are_bit_identical_for_any_batch(
    tiny_checkpoint, tiny_model, precision
):
    """Weights reordered once into oneDNN's layout (packed for batches of 8), with the ReLUs
    and residual sums done by the convolutions, give the prepared model's heatmaps bit for bit
    in fp32 for batches of 2, 3, 8 and 11 (in bf16 the fused sum is rounded once instead of
    twice: as close as bf16's rounding), and a single crop what it gets inside a batch (the
    plain path picks another kernel for one crop, which sums in another order); the fast
    backend on a CPU runs them (no plain Conv2d, no ReLU left)."""
    if precision == "bf16" and not cpu_supports_bf16():
        pytest.skip("this CPU has no native bf16")
    fast = subpixel_deconvolutions(prepare_for_inference(tiny_model))
    if precision == "bf16":
        fast = ReducedPrecision(fast, torch.bfloat16, "ends")
    example = torch.zeros(1, 3, SIZE[1], SIZE[0]).contiguous(memory_format=torch.channels_last)
    packed = prepack(copy.deepcopy(fast), example, 8)
    assert not [m for m in packed.modules() if type(m) in (torch.nn.Conv2d, torch.nn.ReLU)]
    assert len([m for m in packed.modules() if isinstance(m, PackedBottleneck)]) == 4
    x = torch.randn(11, 3, SIZE[1], SIZE[0]).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        for n in (2, 3, 8, 11):
            want = fast(x[:n])
            if precision == "fp32":
                torch.testing.assert_close(packed(x[:n]), want, rtol=0, atol=0)
            else:  # bf16 keeps 8 bits: 2^-8 of the largest value per rounding
                error = (packed(x[:n]) - want).abs().max() / want.abs().max()
                assert 0 < error < 2e-2
        torch.testing.assert_close(packed(x[:1]), packed(x[:8])[:1], rtol=0, atol=0)
    est = nextpose.load(str(tiny_checkpoint), backend="fast", precision=precision)
    assert any(isinstance(m, PackedConv2d) for m in est.network.net.modules())
    copied = copy.deepcopy(est.network.net)  # oneDNN's opaque weights shared, not copied
    with torch.inference_mode():
        torch.testing.assert_close(copied(x[:3]), est.network.net(x[:3]), rtol=0, atol=0)


@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_transposed_convolution_is_the_same_sum(bias):
    """The 2x2 convolution + pixel shuffle form of a 4x4 stride-2 transposed convolution sums
    the same products: equal to float64 rounding (the order differs), for odd and even sizes,
    and it keeps the layer's memory format; other transposed convolutions are refused."""
    torch.manual_seed(0)
    deconv = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=bias).double()
    x = torch.randn(3, 6, 5, 4, dtype=torch.float64)
    with torch.no_grad():
        got, want = SubpixelConvTranspose2d(deconv)(x), deconv(x)
    assert got.shape == want.shape == (3, 5, 10, 8)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-13)
    channels_last = torch.nn.ConvTranspose2d(6, 5, 4, 2, 1).to(memory_format=torch.channels_last)
    sub = SubpixelConvTranspose2d(channels_last)
    assert sub.conv.weight.is_contiguous(memory_format=torch.channels_last)
    for other in (
        torch.nn.ConvTranspose2d(6, 5, 3, 2, 1, output_padding=1),
        torch.nn.ConvTranspose2d(6, 6, 4, 2, 1, groups=2),
    ):
        with pytest.raises(ValueError, match="not a 4x4 stride-2"):
            SubpixelConvTranspose2d(other)
    head = torch.nn.Sequential(torch.nn.ConvTranspose2d(6, 5, 4, 2, 1), other)
    subpixel_deconvolutions(head)
    assert isinstance(head[0], SubpixelConvTranspose2d) and head[1] is other


def test_fast_backend_on_a_cpu_runs_no_transposed_convolution(tiny_checkpoint):
    """On a CPU the head's upsampling runs as convolutions, in fp32 as in bf16."""
    for precision in ("fp32", "bf16"):
        est = nextpose.load(str(tiny_checkpoint), backend="fast", precision=precision)
        modules = list(est.network.net.modules())
        assert not [m for m in modules if isinstance(m, torch.nn.ConvTranspose2d)]
        assert len([m for m in modules if isinstance(m, SubpixelConvTranspose2d)]) == 3


@pytest.fixture(scope="module")
def compiled_once(tiny_checkpoint, few_boxes, tmp_path_factory) -> dict:
    """The ``compile`` backend's first estimator, into an empty cache, with its AOTInductor
    compilations counted: the one real compile of these tests (~20 s), whose package the
    others reuse where compiling again would test nothing new."""
    cache = tmp_path_factory.mktemp("compile") / "cache"
    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return aot_compile(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NEXTPOSE_CACHE", str(cache))
        mp.setattr(runtime, "aot_compile", counted)
        want = _predict_counts(nextpose.load(str(tiny_checkpoint), backend="fast"), few_boxes)
        got = _predict_counts(nextpose.load(str(tiny_checkpoint), backend="compile"), few_boxes)
    (package,) = (cache / "inductor").glob("*.pt2")
    return {"cache": cache, "calls": calls, "want": want, "got": got, "package": package,
            "bytes": package.read_bytes()}  # fmt: skip


def _predict_counts(estimator, few_boxes) -> list:
    """Predictions of 1, 3, 2 and 7 boxes (flip test on: two passes each)."""
    pairs = zip(few_boxes, (1, 3, 2, 7), strict=False)
    return [estimator.predict(COCO / name, few_boxes[name][:count]) for name, count in pairs]


def _replay(compiled_once: dict, calls: list):
    """A stand-in for aot_compile that writes the package compiled once (the same model, example
    and options: what compiling again would write), counting its calls."""

    def compile_again(model, example, path):
        calls.append(path)
        Path(path).write_bytes(compiled_once["bytes"])
        return Path(path)

    return compile_again


@pytest.mark.slow
def test_compile_backend_equals_fast_and_compiles_once_per_weights(
    tiny_checkpoint, few_boxes, compiled_once, monkeypatch
):
    """The ahead-of-time compiled graph gives the fast backend's keypoints bit for bit, for any
    batch size (one graph with a symbolic batch, a single crop included); it is compiled once,
    kept in the cache, and a later estimator of the same weights loads it without compiling;
    a damaged package is compiled again, into the cache."""
    want = compiled_once["want"]
    calls = compiled_once["calls"]
    monkeypatch.setenv("NEXTPOSE_CACHE", str(compiled_once["cache"]))
    for w, g in zip(want, compiled_once["got"], strict=True):
        np.testing.assert_array_equal(g.keypoints, w.keypoints)
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-5, atol=1e-6)
    assert len(calls) == 1
    loaded = nextpose.load(str(tiny_checkpoint), backend="compile")  # from the cache
    for w, g in zip(want, _predict_counts(loaded, few_boxes), strict=True):
        np.testing.assert_array_equal(g.keypoints, w.keypoints)
    assert len(calls) == 1
    package = compiled_once["package"]
    assert not [p for p in package.parent.iterdir() if p.name.startswith(".")]  # no leftovers
    package.write_bytes(package.read_bytes()[:1000])  # a torn file
    again = []
    monkeypatch.setattr(runtime, "aot_compile", _replay(compiled_once, again))
    compiled = nextpose.load(str(tiny_checkpoint), backend="compile")
    got = compiled.predict(COCO / next(iter(few_boxes)), few_boxes[next(iter(few_boxes))][:1])
    np.testing.assert_array_equal(got.keypoints, want[0].keypoints)
    assert len(again) == 1 and Path(again[0]).parent == package.parent  # into the cache
    assert package.read_bytes() == compiled_once["bytes"]  # renamed over the torn file
    assert not [p for p in package.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_compile_backend_without_a_writable_cache_warns_and_runs(
    tiny_checkpoint, few_boxes, compiled_once, monkeypatch, tmp_path
):
    """A cache folder that cannot be made (here under a file): the model is compiled into a
    scratch folder for this process, with a warning naming the folder, and runs."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "file" / "cache"))
    calls = []
    monkeypatch.setattr(runtime, "aot_compile", _replay(compiled_once, calls))
    compiled = nextpose.load(str(tiny_checkpoint), backend="compile")
    name = next(iter(few_boxes))
    with pytest.warns(UserWarning, match="could not keep the compiled model in .*inductor"):
        got = compiled.predict(COCO / name, few_boxes[name][:1])
    np.testing.assert_array_equal(got.keypoints, compiled_once["want"][0].keypoints)
    (scratch,) = calls
    assert Path(scratch).parent.name.startswith("nextpose-compile-")
    assert not str(scratch).startswith(str(tmp_path))  # not in the cache that cannot be made


def test_compile_backend_without_a_compiler_is_an_input_error(
    tiny_checkpoint, monkeypatch, tmp_path, capsys
):
    """No C++ compiler: `predict --backend compile` stops with a message naming the fix (exit 2,
    no traceback), writes no output and leaves no parts folder (nothing is done, so nothing to
    resume): the next run starts without --resume."""
    from torch._inductor import cpp_builder, exc

    from nextpose.cli import main

    def missing() -> str:
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(COCO / "000000000785.jpg"), "--out", str(out)]
    code = main([*args, "--backend", "compile", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "compiling" not in err, err
    assert re.search(r"compile backend needs a C\+\+ compiler .*use the fast backend", err), err
    assert not out.exists() and not list(tmp_path.glob("*.parts"))
    assert main([*args, "--backend", "fast", "--no-progress"]) == 0 and out.is_file()


def test_compiled_cache_key_names_weights_precision_and_cpu(monkeypatch):
    """Another precision, other kept layers, other weights or another CPU's instruction sets
    get another package (a library compiled for AVX-512 would not run on an AVX2 CPU)."""
    config = get_preset("tiny_coco_96x64").config
    fp32 = RunOptions(backend="compile")
    paths = {
        compiled_cache_path("a", config, fp32),
        compiled_cache_path("b", config, fp32),
        compiled_cache_path("a", config, replace(fp32, precision="bf16")),
        compiled_cache_path("a", config, replace(fp32, precision="bf16", keep_fp32="none")),
        compiled_cache_path("a", config, replace(fp32, precision="fp16")),
    }
    assert len(paths) == 5
    # keep_fp32 means nothing in fp32, nor the decoding to the network: the same package
    same = compiled_cache_path("a", config, replace(fp32, keep_fp32="none"))
    assert same == compiled_cache_path("a", config, fp32)
    dark = replace(config, inference=replace(config.inference, decode="dark"))
    assert compiled_cache_path("a", dark, fp32) == compiled_cache_path("a", config, fp32)
    wider = replace(config, model=replace(config.model, input_size=(96, 128)))
    assert compiled_cache_path("a", wider, fp32) not in paths
    monkeypatch.setattr(runtime, "cpu_features", lambda: ("avx2",))
    assert compiled_cache_path("a", config, fp32) not in paths


def test_cuda_graph_batches_are_padded_to_powers_of_two(tiny_model):
    """A network replaying CUDA graphs records one per batch size: batches are padded to powers
    of two (few sizes) and the outputs for the real crops come back, copied. Checked here with
    the plain model standing in for the graphs."""
    fast = prepare_for_inference(tiny_model)
    sizes = []

    def recorded(x: torch.Tensor) -> torch.Tensor:
        sizes.append(len(x))
        return fast(x)

    graphs = network(recorded, channels_last=True, joint_flip=True, cuda_graphs=True)
    plain = network(fast, channels_last=True, joint_flip=True)
    for n in (1, 3, 5, 8):
        x = torch.randn(n, 3, SIZE[1], SIZE[0])
        want, got = plain.heatmaps(x, True), graphs.heatmaps(x, True)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * want.abs().max().item())
    assert sizes == [2, 8, 16, 16]  # the flip test's joint batches of 2N, padded


def test_gpu_fp32_convolutions_are_not_tf32(tiny_model):
    """On a GPU, fp32 means IEEE float32 convolutions (PyTorch's default lets cuDNN use TF32's
    10-bit mantissa); the setting is the user's again afterwards."""
    from nextpose.runtime import cuda_switches

    # torch >= 2.9: cudnn.conv.fp32_precision "ieee"; older: cudnn.allow_tf32 False
    switch, name, exact = cuda_switches._precision()
    seen = []

    def recorded(x: torch.Tensor) -> torch.Tensor:
        seen.append(getattr(switch, name))
        return tiny_model(x)

    before = getattr(switch, name)
    on_gpu = network(recorded, "cuda", joint_flip=True)
    on_cpu = network(recorded, "cpu", joint_flip=True)
    x = torch.randn(2, 3, SIZE[1], SIZE[0])
    on_gpu.heatmaps(x, False)  # no flip: nothing is copied to the (absent) GPU
    on_cpu.heatmaps(x, False)
    assert seen == [exact, before]
    assert getattr(switch, name) == before

    # Two threads overlapping: the first one out leaves the switch on for the other, the last
    # one out restores the user's setting.
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()

    def first(x: torch.Tensor) -> torch.Tensor:
        a_inside.set()
        b_inside.wait(timeout=30)
        return tiny_model(x)

    def second(x: torch.Tensor) -> torch.Tensor:
        b_inside.set()
        a_done.wait(timeout=30)
        seen.append(getattr(switch, name))
        return tiny_model(x)

    a, b = (network(f, "cuda", joint_flip=True) for f in (first, second))
    thread_a = threading.Thread(target=a.heatmaps, args=(x, False))
    thread_b = threading.Thread(target=b.heatmaps, args=(x, False))
    thread_a.start()
    assert a_inside.wait(timeout=30)
    thread_b.start()
    thread_a.join(timeout=30)
    a_done.set()
    thread_b.join(timeout=30)
    assert seen[-1] == exact
    assert getattr(switch, name) == before


def test_read_ahead_and_device_crops_change_nothing(tiny_checkpoint, few_boxes):
    names = list(few_boxes)
    images, boxes = [COCO / n for n in names], [few_boxes[n] for n in names]
    boxes[1] = np.zeros((0, 4), np.float32)  # an image without people in the middle
    runs = []
    threads = ({"read_threads": 0}, {"read_threads": 2}, {"read_threads": 3, "device_crops": True})
    for options in threads:  # batches of 5 crops, across images
        est = nextpose.load(str(tiny_checkpoint), batch_size=5, **options)
        runs.append(est.predict_many(images, boxes))
    for run in runs[1:]:
        assert [len(p) for p in run] == [len(p) for p in runs[0]]
        for a, b in zip(run, runs[0], strict=True):
            np.testing.assert_array_equal(a.keypoints, b.keypoints)
            np.testing.assert_array_equal(a.scores, b.scores)
            np.testing.assert_array_equal(a.centers, b.centers)


def test_ordered_map_keeps_order_raises_in_place_and_stops():
    def slow_square(i: int) -> int:
        time.sleep(0.02 * (i % 3))  # finish out of order
        if i == 5:
            raise nextpose.ImageError("bad image 5")
        return i * i

    got = []
    with pytest.raises(nextpose.ImageError, match="bad image 5"):
        for value in ordered_map(slow_square, ((i,) for i in range(10)), threads=3):
            got.append(value)
    assert got == [0, 1, 4, 9, 16]
    assert list(ordered_map(slow_square, ((i,) for i in range(5)), threads=0)) == got
    started = []

    def record(i: int) -> int:
        started.append(i)
        return i

    for value in ordered_map(record, ((i,) for i in range(1000)), threads=2, depth=4):
        if value == 3:
            break  # the rest is cancelled: at most depth items beyond are submitted
    assert len(started) <= 3 + 1 + 4


def test_unreadable_image_still_raises(tiny_checkpoint, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    est = nextpose.load(str(tiny_checkpoint))
    with pytest.raises(nextpose.ImageError):
        est.predict_many([IMAGES[0], bad, IMAGES[1]], [None, None, None])


def test_custom_model_estimator_defaults_to_auto():
    model = PoseNet(TINY.model)
    est = PoseEstimator(model, TINY)
    assert est.backend == auto_backend(torch.device("cpu"), "fp32")
    poses = est.predict(np.zeros((50, 40, 3), np.uint8))
    assert poses.keypoints.shape == (1, 17, 2)


def test_gpu_style_paths_on_cpu(tiny_model):
    """What a GPU runs, checked on the CPU: the flip test as one 2N batch, and autocast (bf16
    here, fp16 on a GPU) with float32 heatmaps out."""
    fast = prepare_for_inference(tiny_model, channels_last=True)
    x = torch.randn(4, 3, SIZE[1], SIZE[0])
    two = network(fast, channels_last=True, joint_flip=False)
    joint = network(fast, channels_last=True, joint_flip=True)
    half = network(fast, precision="bf16", channels_last=True, joint_flip=True)
    want = two.heatmaps(x, True)
    scale = want.abs().max()
    assert (joint.heatmaps(x, True) - want).abs().max() <= 1e-6 * scale
    low = half.heatmaps(x, True)
    assert low.dtype == torch.float32 and low.shape == want.shape
    assert 0 < (low - want).abs().max() <= 0.05 * scale


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_emulated_autocast_rounds_as_autocast_does(dtype):
    """Convolution + BatchNorm + ReLU (+ a residual sum): the emulation gives what real CPU
    autocast gives, to the last bit for nearly every value and one unit of ``dtype``'s last
    place for the rest (float32 sums in another order, rounded again)."""
    torch.manual_seed(0)
    layers = torch.nn.Sequential(
        torch.nn.Conv2d(16, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU()
    ).eval()
    layers[1].running_mean.normal_(0, 0.5)
    layers[1].running_var.uniform_(0.5, 2)
    x = torch.randn(2, 16, 12, 10)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=dtype):
            real = layers(x)
        emulated = emulate_autocast(layers, dtype)(x)
    assert real.dtype == dtype and emulated.dtype == torch.float32
    assert torch.equal(emulated.to(dtype).float(), emulated)  # representable in dtype
    same = (real.float() == emulated).float().mean()
    assert same >= 0.999, same
    ulp = torch.finfo(dtype).eps * emulated.abs()
    assert ((real.float() - emulated).abs() <= ulp).all()


def test_emulated_autocast_of_the_model(tiny_model):
    """The whole network: reduced-precision sized errors (not zero, not large), the model
    itself untouched, float32 refused."""
    x = torch.randn(2, 3, SIZE[1], SIZE[0])
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.inference_mode():
        want = tiny_model(x)
        for dtype, most in ((torch.bfloat16, 0.05), (torch.float16, 0.01)):
            got = emulate_autocast(tiny_model, dtype)(x)
            error = (got - want).abs().max() / want.abs().max()
            assert 0 < error <= most, (dtype, error)
            assert torch.equal(got.to(dtype).float(), got)
    assert all(torch.equal(before[k], v) for k, v in tiny_model.state_dict().items())
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        emulate_autocast(tiny_model, torch.float32)


def test_non_finite_heatmaps_are_refused(tiny_checkpoint):
    """Heatmaps with inf/NaN (a broken checkpoint; fp16 overflowing) raise an error that says
    how many people and why, instead of returning meaningless keypoints."""
    image = np.full((60, 40, 3), 128, np.uint8)
    boxes = [[0, 0, 39, 59], [5, 5, 30, 40]]
    for backend in ("eager", "fast"):
        est = nextpose.load(str(tiny_checkpoint), backend=backend)
        assert est.predict(image, boxes).scores.shape == (2, 17)
        with torch.no_grad():  # finite weights, heatmaps past float32's range
            est.model.head.final_layer.weight.mul_(1e38)
            est.model.head.final_layer.bias.fill_(3e38)
        est._network = None  # rebuilt from the changed model
        with pytest.raises(ValueError, match=r"heatmaps of 2 of 2 people are not finite.*fp32"):
            est.predict(image, boxes)
    # fp16 (a GPU precision; forced here on the CPU) with activations past 65504.
    est = nextpose.load(str(tiny_checkpoint), backend="eager")
    with torch.no_grad():
        est.model.head.final_layer.weight.mul_(1e9)
    est.options = replace(est.options, precision="fp16")  # past the CPU check, for the test
    est._network = TorchNetwork(est.model, est.config, est.options)
    with pytest.raises(ValueError, match=r"float16's range \(65504\); use precision bf16"):
        est.predict(image, boxes)


def test_weights_holding_nan_are_refused_on_every_backend(tiny_checkpoint):
    """A model set from Python with a NaN weight is refused when its network is built, naming
    the weight: on ``fast`` the fused ReLUs turned the NaN into 0 and gave finite keypoints."""
    from nextpose.errors import NumericsError
    from nextpose.predictor import PoseEstimator

    image = np.full((60, 40, 3), 128, np.uint8)
    for backend in ("eager", "fast", "onnxruntime"):
        est = nextpose.load(str(tiny_checkpoint), backend=backend)
        model = est.model
        with torch.no_grad():
            model.backbone.conv1.weight[0, 0, 0, 0] = float("nan")
        est.model = model
        with pytest.raises(NumericsError, match=r"weights hold NaN or inf in backbone\.conv1"):
            est.predict(image, [[0, 0, 39, 59]])
    with pytest.raises(NumericsError, match=r"backbone\.conv1\.weight"):
        PoseEstimator(model, est.config).predict(image, [[0, 0, 39, 59]])


def test_fp16_on_a_cpu_keeps_pytorchs_relus(tiny_checkpoint, monkeypatch):
    """oneDNN's fused ReLU turns a NaN into 0, PyTorch's keeps it: ``fast`` in fp16 (which
    overflows) packs its convolutions without fusing the ReLUs, so that an overflow reaches
    the heatmaps and is reported; fp32 fuses them."""
    from nextpose import optimize, options, runtime

    with torch.no_grad():  # NaN born inside the network from finite (absurd) weights
        model = nextpose.load(str(tiny_checkpoint)).model
        for m in [model.backbone.conv1, model.backbone.layer1[0].conv1]:
            m.weight.mul_(1e25)
        fast = optimize.prepare_for_inference(model, torch.device("cpu"), fold=True)
        x = torch.randn(2, 3, 96, 64).contiguous(memory_format=torch.channels_last)
        plain = optimize.prepack(copy.deepcopy(fast), x[:1], 2, fuse=False)(x)
        assert plain.isnan().any()
    asked = []
    real = runtime.prepack
    monkeypatch.setattr(runtime, "prepack", lambda *a, fuse=True: asked.append(fuse) or real(*a))
    monkeypatch.setattr(options, "cpu_supports_fp16", lambda: True)
    for precision in ("fp32", "fp16"):
        assert nextpose.load(str(tiny_checkpoint), backend="fast", precision=precision).network
    assert asked == [True, False]


def test_cli_backend_and_precision_options(tiny_checkpoint, tmp_path, capsys):
    from nextpose.cli import main

    keypoints = {}
    for backend in ("eager", "onnxruntime"):
        out = tmp_path / f"{backend}.json"
        args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), str(IMAGES[1]), "--out", str(out)]
        assert main([*args, "--backend", backend, "--no-progress"]) == 0
        keypoints[backend] = np.array([r["keypoints"] for r in json.loads(out.read_text())])
    assert np.abs(keypoints["onnxruntime"] - keypoints["eager"])[..., :2].max() <= 1e-3
    if not cpu_supports_bf16():
        args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), "--precision", "bf16"]
        assert main(args) == 2
        assert "no native bf16" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("precision", "needs"), [("bf16", "AVX-512 BF16 or AMX"), ("fp16", "AVX-512 FP16 or AMX-FP16")]
)
def test_a_cpu_without_native_reduced_precision_is_refused_naming_what_it_needs(
    precision, needs, monkeypatch
):
    """bf16 and fp16 need different CPU features (a CPU with AVX-512 BF16 may have no fp16):
    the refusal names the right ones."""
    from nextpose import options

    monkeypatch.setattr(options, f"cpu_supports_{precision}", lambda: False)
    with pytest.raises(
        nextpose.InputError, match=f"no native {precision} \\(that needs {needs}\\)"
    ):
        RunOptions(precision=precision).resolve()


def test_benchmark_verb_times_and_recommends(tiny_checkpoint, capsys):
    """`nextpose benchmark`: a row per candidate with its speed and keypoint equality, and the
    fastest fp32 backend whose keypoints equal the plain model's."""
    from nextpose.cli import main

    args = ["benchmark", str(tiny_checkpoint), "--backends", "eager,fast", "--seconds", "0.5"]
    assert main([*args, "--batch-size", "2", "--images", str(IMAGES[0])]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].endswith("batch 2, flip on, crops of 1 image(s)")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:4]}
    assert set(rows) == {"eager", "fast"}
    for row in rows.values():
        assert row[1] == "fp32" and float(row[2]) > 0 and row[5] == "100.0"  # equal to eager
    assert rows["eager"][3] == "1.00"
    fastest = max(rows, key=lambda name: float(rows[name][2]))
    assert f"fastest fp32 with the plain model's keypoints: --backend {fastest}" in out


def test_benchmark_decodes_as_the_model_does(tiny_checkpoint):
    """A DARK model's candidates are timed and compared with DARK's keypoints (found by a
    user-pass review: MSRA's were compared, "100 % equal" where DARK moves them)."""
    from nextpose import benchmark

    dark = nextpose.load(str(tiny_checkpoint), decode="dark")
    crops = np.random.default_rng(0).integers(0, 256, (2, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    seen = []
    network = dark.with_options(backend="fast", precision="fp32").network
    real = type(network).keypoints
    with pytest.MonkeyPatch.context() as m:
        m.setattr(type(network), "keypoints", lambda self, c, f, d="msra": seen.append(d)
                  or real(self, c, f, d))  # fmt: skip
        (timing,) = benchmark.run(dark, [("fast", "fp32")], crops, seconds=0.1)
    assert timing.error is None and set(seen) == {"dark"}


def test_benchmark_refuses_an_unknown_candidate(tiny_checkpoint, capsys):
    from nextpose.cli import main

    assert main(["benchmark", str(tiny_checkpoint), "--backends", "fast:int8"]) == 2
    assert "--backends fast:int8" in capsys.readouterr().err


def test_reduced_precision_casts_weights_once_as_autocast_rounds(tiny_model):
    """bf16 weights cast once give autocast's numbers bit for bit (all layers reduced); each
    keep_fp32 choice runs exactly its layers in fp32 on the reduced layers' outputs."""
    fast = prepare_for_inference(tiny_model, channels_last=True)
    x = torch.randn(3, 3, SIZE[1], SIZE[0]).contiguous(memory_format=torch.channels_last)
    bf16 = torch.bfloat16
    b, h = fast.backbone, fast.head
    stem = torch.nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool)
    layers = torch.nn.Sequential(b.layer1, b.layer2, b.layer3, b.layer4)
    parts = (stem, layers, h.deconv_layers, h.final_layer)
    fp32_parts = {"none": (), "final": (3,), "ends": (0, 3), "head": (0, 2, 3)}
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=bf16):
            autocast = fast(x).float()
        none = ReducedPrecision(fast, bf16, "none")(x)
        torch.testing.assert_close(none, autocast, rtol=0, atol=0)
        assert torch.equal(none, none.bfloat16().float())  # every value a bf16 number
        for keep, kept in fp32_parts.items():
            want = x
            for i, part in enumerate(parts):  # the reference: each part in its precision
                part = part if i in kept else copy.deepcopy(part).to(bf16)
                want = part(want.to(torch.float32 if i in kept else bf16))
            got = ReducedPrecision(fast, bf16, keep)(x)
            assert got.dtype == torch.float32
            torch.testing.assert_close(got, want.float(), rtol=0, atol=0)
            if kept:  # the heatmap layer in fp32: heatmaps not rounded to bf16
                assert not torch.equal(got, got.bfloat16().float())
    assert fast.head.final_layer.weight.dtype == torch.float32  # the source model untouched


def test_precision_parts_benchmark_masks_are_the_keep_fp32_choices(tiny_model):
    """benchmarks/bench_precision_parts.py's masks mean what BENCHMARKS.md says: ``bbbbbbbbb``,
    ``bbbbbbbbf``, ``fbbbbbbbf``, ``fbbbbffff`` are keep_fp32 none/final/ends/head bit for bit,
    and its rounding rows change the network."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import bench_precision_parts as bench
    finally:
        sys.path.pop(0)
    fast = prepare_for_inference(tiny_model, channels_last=True)
    parts = bench.parts_of(fast)
    x = torch.randn(2, 3, SIZE[1], SIZE[0]).contiguous(memory_format=torch.channels_last)
    masks = {"none": "bbbbbbbbb", "final": "bbbbbbbbf", "ends": "fbbbbbbbf", "head": "fbbbbffff"}
    with torch.inference_mode():
        fp32 = fast(x)
        torch.testing.assert_close(bench.Mixed(parts, "f" * 9)(x), fp32, rtol=0, atol=0)
        for keep, mask in masks.items():
            want = ReducedPrecision(fast, torch.bfloat16, keep)(x)
            torch.testing.assert_close(bench.Mixed(parts, mask)(x), want, rtol=0, atol=0)
        for what in ("weights", "inputs"):
            assert not torch.equal(bench.rounded(parts, what)(x), fp32)


def test_keep_fp32_option_reaches_the_network(tiny_checkpoint):
    with pytest.raises(nextpose.InputError, match="keep_fp32"):
        RunOptions(keep_fp32="tail")
    assert RunOptions().keep_fp32 == "ends"
    est = nextpose.load(str(tiny_checkpoint), backend="fast")
    for keep, fp32 in {"none": 0, "final": 1, "ends": 2, "head": 3}.items():
        net = est.with_options(precision="bf16", keep_fp32=keep).network.net
        assert isinstance(net, ReducedPrecision) and net.dtype == torch.bfloat16
        assert net.dtypes.count(torch.float32) == fp32
    assert not isinstance(est.network.net, ReducedPrecision)


def test_with_options_chooses_auto_again(tiny_checkpoint, monkeypatch):
    """An estimator whose auto became onnxruntime (CPU, fp32) gets fast for bf16 or a GPU."""
    est = nextpose.load(str(tiny_checkpoint))
    assert est.backend == auto_backend(torch.device("cpu"), "fp32")
    # "meta" stands for a GPU here (the weights move there without one); it is refused otherwise
    monkeypatch.setattr(nextpose.options, "check_device", lambda device, option="device": None)
    assert est.with_options(device="meta").backend == "fast"
    if cpu_supports_bf16():
        assert est.with_options(precision="bf16").backend == "fast"
    assert est.with_options(backend="eager").with_options(batch_size=2).backend == "eager"


def test_onnx_graph_without_a_writable_cache_warns_and_runs(tiny_checkpoint, monkeypatch, tmp_path):
    """A cache folder that cannot be made: the graph is exported for this process, with a
    warning naming the folder, and gives the keypoints of a cached one."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    est = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    crops = np.random.default_rng(0).integers(0, 256, (2, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    want = runtime.OnnxNetwork(est.model, est.config, est.options).keypoints(crops, True)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "file" / "cache"))
    network = runtime.OnnxNetwork(est.model, est.config, est.options)
    with pytest.warns(UserWarning, match="could not keep the ONNX graph in .*onnx"):
        got = network.keypoints(crops, True)
    np.testing.assert_array_equal(got[0], want[0])


def test_onnx_graph_is_exported_once_per_weights_and_kept(tiny_checkpoint, monkeypatch, tmp_path):
    """The onnxruntime backend exports a graph once: a second network of the same weights (a
    later process) loads it from the cache; other weights get their own; a damaged file is
    replaced; the keypoints stay those of the fresh export."""
    pytest.importorskip("onnxruntime")
    from nextpose import runtime

    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    exports = []
    real = runtime.to_onnx
    monkeypatch.setattr(runtime, "to_onnx", lambda *a, **k: exports.append(1) or real(*a, **k))
    est = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    crops = np.random.default_rng(0).integers(0, 256, (2, SIZE[1], SIZE[0], 3), dtype=np.uint8)
    want = runtime.OnnxNetwork(est.model, est.config, est.options).keypoints(crops, True)
    assert len(exports) == 1 and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    again = runtime.OnnxNetwork(est.model, est.config, est.options).keypoints(crops, True)
    assert len(exports) == 1  # loaded from the cache
    np.testing.assert_array_equal(again[0], want[0])
    (cached,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    cached.write_bytes(b"not a graph")
    repaired = runtime.OnnxNetwork(est.model, est.config, est.options).keypoints(crops, True)
    assert len(exports) == 2 and cached.stat().st_size > 100
    np.testing.assert_array_equal(repaired[0], want[0])
    other = copy.deepcopy(est.model)
    with torch.no_grad():
        other.head.final_layer.bias += 1
    runtime.OnnxNetwork(other, est.config, est.options).keypoints(crops, True)
    assert len(exports) == 3 and len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2


def test_a_dark_models_onnx_graph_is_cached_as_the_msra_one_it_is(
    tiny_checkpoint, monkeypatch, tmp_path
):
    """The onnxruntime backend's graph decodes MSRA whatever the model's decoding (DARK
    decodes its heatmaps outside): a run with ``decode="dark"`` then one with MSRA on the same
    cache give the eager backend's MSRA keypoints, not the DARK ones cached under the same key
    (found by a user-pass review: 791 px off)."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    image = nextpose.read_image(IMAGES[0])
    boxes = [[100, 50, 300, 400], [20, 30, 200, 380]]
    dark = nextpose.load(str(tiny_checkpoint), backend="onnxruntime", decode="dark")
    dark.predict(image, boxes)
    msra = nextpose.load(str(tiny_checkpoint), backend="onnxruntime").predict(image, boxes)
    want = nextpose.load(str(tiny_checkpoint), backend="eager").predict(image, boxes)
    np.testing.assert_array_equal(msra.keypoints, want.keypoints)
