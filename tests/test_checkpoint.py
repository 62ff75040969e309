"""Checkpoints: both published layouts, DDP prefixes, strict mismatch errors, downloads, safety."""

import hashlib
import shutil
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMAGES, oracle_checkpoint

import nextpose
from nextpose import checkpoint
from nextpose.checkpoint import CheckpointError


def _outputs(estimator) -> np.ndarray:
    return estimator.predict(IMAGES[0], [[100, 50, 300, 400]]).keypoints


def test_legacy_and_new_layouts_load_to_identical_models(oracle_weights, oracle_weights_legacy):
    legacy_keys = torch.load(oracle_weights_legacy, weights_only=True)["state_dict"]
    assert any(k.startswith("keypoint_head.") for k in legacy_keys)
    new = nextpose.load("resnext50_coco_256x192", oracle_weights)
    old = nextpose.load("resnext50_coco_256x192", oracle_weights_legacy)
    for (k1, v1), (k2, v2) in zip(
        new.model.state_dict().items(), old.model.state_dict().items(), strict=True
    ):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(2, 3, 256, 192)
    assert torch.equal(new.heatmaps(x), old.heatmaps(x))


def test_ddp_prefix_and_bare_state_dict(tmp_path):
    state = oracle_checkpoint()["state_dict"]
    model = nextpose.PoseNet(nextpose.get_preset("resnext50_coco_256x192").config.model)
    wrapped = {"state_dict": OrderedDict(("module." + k, v) for k, v in state.items()), "meta": {}}
    checkpoint.load_into(model, wrapped, "ddp.pth", "resnext50_coco_256x192")
    assert torch.equal(model.backbone.conv1.weight, state["backbone.conv1.weight"])
    bare = OrderedDict(state)
    bare["data_preprocessor.mean"] = torch.zeros(3)  # dropped, as the reference does
    model = nextpose.PoseNet(nextpose.get_preset("resnext50_coco_256x192").config.model)
    checkpoint.load_into(model, bare, "bare.pth", "resnext50_coco_256x192")
    assert torch.equal(model.head.final_layer.bias, state["head.final_layer.bias"])


def test_checkpoint_of_another_architecture_is_refused_clearly(oracle_weights):
    with pytest.raises(CheckpointError) as err:
        nextpose.load("resnext101_coco_256x192", oracle_weights)
    message = str(err.value)
    assert str(oracle_weights) in message
    assert "resnext101_coco_256x192" in message
    assert "missing keys: backbone.layer3.6.conv1.weight" in message


def test_batchnorm_counters_may_be_absent_and_foreign_entries_are_skipped(tiny_checkpoint):
    """Files from before PyTorch 0.4.1 lack BatchNorm's ``num_batches_tracked``; entries outside
    the network (an EMA copy, a buffer of the loss) are skipped with a warning, as the
    reference's non-strict load skips them; an entry inside the network's modules is not."""
    saved = torch.load(tiny_checkpoint, weights_only=True)
    plain = nextpose.load(str(tiny_checkpoint), backend="eager")
    state = OrderedDict(
        (k.replace("head.", "keypoint_head.", 1), v)
        for k, v in saved["state_dict"].items()
        if not k.endswith("num_batches_tracked")
    )
    state["ema.backbone.conv1.weight"] = torch.zeros(1)
    state["loss.weight"] = torch.ones(17)
    model = nextpose.PoseNet(plain.config.model)
    ignored = r"old\.pth: ignored 2 checkpoint entries outside model 'tiny': ema\."
    with pytest.warns(UserWarning, match=ignored):
        checkpoint.load_into(model, {"state_dict": state}, "old.pth", "tiny")
    for (k1, v1), (k2, v2) in zip(
        model.state_dict().items(), plain.model.state_dict().items(), strict=True
    ):
        assert (k1 == k2 and torch.equal(v1, v2)) or k1.endswith("num_batches_tracked")
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), plain.model(x))
    state["head.extra_buffer"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"unexpected keys: head\.extra_buffer"):
        checkpoint.load_into(model, {"state_dict": state}, "old.pth", "tiny")


def test_tiny_checkpoint_into_big_model_lists_shape_mismatches(tiny_checkpoint):
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatches: backbone\.layer1\.0\.conv1\.weight \(32, 64, 1, 1\) \(model: ",
    ):
        nextpose.load("resnext50_coco_256x192", tiny_checkpoint)


def test_nextpose_checkpoint_carries_its_config(tiny_checkpoint):
    estimator = nextpose.load(tiny_checkpoint)
    assert estimator.config == nextpose.get_preset("tiny_coco_96x64").config
    assert not estimator.model.training
    poses = estimator.predict(IMAGES[1])  # no boxes: the whole image
    assert poses.keypoints.shape == (1, 17, 2) and poses.boxes.shape == (1, 4)


def _published_copy(tiny_checkpoint: Path, folder: Path, wrong_hash: bool = False) -> Path:
    digest = hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest()[:8]
    if wrong_hash:
        digest = "00000000" if digest != "00000000" else "11111111"
    target = folder / f"tiny_coco-{digest}_20200727.pth"
    shutil.copy(tiny_checkpoint, target)
    return target


