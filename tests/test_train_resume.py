"""``--resume`` listens to what the user said (issue 13, class 8) and names what is wrong with a
resume file (class 6): a changed config is refused with the keys named, except the documented
overridable keys, which are applied and logged; a file without the resume entries is named."""

import json
import logging

import pytest
import torch
from test_robust_training import SETTINGS, _config, small  # noqa: F401  (the fixture)

from nextpose import checkpoint
from nextpose.cli import main
from nextpose.training import RESUME_OVERRIDABLE, TrainingError, train


@pytest.fixture
def finished(small, tmp_path):  # noqa: F811
    """A finished one-epoch run: (its folder, its training data)."""
    run = tmp_path / "run"
    train(_config(epochs=1), small, run, pretrained="none", progress=False)
    return run, small


def test_the_overridable_keys_are_documented():
    assert {"train.epochs", "data.workers"} <= set(RESUME_OVERRIDABLE)


def test_resume_with_a_changed_config_is_refused_naming_the_keys(finished):
    run, data = finished
    before = (run / "last.pth").read_bytes()
    changed = _config(epochs=1, lr=2e-3).override(["data.augment.rotate_prob=0.5"])
    with pytest.raises(TrainingError) as err:
        train(changed, data, run, pretrained="none", resume=True, progress=False)
    message = str(err.value)
    assert f"{run / 'last.pth'} was trained with another config" in message
    assert "data.augment.rotate_prob: saved 0.6, given 0.5" in message
    assert "train.lr: saved 0.001, given 0.002" in message
    assert "only train.epochs, " in message and str(run / "config.toml") in message
    assert (run / "last.pth").read_bytes() == before


def test_resume_with_more_epochs_trains_them_and_says_so(finished, caplog):
    run, data = finished
    caplog.set_level(logging.WARNING, "nextpose")
    summary = train(_config(epochs=2), data, run, pretrained="none", resume=True, progress=False)
    assert summary["epochs"] == 2 and summary["iterations"] == 2
    assert f"resuming {run} with train.epochs=2 (was 1)" in caplog.text
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["epoch"] == 2 and saved["config"]["train"]["epochs"] == 2
    assert "epochs = 2" in (run / "config.toml").read_text()


def test_cli_resume_with_another_model_is_refused(finished, capsys):
    run, data = finished
    settings = [f"train.{k}={json.dumps(v)}" for k, v in (SETTINGS | {"epochs": 1}).items()]
    settings += ["data.workers=0", "model.deconv_channels=48"]
    args = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(data.ann_file),
            "--images", str(data.image_dir), "--out", str(run), "--resume", "--quiet",
            *[x for s in settings for x in ("--set", s)]]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: " in err and "another config: model.deconv_channels: saved 32, given 48." in err


@pytest.mark.parametrize("dropped", [["optimizer"], ["scaler", "rng_torch"]])
def test_a_resume_file_without_its_entries_is_named(finished, dropped):
    run, data = finished
    saved = checkpoint.read(run / "last.pth")
    for key in dropped:
        del saved[key]
    checkpoint.save(run / "last.pth", saved)
    with pytest.raises(TrainingError) as err:
        train(_config(epochs=2), data, run, pretrained="none", resume=True, progress=False)
    message = str(err.value)
    assert f"{run / 'last.pth'}: cannot resume from this file: it has no " in message
    assert all(repr(key) in message for key in dropped)


def test_resume_from_a_weights_only_file_says_what_it_is(finished):
    run, data = finished
    saved = checkpoint.read(run / "last.pth")
    checkpoint.save(run / "last.pth", {k: saved[k] for k in ("state_dict", "config", "epoch")})
    with pytest.raises(TrainingError, match=r"last\.pth: cannot resume .* best\.pth"):
        train(_config(epochs=2), data, run, pretrained="none", resume=True, progress=False)


def test_a_resume_entry_that_does_not_fit_is_named(finished):
    run, data = finished
    saved = checkpoint.read(run / "last.pth")
    saved["optimizer"] = {"state": {}, "param_groups": []}
    checkpoint.save(run / "last.pth", saved)
    with pytest.raises(TrainingError, match=r"last\.pth: cannot resume: its 'optimizer' entry"):
        train(_config(epochs=2), data, run, pretrained="none", resume=True, progress=False)
