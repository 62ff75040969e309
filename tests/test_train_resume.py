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


def test_cli_resume_without_data_options_reads_the_data_of_the_run(finished, capsys):
    """The command the "another config" error suggests works as given: the run's own
    config.toml, its folder, --resume; the data comes from run.json."""
    run, data = finished
    args = ["train", str(run / "config.toml"), "--out", str(run), "--resume", "--quiet",
            "--set", "train.epochs=2"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"resuming with the data the run read (run.json): {data.ann_file.absolute()}" in err
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 2
    starts = [json.loads(line) for line in (run / "run.json").read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["train_data"] == starts[1]["train_data"]
    assert starts[1]["train_data"]["ann_file"] == str(data.ann_file.absolute())


def test_cli_without_data_names_the_options(tmp_path, capsys):
    assert main(["train", "tiny_coco_96x64", "--out", str(tmp_path / "run"), "--images", "x"]) == 2
    assert "error: no training data: give --ann-file, or --coco-root" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_resume_on_other_data_or_without_validation_is_warned_about(finished, tmp_path, caplog):
    run, data = finished
    other = tmp_path / "elsewhere.json"
    other.write_bytes(data.ann_file.read_bytes())
    caplog.set_level(logging.WARNING, "nextpose")
    moved = type(data)(other, data.image_dir)
    train(_config(epochs=2), moved, run, val_data=data, pretrained="none", resume=True,
          progress=False)  # fmt: skip
    said = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert any(f"with other training data: ann_file is {other}" in m for m in said), said
    assert not any("validation" in m for m in said)  # validating from here on changes nothing
    caplog.clear()
    train(_config(epochs=3), moved, run, pretrained="none", resume=True, progress=False)
    said = [r.getMessage() for r in caplog.records if "resuming" in r.getMessage()]
    assert any(f"without validation: it validated on {data.ann_file}" in m for m in said), said
    assert not any("other training data" in m for m in said)


def test_tensorboard_drops_the_steps_logged_after_the_checkpoint_on_resume(finished):
    """The resumed writer marks a restart at the checkpoint's next step, which TensorBoard
    reads as "drop what older files hold from this step on" (a killed run logged them)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run, data = finished
    train(_config(epochs=2), data, run, pretrained="none", resume=True, progress=False)
    files = list((run / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 2  # the first run's, the resumed run's
    restarts = [e.step for f in files for e in EventFileLoader(str(f)).Load()
                if e.HasField("session_log") and e.session_log.status == 1]  # fmt: skip
    assert sorted(restarts) == [1, 2]  # a new run from step 1; the checkpoint was at 1