def test_file_url_download_checks_the_hash(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    source = _published_copy(tiny_checkpoint, tmp_path)
    local = checkpoint.resolve(source.as_uri(), progress=False)
    assert local == checkpoint.cache_path(source.as_uri()) and local.name == source.name
    assert local.parent.parent == tmp_path / "cache" and local.read_bytes() == source.read_bytes()
    estimator = nextpose.load(source.as_uri(), progress=False)
    assert estimator.config.model.input_size == (64, 96)

    bad = _published_copy(tiny_checkpoint, tmp_path, wrong_hash=True)
    with pytest.raises(CheckpointError, match="does not match the sha256 prefix"):
        checkpoint.resolve(bad.as_uri(), progress=False)
    assert not checkpoint.cache_path(bad.as_uri()).exists()
    assert [p.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [source.name]


def test_corrupt_cached_file_is_fetched_again(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    source = _published_copy(tiny_checkpoint, tmp_path)
    partial = checkpoint.cache_path(source.as_uri())
    partial.parent.mkdir(parents=True)
    partial.write_bytes(source.read_bytes()[:1000])  # an interrupted copy left by someone else
    local = checkpoint.resolve(source.as_uri(), progress=False)
    assert local.read_bytes() == source.read_bytes()


def test_unreachable_url_says_how_to_work_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError) as err:
        nextpose.load(
            "tiny_coco_96x64", "http://127.0.0.1:9/tiny-0123abcd_20200727.pth", progress=False
        )
    message = str(err.value)
    assert "could not download http://127.0.0.1:9/tiny-0123abcd_20200727.pth" in message
    assert "--checkpoint PATH" in message


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_is_never_executed(tmp_path):
    marker = tmp_path / "executed"
    payload = _Payload()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "meta": payload}, path)
    with pytest.raises(CheckpointError, match="refused to load"):
        checkpoint.read(path)
    assert not marker.exists()


def test_truncated_file_is_reported(tiny_checkpoint, tmp_path):
    path = tmp_path / "truncated.pth"
    path.write_bytes(tiny_checkpoint.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable PyTorch checkpoint"):
        checkpoint.read(path)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        nextpose.load("tiny_coco_96x64", tmp_path / "missing.pth")


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "model.pth"
    checkpoint.save(target, {"a": torch.ones(2)})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(target, {"a": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_weights_stored_as_views_of_one_buffer_load_as_their_own_tensors(tiny_checkpoint, tmp_path):
    """The model is built without memory and takes the checkpoint's tensors; tensors saved as
    views into one shared buffer (or transposed views) become contiguous parameters of their
    own, not views keeping the whole buffer alive, and predict as the original weights do."""
    original = nextpose.load(str(tiny_checkpoint), backend="eager")
    obj = checkpoint.read(tiny_checkpoint)
    state = checkpoint.extract_state_dict(obj, str(tiny_checkpoint))
    floats = {k: v for k, v in state.items() if v.is_floating_point()}
    buffer = torch.cat([v.reshape(-1) for v in floats.values()])
    views, at = dict(state), 0
    for k, v in floats.items():
        views[k] = buffer[at : at + v.numel()].view(v.shape)
        at += v.numel()
    name = next(k for k, v in floats.items() if v.dim() == 2 or v.dim() == 4)
    views[name] = views[name].clone().transpose(0, 1).contiguous().transpose(0, 1)  # strided
    path = tmp_path / "views.pth"
    checkpoint.save(path, {"state_dict": views, "config": obj["config"], "meta": {}})
    loaded = nextpose.load(str(path), backend="eager")
    for k, t in loaded.model.state_dict().items():
        assert t.is_contiguous(), k
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), k
    got = loaded.predict(IMAGES[0], np.array([[10, 20, 200, 300]], np.float32))
    want = original.predict(IMAGES[0], np.array([[10, 20, 200, 300]], np.float32))
    np.testing.assert_array_equal(got.keypoints, want.keypoints)
    np.testing.assert_array_equal(got.scores, want.scores)


def test_saving_to_a_link_replaces_the_file_it_names(tmp_path):
    """checkpoint.save and save_safetensors write through a link as every output does: the
    file it names is replaced atomically, the link kept."""
    for save, name in ((checkpoint.save, "w.pth"), (checkpoint.save_safetensors, "w.st")):
        real, link = tmp_path / f"real-{name}", tmp_path / name
        real.write_bytes(b"old")
        link.symlink_to(real)
        save(link, {"w": torch.ones(2)})
        assert link.is_symlink() and real.read_bytes() != b"old"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_ctrl_c_during_a_save_is_taken_once_the_file_is_complete(tmp_path, monkeypatch):
    """torch.save turns a KeyboardInterrupt inside its writer into a RuntimeError about its
    stream; the save holds Ctrl-C back instead: the file is written whole, then it stops."""
    import os
    import signal

    real_save = torch.save

    def interrupted(obj, f, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C in the middle of the write
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", interrupted)
    payload = {"state_dict": {"w": torch.arange(1000.0)}, "meta": {"epoch": 3}}
    path = tmp_path / "last.pth"
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, payload)
    assert torch.equal(checkpoint.read(path)["state_dict"]["w"], payload["state_dict"]["w"])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
