"""A run on a cached ONNX graph needs no torch: the onnxruntime backend keys its graphs by the
weights file's sha256, so a later process finds the graph without reading the file, and the
engine, predictor, pipeline and job import torch only for what needs it."""

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE, IMAGES

import nextpose
from nextpose import checkpoint, onnxgraph
from nextpose.config import Config
from nextpose.errors import CheckpointError
from nextpose.options import RunOptions
from nextpose.presets import get_preset

pytest.importorskip("onnxruntime")
TINY = "tiny_coco_96x64"
BOXES = [[30.5, 20.0, 200.0, 300.0, 0.9], [100.0, 40.0, 180.0, 220.0, 0.8]]


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    """An empty cache folder of this test's own."""
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tiny_weights(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny checkpoint's weights alone (no config): for the preset as MODEL."""
    obj = torch.load(tiny_checkpoint, weights_only=True)
    path = tmp_path_factory.mktemp("weights") / "tiny_weights.pth"
    torch.save({"state_dict": obj["state_dict"]}, path)
    return path


def test_the_inference_modules_import_no_torch():
    """The modules a cached-graph run passes through import no torch, and neither do the
    CPU's run options nor a single process's job set-up."""
    code = (
        "import sys\n"
        "from nextpose import distributed, engine, onnxgraph, pipeline, predictor, sharded\n"
        "from nextpose.options import RunOptions\n"
        "options = RunOptions('cpu', 'onnxruntime', batch_size=4).resolve()\n"
        "assert options.backend == 'onnxruntime' and options.device_type == 'cpu'\n"
        "assert distributed.init('cpu')[1] == 'cpu' and distributed.current().world_size == 1\n"
        "assert distributed.gather_objects(3) == [3]\n"
        "from nextpose import checkpoint; checkpoint.cache_dir()\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_run_options_check_other_devices_with_torch():
    with pytest.raises(nextpose.InputError, match="device 'gpu'"):
        RunOptions("gpu")
    assert RunOptions(torch.device("cpu")).device == "cpu"
    assert RunOptions("cuda:1").device_type == "cuda"


@pytest.mark.parametrize("env", [{}, {"TORCH_HOME": "/t/home"}, {"XDG_CACHE_HOME": "/x/cache"}])
def test_the_cache_folder_is_torch_hubs_without_torch(monkeypatch, env):
    """Without torch imported, the cache folder is still ``torch.hub.get_dir()/checkpoints``."""
    monkeypatch.delenv("NEXTPOSE_CACHE")
    for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    want = Path(torch.hub.get_dir()) / "checkpoints"
    monkeypatch.delitem(sys.modules, "torch")
    assert checkpoint.cache_dir() == want


def test_a_cached_graph_is_found_without_reading_the_weights(tiny_weights, cache):
    """The second load of the same file finds its graph: the weights are read only when the
    model is asked for, and everything gives what the first estimator gives."""
    first = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    assert first._model is not None  # nothing cached yet: read, and the graph exported
    want = first.predict(IMAGES[0], BOXES)
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    second = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    assert second._model is None and second.backend == "onnxruntime"
    got = second.predict(IMAGES[0], BOXES)
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.scores, want.scores)
    dark = second.predict(IMAGES[0], BOXES, decode="dark")  # the graph's heatmaps, decoded here
    want_dark = first.predict(IMAGES[0], BOXES, decode="dark")
    np.testing.assert_array_equal(dark.keypoints, want_dark.keypoints)
    other = second.with_options(batch_size=1)
    np.testing.assert_array_equal(other.predict(IMAGES[0], BOXES).keypoints, want.keypoints)
    assert second._model is None and other._model is None
    no_flip = second.predict(IMAGES[0], BOXES, flip=False)  # not cached: exported from the file
    np.testing.assert_array_equal(
        no_flip.keypoints, first.predict(IMAGES[0], BOXES, flip=False).keypoints
    )
    assert second._model is not None
    torch.testing.assert_close(second.model.state_dict(), first.model.state_dict(), rtol=0, atol=0)
    inputs = first.normalize(np.zeros((1, 128, 96, 3), np.uint8))
    torch.testing.assert_close(second.heatmaps(inputs), first.heatmaps(inputs), rtol=0, atol=0)


def test_a_checkpoint_carrying_its_config_is_known_by_its_hash(tiny_checkpoint, cache):
    """A nextpose checkpoint as MODEL: its config is kept in the cache by the file's sha256, so
    a later load needs neither; a damaged record means reading the file again."""
    first = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    want = first.predict(IMAGES[0], BOXES)
    (record,) = (cache / "files").glob("*.json")
    assert record.stem == checkpoint.sha256_of(tiny_checkpoint)
    facts = json.loads(record.read_text())
    assert Config.from_dict(facts["config"]) == first.config
    assert facts["weights"] == checkpoint.weights_digest(first.model)
    again = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    assert again._model is None and again.name == first.name == "tiny"
    np.testing.assert_array_equal(again.predict(IMAGES[0], BOXES).keypoints, want.keypoints)
    damages = [
        "{",
        "[]",
        json.dumps({**facts, "config": {"model": {"input_size": "wide"}}}),
        json.dumps({**facts, "weights": "0" * 64}),
        json.dumps({"config": facts["config"]}),
    ]
    for damage in damages:
        record.write_text(damage)
        read = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
        assert read._model is not None, damage  # the file was read: the record made again
        np.testing.assert_array_equal(read.predict(IMAGES[0], BOXES).keypoints, want.keypoints)
        assert json.loads(record.read_text()) == facts


def test_what_reading_the_file_warned_about_is_said_again_on_a_cached_run(
    tiny_weights, cache, tmp_path
):
    """An entry the load skips is warned about every time, also when the cached graph means
    the file is not read; the warning names the file as it is called now."""
    saved = torch.load(tiny_weights, weights_only=True)
    saved["state_dict"]["ema.weight"] = torch.zeros(1)
    first, moved = tmp_path / "ema.pth", tmp_path / "moved.pth"
    torch.save(saved, first)
    ignored = "ignored 1 checkpoint entry outside model 'tiny_coco_96x64': ema.weight"
    with pytest.warns(UserWarning, match=f"ema.pth: {ignored}"):
        nextpose.load(TINY, first, backend="onnxruntime").warm_up()
    first.rename(moved)
    with pytest.warns(UserWarning, match=f"moved.pth: {ignored}") as said:
        again = nextpose.load(TINY, moved, backend="onnxruntime")
    assert again._model is None and len(said) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a file that skips nothing says nothing, read or not
        for _ in range(2):
            nextpose.load(TINY, tiny_weights, backend="onnxruntime").warm_up()


def test_other_bytes_or_options_are_not_taken_for_the_cached_graph(tiny_weights, cache, tmp_path):
    nextpose.load(TINY, tiny_weights, backend="onnxruntime").warm_up()
    copy = tmp_path / "copy.pth"
    copy.write_bytes(tiny_weights.read_bytes()[:-200])  # other bytes: not the cached file
    with pytest.raises(CheckpointError):  # and read, so its damage is found
        nextpose.load(TINY, copy, backend="onnxruntime")
    assert nextpose.load(TINY, tiny_weights, backend="eager")._model is not None
    crops = nextpose.load(TINY, tiny_weights, backend="onnxruntime", device_crops=True)
    assert crops._model is not None  # device crops cut with torch
    missing = tmp_path / "missing.pth"
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        nextpose.load(TINY, missing, backend="onnxruntime")


def test_the_graph_key_names_weights_flip_config_and_cpu(monkeypatch):
    config = get_preset(TINY).config
    keys = {
        onnxgraph.onnx_cache_path("a", config, flip=True, heatmaps=True),
        onnxgraph.onnx_cache_path("b", config, flip=True, heatmaps=True),
        onnxgraph.onnx_cache_path("a", config, flip=False, heatmaps=True),
        onnxgraph.onnx_cache_path("a", get_preset("resnext50_coco_256x192").config, flip=True),
    }
    assert len(keys) == 4
    same = onnxgraph.onnx_cache_path("a", config, flip=True, heatmaps=True)
    assert same in keys and onnxgraph.cpu_fingerprint() == onnxgraph.cpu_fingerprint()
    monkeypatch.setattr(onnxgraph, "cpu_fingerprint", lambda: "another CPU")
    assert onnxgraph.onnx_cache_path("a", config, flip=True, heatmaps=True) not in keys


CLI = """
import sys
from nextpose.cli import main
code = main(sys.argv[1:])
print("torch imported:", "torch" in sys.modules)
sys.exit(code)
"""


@pytest.mark.slow
@pytest.mark.parametrize("how", ["preset", "checkpoint"])
def test_the_second_predict_and_eval_on_onnxruntime_import_no_torch(
    how, tiny_checkpoint, tiny_weights, tmp_path
):
    """``nextpose predict`` and ``nextpose eval`` with ``--backend onnxruntime``, twice each:
    the first exports the graph into the cache, the second runs on it without torch and
    writes the same bytes."""
    model = [TINY, "--checkpoint", str(tiny_weights)] if how == "preset" else [str(tiny_checkpoint)]
    env = {**os.environ, "NEXTPOSE_CACHE": str(tmp_path / "cache")}

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-c", CLI, *args], env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.strip().splitlines()[-1]

    outputs = []
    for attempt in ("first", "second"):
        out = tmp_path / f"{attempt}.json"
        imported = run("predict", *model, str(IMAGES[0]), str(IMAGES[1]), "--boxes", str(DET_FILE),
                       "--backend", "onnxruntime", "--out", str(out), "--no-progress")  # fmt: skip
        outputs.append((out.read_bytes(), imported))
    assert outputs[0][1] == "torch imported: True"  # it exported the graph
    assert outputs[1][1] == "torch imported: False"
    assert outputs[1][0] == outputs[0][0] and len(json.loads(outputs[0][0])) > 2
    results = []
    for attempt in ("first", "second"):
        out = tmp_path / f"eval-{attempt}"
        imported = run("eval", *model, "--images", str(COCO), "--ann-file", str(ANN_FILE),
                       "--bbox-file", str(DET_FILE), "--backend", "onnxruntime", "--out",
                       str(out), "--no-progress")  # fmt: skip
        assert imported == "torch imported: False"  # the graph was cached by predict
        results.append((out / "keypoints.json").read_bytes())
    assert results[0] == results[1]


def test_an_estimator_reads_a_model_function_once_and_when_needed(tiny_checkpoint, cache):
    """``PoseEstimator(read, ...)``: without a digest the weights are read to be hashed, once;
    assigning ``model`` replaces them."""
    from nextpose.predictor import PoseEstimator

    ready = nextpose.load(str(tiny_checkpoint), backend="onnxruntime")
    calls = []

    def read():
        calls.append(1)
        return copy.deepcopy(ready.model)

    est = PoseEstimator(read, ready.config, backend="onnxruntime")
    assert calls == []
    want = ready.predict(IMAGES[0], BOXES).keypoints
    np.testing.assert_array_equal(est.predict(IMAGES[0], BOXES).keypoints, want)
    assert calls == [1] and est.model is est.model and calls == [1]
    other = copy.deepcopy(ready.model)
    est.model = other
    assert est.model is other and calls == [1]


def test_auto_knows_the_cpu_without_torch(tiny_weights, cache):
    """``auto`` needs PyTorch's SIMD level: kept in the cache with the ONNX graphs, a later
    process knows it without importing torch; where it means onnxruntime (an AVX2 CPU, here a
    record saying so) the whole estimate runs without torch."""
    from nextpose import options

    level = options.cpu_capability()
    assert level == str(torch.backends.cpu.get_cpu_capability())
    assert not options._capability_record().exists()  # kept only with an ONNX graph
    nextpose.load(TINY, tiny_weights, backend="onnxruntime").warm_up()  # the graphs, cached
    assert options._capability_record().read_text() == level
    code = (
        "import sys\nfrom nextpose import options\n"
        "print(options.cpu_capability(), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == [level, "False"], done.stderr[-2000:]
    options._capability_record().write_text("AVX2")
    code = (
        "import sys, nextpose\n"
        f"est = nextpose.load({TINY!r}, {str(tiny_weights)!r})\n"
        f"poses = est.predict({str(IMAGES[0])!r}, {BOXES!r})\n"
        "print(est.backend, len(poses), 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.split() == ["onnxruntime", "2", "False"], done.stderr[-2000:]


@pytest.fixture(scope="module")
def other_weights(tiny_checkpoint, tmp_path_factory) -> Path:
    """Other weights of the tiny preset (the head's convolution weights reversed in order)."""
    obj = torch.load(tiny_checkpoint, weights_only=True)
    state = {k: v.flip(0) if k.startswith("head.") and v.ndim == 4 else v
             for k, v in obj["state_dict"].items()}  # fmt: skip
    path = tmp_path_factory.mktemp("weights") / "other.pth"
    torch.save({"state_dict": state}, path)
    return path


def _eager(weights: Path, flip: bool = True) -> np.ndarray:
    return nextpose.load(TINY, weights, backend="eager").predict(IMAGES[0], BOXES, flip).keypoints


def test_changed_weights_never_land_under_the_files_graph(tiny_weights, other_weights, cache):
    """A model replaced or edited before its first use is exported under its own weights, not
    under the file's: a later load of the file still gives the file's keypoints."""
    est = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    est.model = nextpose.load(TINY, other_weights, backend="eager").model
    np.testing.assert_array_equal(est.predict(IMAGES[0], BOXES).keypoints, _eager(other_weights))
    edited = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    with torch.no_grad():
        edited.model.head.final_layer.weight.mul_(-1)
    edited.predict(IMAGES[0], BOXES)
    fresh = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    assert fresh._model is not None  # no graph of the file's own weights yet: read
    np.testing.assert_array_equal(fresh.predict(IMAGES[0], BOXES).keypoints, _eager(tiny_weights))
    fresh = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    assert fresh._model is None  # now there is
    np.testing.assert_array_equal(fresh.predict(IMAGES[0], BOXES).keypoints, _eager(tiny_weights))
    fresh.model = nextpose.load(TINY, other_weights, backend="eager").model  # built again
    np.testing.assert_array_equal(fresh.predict(IMAGES[0], BOXES).keypoints, _eager(other_weights))


def test_a_file_replaced_under_a_loaded_estimator_is_refused(
    tiny_weights, other_weights, cache, tmp_path
):
    """The weights file changes after ``load`` found its graph: reading the model (for the
    graph of the other flip setting) says so instead of exporting other weights under the
    file's graph, and a later load of the file sees the new weights."""
    path = tmp_path / "w.pth"
    path.write_bytes(tiny_weights.read_bytes())
    nextpose.load(TINY, path, backend="onnxruntime").predict(IMAGES[0], BOXES)  # flip graph
    est = nextpose.load(TINY, path, backend="onnxruntime")
    assert est._model is None
    path.write_bytes(other_weights.read_bytes())
    with pytest.raises(CheckpointError, match=r"w\.pth: the file changed since nextpose\.load"):
        est.predict(IMAGES[0], BOXES, flip=False)
    again = nextpose.load(TINY, path, backend="onnxruntime")
    np.testing.assert_array_equal(again.predict(IMAGES[0], BOXES).keypoints, _eager(path))
    path.write_bytes(tiny_weights.read_bytes())
    back = nextpose.load(TINY, path, backend="onnxruntime")
    assert back._model is None
    np.testing.assert_array_equal(
        back.predict(IMAGES[0], BOXES, flip=False).keypoints, _eager(tiny_weights, flip=False)
    )


def test_either_flip_settings_graph_or_another_decoding_needs_no_read(tiny_weights, cache):
    """Only the no-flip graph cached (``--no-flip`` runs): a later load finds it; so does a
    load that decodes with DARK (the same graph, decoded outside)."""
    nextpose.load(TINY, tiny_weights, backend="onnxruntime").warm_up(flips=(False,))
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1
    est = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    assert est._model is None
    est.predict(IMAGES[0], BOXES, flip=False)
    assert est._model is None
    dark = nextpose.load(TINY, tiny_weights, backend="onnxruntime", decode="dark")
    dark.predict(IMAGES[0], BOXES, flip=False)
    assert dark._model is None and len(list((cache / "onnx").glob("*.onnx"))) == 1


def test_onnxruntime_threads_follow_torch_or_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert onnxgraph._threads() == torch.get_num_threads()
    monkeypatch.delitem(sys.modules, "torch")
    assert onnxgraph._threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    assert onnxgraph._threads() == 0  # ONNX Runtime's own choice
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert onnxgraph._threads() == 0


def test_a_kept_cpu_capability_that_means_nothing_is_not_believed(cache):
    from nextpose import options

    record = options._capability_record()
    record.parent.mkdir(parents=True)
    record.write_text("garbage")
    code = "from nextpose import options; print(options.cpu_capability())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == str(torch.backends.cpu.get_cpu_capability()), done.stderr
    for damaged in ("garbage", b"\xff\xfe\x00"):  # ... and kept again over the damage
        record.write_bytes(damaged.encode() if isinstance(damaged, str) else damaged)
        options.keep_cpu_capability()
        assert record.read_text() == options.cpu_capability()


def test_a_damaged_graph_in_a_cache_that_cannot_be_changed(tiny_weights, cache, monkeypatch):
    """A cached graph that does not load, in a cache where it can be neither removed nor
    replaced: exported again for this process, with a warning."""
    want = nextpose.load(TINY, tiny_weights, backend="onnxruntime").predict(IMAGES[0], BOXES)
    (graph,) = (cache / "onnx").glob("*.onnx")
    graph.write_bytes(b"damaged")
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if self == graph:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr(onnxgraph, "AtomicFile", lambda *a, **k: (_ for _ in ()).throw(
        PermissionError(13, "Permission denied")))  # fmt: skip
    est = nextpose.load(TINY, tiny_weights, backend="onnxruntime")
    with pytest.warns(UserWarning, match="could not keep the ONNX graph"):
        got = est.predict(IMAGES[0], BOXES)
    np.testing.assert_array_equal(got.keypoints, want.keypoints)


def test_run_options_take_a_gpu_index_as_torch_does():
    assert RunOptions(0).device == "cuda:0"
