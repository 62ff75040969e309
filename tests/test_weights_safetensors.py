"""Safetensors weights (issue 14): reading, writing atomically, converting the published ``.pth``
layouts, a nextpose config carried in the metadata."""

import json
import os
from collections import OrderedDict

import pytest
import torch
from conftest import IMAGES
from safetensors.torch import save_file

import nextpose
from nextpose import checkpoint
from nextpose.checkpoint import CheckpointError
from nextpose.cli import main

RESNEXT50 = "resnext50_coco_256x192"


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_published_layout_converts_bit_identically(oracle_weights_legacy, tmp_path):
    """The 2020 mmpose file layout (``keypoint_head.*``, wrapped with ``meta``) -> safetensors
    -> the same network, bit for bit."""
    out = checkpoint.convert(oracle_weights_legacy, tmp_path / "resnext50.safetensors")
    assert out == tmp_path / "resnext50.safetensors"
    obj = checkpoint.read(out)
    assert all(k.startswith(("backbone.", "head.")) for k in obj["state_dict"])  # renamed
    assert "config" not in obj  # a published file carries no nextpose config
    assert obj["meta"]["converted_from"]["file"] == oracle_weights_legacy.name
    assert obj["meta"]["converted_from"]["sha256"] == checkpoint.sha256_of(oracle_weights_legacy)
    from_pth = nextpose.load(RESNEXT50, oracle_weights_legacy)
    from_st = nextpose.load(RESNEXT50, out)
    _same_weights(from_pth.model, from_st.model)  # so the same heatmaps, bit for bit


def test_nextpose_checkpoint_converts_with_its_config(tiny_checkpoint, tmp_path, capsys):
    out = checkpoint.convert(tiny_checkpoint, tmp_path / "tiny.safetensors")
    src, dst = nextpose.load(tiny_checkpoint), nextpose.load(out)  # no preset needed
    assert dst.config == src.config
    _same_weights(src.model, dst.model)
    box = [[100, 50, 300, 400]]
    assert (src.predict(IMAGES[0], box).keypoints == dst.predict(IMAGES[0], box).keypoints).all()
    assert checkpoint.read(out)["meta"]["preset"] == "tiny_coco_96x64"  # the source's meta, kept
    code = main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--checkpoint", str(out)])
    assert code == 0, capsys.readouterr().err


def test_safetensors_with_a_nextpose_config_round_trips(tmp_path):
    config = nextpose.get_preset("tiny_coco_96x64").config
    torch.manual_seed(4)
    model = nextpose.PoseNet(config.model)
    path = checkpoint.save_safetensors(
        tmp_path / "m.safetensors", model.state_dict(), config.to_dict(), {"epoch": 7}
    )
    obj = checkpoint.read(path)
    assert obj["config"] == json.loads(json.dumps(config.to_dict()))
    assert obj["meta"] == {"epoch": 7}
    assert nextpose.Config.from_dict(obj["config"]) == config
    loaded = nextpose.load(path)
    assert loaded.config == config
    _same_weights(model, loaded.model)


def test_safetensors_from_other_tools(tmp_path):
    """A plain safetensors file (only ``format`` metadata, DDP names, even a ``.pth`` name):
    weights for a preset."""
    config = nextpose.get_preset("tiny_coco_96x64").config
    torch.manual_seed(5)
    model = nextpose.PoseNet(config.model)
    state = {"module." + k: v.contiguous() for k, v in model.state_dict().items()}
    for name in ("other.safetensors", "misnamed.pth"):
        save_file(state, str(tmp_path / name), metadata={"format": "pt", "source": "elsewhere"})
        obj = checkpoint.read(tmp_path / name)
        assert obj["meta"] == {"source": "elsewhere"} and "config" not in obj
        _same_weights(model, nextpose.load("tiny_coco_96x64", tmp_path / name).model)
    with pytest.raises(CheckpointError, match="carries no nextpose config"):
        nextpose.load(tmp_path / "other.safetensors")


def _tiny_state() -> "OrderedDict[str, torch.Tensor]":
    return nextpose.PoseNet(nextpose.get_preset("tiny_coco_96x64").config.model).state_dict()


@pytest.mark.parametrize("keep", [0, 8, 20, 200, -10])
def test_truncated_safetensors(tmp_path, keep):
    path = checkpoint.save_safetensors(tmp_path / "m.safetensors", _tiny_state())
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=r"m\.safetensors: not a readable"):
        nextpose.load("tiny_coco_96x64", path)


def test_bad_metadata(tmp_path):
    state = {"w": torch.zeros(2)}
    save_file(state, str(tmp_path / "a.safetensors"), metadata={"nextpose.config": "{not json"})
    with pytest.raises(CheckpointError, match=r"a\.safetensors: the 'nextpose\.config' entry .*"):
        checkpoint.read(tmp_path / "a.safetensors")
    save_file(state, str(tmp_path / "b.safetensors"), metadata={"nextpose.config": "[1, 2]"})
    with pytest.raises(CheckpointError, match=r"is a JSON list, not an object"):
        checkpoint.read(tmp_path / "b.safetensors")
    with pytest.raises(CheckpointError, match=r"cannot store nextpose\.config as JSON"):
        checkpoint.save_safetensors(tmp_path / "c.safetensors", state, {"x": float("nan")})
    with pytest.raises(CheckpointError, match=r"has keys that are not parameter names"):
        checkpoint.save_safetensors(tmp_path / "d.safetensors", {3: torch.zeros(1)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.safetensors"]


def test_save_safetensors_is_atomic(tmp_path, monkeypatch):
    path = checkpoint.save_safetensors(tmp_path / "m.safetensors", {"w": torch.ones(2)})

    def broken(fd):  # the new file is written in full; syncing it fails
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save_safetensors(path, {"w": torch.zeros(2)})
    monkeypatch.undo()
    assert torch.equal(checkpoint.read(path)["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_convert_refuses_bad_inputs(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="the output is the input file"):
        checkpoint.convert(tiny_checkpoint, tiny_checkpoint)
    with pytest.raises(CheckpointError, match=r"gone\.pth: no such checkpoint file"):
        checkpoint.convert(tmp_path / "gone.pth", tmp_path / "x.safetensors")
    obj = torch.load(tiny_checkpoint, weights_only=True)
    obj["config"]["model"]["input_sise"] = [64, 96]
    torch.save(obj, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match=r"broken\.pth: the config it carries is invalid"):
        checkpoint.convert(tmp_path / "broken.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
