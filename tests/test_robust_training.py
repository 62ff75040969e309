"""Training with bad data and failures (issue 7): missing and unreadable images, bad validation
files, a full disk while saving, a non-finite loss, damaged resume state. SIGKILL at random
points is tested in test_kill_resume.py."""

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import ANN_FILE, COCO, IMAGES
from robust_files import coco_json, image_copy, truncated, write_json

from nextpose import checkpoint, get_preset
from nextpose.checkpoint import CheckpointError
from nextpose.cli import main
from nextpose.data.coco import AnnotationError
from nextpose.training import Dataset, TrainingError, loop, train
from nextpose.training import loss as loss_module

SETTINGS = {"epochs": 2, "batch_size": 4, "warmup_iters": 2, "milestones": [], "log_interval": 1,
            "val_interval": 1, "lr": 1e-3}  # fmt: skip
# Two of the sample images: 1 + 2 persons, one iteration of batch 4 per epoch.
SMALL_IMAGES = (0, 1)


def _config(**train):
    settings = SETTINGS | train
    return get_preset("tiny_coco_96x64").config.override(
        [f"train.{k}={json.dumps(v)}" for k, v in settings.items()] + ["data.workers=0"]
    )


@pytest.fixture
def small(tmp_path) -> Dataset:
    """Annotations of two sample images (3 persons), with the images copied to a folder."""
    data = coco_json()
    keep = {int(IMAGES[i].stem) for i in SMALL_IMAGES}
    data["images"] = [img for img in data["images"] if img["id"] in keep]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in keep]
    folder = tmp_path / "images"
    for i in SMALL_IMAGES:
        image_copy(folder, i)
    return Dataset(write_json(tmp_path / "train.json", data), folder)


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """Any attempt to fetch pretrained weights fails the test."""
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained weights were fetched before the data was checked")

    monkeypatch.setattr(checkpoint, "download", refuse)


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


# -- images --------------------------------------------------------------------------------------


def test_missing_training_image_is_found_before_training_starts(small, tmp_path, no_download):
    (small.image_dir / IMAGES[1].name).unlink()
    with pytest.raises(TrainingError) as err:
        # "imagenet" would download trunk weights: the data check must come first.
        train(_config(), small, tmp_path / "run", pretrained="imagenet", progress=False)
    message = str(err.value)
    assert f"1 of the 2 training images named in {small.ann_file} are not in" in message
    assert IMAGES[1].name in message
    assert not (tmp_path / "run").exists()


def test_missing_image_folder(small, tmp_path, no_download):
    bad = Dataset(small.ann_file, tmp_path / "nowhere")
    with pytest.raises(TrainingError, match=r"nowhere: no such training image folder"):
        train(_config(), bad, tmp_path / "run", pretrained="imagenet", progress=False)


def test_missing_validation_image_is_found_before_training_starts(small, tmp_path, no_download):
    val = Dataset(ANN_FILE, small.image_dir)  # holds 2 of the 4 images it names
    with pytest.raises(TrainingError, match=r"2 of the 4 validation images named in .* are not"):
        train(_config(), small, tmp_path / "run", val, pretrained="imagenet", progress=False)


def test_malformed_validation_file_is_found_before_training_starts(small, tmp_path, no_download):
    bad = tmp_path / "val.json"
    bad.write_text(ANN_FILE.read_text()[:500])
    with pytest.raises(AnnotationError, match=r"val\.json: not valid JSON"):
        train(_config(), small, tmp_path / "run", Dataset(bad, COCO), "imagenet",
              progress=False)  # fmt: skip


def test_a_validation_file_the_metric_refuses_is_found_before_training_starts(small, tmp_path):
    """A ground truth the box reader takes but the metric refuses (here: no 'categories') stops
    the run before it starts, not at the first validation, an epoch in."""
    data = coco_json()
    del data["categories"]
    val = Dataset(write_json(tmp_path / "val.json", data), COCO)
    with pytest.raises(AnnotationError, match=r"val\.json: no 'categories' list"):
        train(_config(), small, tmp_path / "run", val, pretrained="none", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_names_the_missing_image(small, tmp_path, capsys):
    (small.image_dir / IMAGES[0].name).unlink()
    args = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(small.ann_file),
            "--images", str(small.image_dir), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"error: 1 of the 2 training images named in {small.ann_file}" in err
    assert IMAGES[0].name in err


def test_unreadable_training_image_is_skipped_and_counted(small, tmp_path, caplog):
    (small.image_dir / IMAGES[1].name).write_bytes(truncated(IMAGES[1], 0.5))  # 2 persons
    caplog.set_level(logging.WARNING, "nextpose")
    summary = train(_config(), small, tmp_path / "run", pretrained="none", progress=False)
    assert summary["epochs"] == 2 and summary["skipped_samples"] == 4  # 2 persons x 2 epochs
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    bad = f"skipped {small.image_dir / IMAGES[1].name}: not a readable"
    assert sum(w.startswith(bad) for w in warned) == 1
    assert "epoch 1: 2 samples had unreadable images and were skipped" in warned
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["skipped_samples"] for r in records if "skipped_samples" in r] == [2, 2]
    assert all(torch.isfinite(torch.tensor(_losses(tmp_path / "run"))))


def test_unreadable_validation_image_is_skipped(small, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "nextpose")
    val_folder = tmp_path / "val"
    for i in SMALL_IMAGES:
        image_copy(val_folder, i)
    (val_folder / IMAGES[0].name).write_text("not a jpeg")
    val = Dataset(small.ann_file, val_folder)
    summary = train(_config(epochs=1), small, tmp_path / "run", val, "none", progress=False)
    assert summary["epochs"] == 1
    assert f"skipped {val_folder / IMAGES[0].name}" in caplog.text


# -- saving --------------------------------------------------------------------------------------


# A full disk as Python's file write reports it, and as torch's zip writer does (RuntimeError).
NO_SPACE = OSError(errno.ENOSPC, "No space left on device")
ZIP_WRITER_FAILED = RuntimeError(
    "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
    "data/3: file write failed"
)


def _disk_full_on_save(monkeypatch, when: int, error: Exception = NO_SPACE) -> None:
    """torch.save writes part of the file, then fails with ``error``, from save number ``when``."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) < when:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize(
    ("error", "reason"),
    [(NO_SPACE, "No space left on device"), (ZIP_WRITER_FAILED, "file write failed")],
    ids=["OSError", "zip-writer-RuntimeError"],
)
def test_disk_full_while_saving_is_reported_and_the_last_checkpoint_kept(
    small, tmp_path, monkeypatch, error, reason
):
    run = tmp_path / "run"
    _disk_full_on_save(monkeypatch, when=2, error=error)  # the save after epoch 2
    with pytest.raises(TrainingError) as err:
        train(_config(), small, run, pretrained="none", progress=False)
    message = str(err.value)
    assert f"could not write {run / 'last.pth'} at the end of epoch 2" in message
    assert reason in message and "the previous last.pth is intact" in message
    assert "--resume" in message
    monkeypatch.undo()
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in run.glob("*.pth*")) == ["last.pth"]  # no partial file left
    summary = train(_config(), small, run, pretrained="none", resume=True, progress=False)
    assert summary["epochs"] == 2


def test_a_write_failing_inside_torch_save_is_reported_as_what_it_was(small, tmp_path, monkeypatch):
    """torch.save turns its file's failed write into "unexpected pos ..."; the error names the
    write's own reason (a full disk, a quota) instead."""
    import errno
    import os

    real_fdopen = os.fdopen

    class Full:  # the disk fills after the first 4 KiB
        def __init__(self, file):
            self.file, self.written = file, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

    def fdopen(fd, mode, *args, **kwargs):  # binary: the checkpoint (config.toml is text)
        file = real_fdopen(fd, mode, *args, **kwargs)
        return Full(file) if "b" in mode else file

    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(TrainingError) as err:
        train(_config(), small, tmp_path / "run", pretrained="none", progress=False)
    assert "at the end of epoch 1 (No space left on device); nothing was saved" in str(err.value)


def test_disk_full_on_the_first_save_through_the_cli(small, tmp_path, monkeypatch, capsys):
    _disk_full_on_save(monkeypatch, when=1)
    args = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(small.ann_file),
            "--images", str(small.image_dir), "--out", str(tmp_path / "run"), "--quiet",
            "--val-ann-file", str(small.ann_file),  # its AP is logged before the failed save
            "--set", "train.epochs=1", "--set", "data.workers=0"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error: could not write" in err and "nothing was saved" in err
    assert "start the run again (without --resume)" in err
    assert not list((tmp_path / "run").glob("*.pth*"))
    monkeypatch.undo()
    assert main(args) == 0  # as it said: the same command again
    assert "stopped before it finished an epoch" in capsys.readouterr().err
    assert (tmp_path / "run" / "last.pth").is_file()


def test_a_run_killed_while_it_starts_is_started_again(small, tmp_path, monkeypatch):
    import nextpose.training.run_folder as run_folder

    def killed(path, text):  # run.json is written, config.toml is not
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder, "atomic_write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_config(epochs=1), small, tmp_path / "run", pretrained="none", progress=False)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["run.json"]
    assert train(_config(epochs=1), small, tmp_path / "run", pretrained="none",
                 progress=False)["epochs"] == 1  # fmt: skip


def test_a_finished_run_is_never_overwritten(small, tmp_path):
    run = tmp_path / "run"
    train(_config(epochs=1), small, run, pretrained="none", progress=False)
    before = (run / "last.pth").read_bytes()
    held = r"already holds a training run \(last\.pth, metrics\.jsonl\).*continue that run with"
    with pytest.raises(TrainingError, match=held + " --resume"):
        train(_config(epochs=1), small, run, pretrained="none", progress=False)
    assert (run / "last.pth").read_bytes() == before


# -- resuming ------------------------------------------------------------------------------------


def test_resume_from_a_damaged_checkpoint_names_it(small, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match=r"last\.pth: not a readable PyTorch checkpoint"):
        train(_config(), small, run, pretrained="none", resume=True, progress=False)


def test_resume_cleans_what_a_killed_run_left(small, tmp_path, monkeypatch):
    run = tmp_path / "run"
    original = loop.train_one_epoch

    def stopped_in_epoch_2(learner, loader, state, *args, **kwargs):
        if state.epoch == 1:
            raise KeyboardInterrupt
        original(learner, loader, state, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(), small, run, pretrained="none", progress=False)
    monkeypatch.undo()
    (run / ".last.pth.x1y2.tmp").write_bytes(b"PK\x03\x04 cut off by SIGKILL")
    with open(run / "metrics.jsonl", "a") as f:  # records of the killed epoch, a torn last line
        f.write(json.dumps({"epoch": 2, "iteration": 2, "loss": 0.5}) + "\n")
        f.write('{"epoch": 2, "iteration": 3, "lo')
    train(_config(), small, run, pretrained="none", resume=True, progress=False)
    assert not list(run.glob(".*.tmp"))
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]
    assert 0.5 not in _losses(run)


# -- non-finite loss -----------------------------------------------------------------------------


def test_nan_loss_stops_clearly_and_keeps_the_last_checkpoint(small, tmp_path, monkeypatch):
    real = loss_module.KeypointMSELoss.forward
    calls = []

    def nan_on_the_second_iteration(self, *args):
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 2 else real(self, *args)

    monkeypatch.setattr(loss_module.KeypointMSELoss, "forward", nan_on_the_second_iteration)
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train(_config(), small, run, pretrained="none", progress=False)
    message = str(err.value)
    assert "the loss became nan at iteration 1 (epoch 2); lower train.lr" in message
    assert f"The last good checkpoint is {run / 'last.pth'}" in message
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1


def test_nan_loss_before_any_checkpoint_through_the_cli(small, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        loss_module.KeypointMSELoss, "forward", lambda self, *a: torch.tensor(float("inf"))
    )
    args = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(small.ann_file),
            "--images", str(small.image_dir), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "error: the loss became inf at iteration 0 (epoch 1)" in err
    assert "No checkpoint was written yet." in err


def test_a_training_crop_that_cannot_be_cut_skips_the_sample(monkeypatch):
    """A crop OpenCV's warp cannot make (an image side >= 32767 pixels) is a per-sample error:
    the sample becomes the unreadable stand-in (weights 0), the epoch goes on."""
    from nextpose.data import transforms
    from nextpose.data.coco import CocoKeypoints
    from nextpose.data.datasets import TrainDataset
    from nextpose.errors import ImageError
    from nextpose.presets import get_preset

    config = get_preset("tiny_coco_96x64").config
    instances = CocoKeypoints(ANN_FILE).ground_truth_instances()
    data = TrainDataset(instances, ANN_FILE.parent, config)

    def refuse(image, matrix, size, source="the image"):
        raise ImageError(f"{source}: the 40000 x 1000 image cannot be cropped")

    monkeypatch.setattr(transforms, "warp_to_crop", refuse)
    item = data[0]
    assert "cannot be cropped" in item["error"] and instances[0].image_file in item["error"]
    assert not item["weights"].any()


# -- what a new run may find in its folder -------------------------------------------------------


def test_a_run_stopped_between_its_first_best_and_last_checkpoints_is_started_again(
    small, tmp_path, monkeypatch, caplog
):
    """Epoch 1 writes best.pth, then last.pth: stopped between the two (killed, a full disk),
    the folder holds that epoch's best.pth and no last.pth; a new run starts again there."""
    from nextpose.training.run_folder import RunFolder

    run, save = tmp_path / "run", RunFolder.save

    def stopped(self, name, payload, epoch):
        if name == "last.pth":
            raise KeyboardInterrupt
        save(self, name, payload, epoch)

    monkeypatch.setattr(RunFolder, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        train(_config(), small, run, val_data=small, pretrained="none", progress=False)
    monkeypatch.undo()
    assert (run / "best.pth").is_file() and not (run / "last.pth").exists()
    caplog.set_level(logging.WARNING, "nextpose")
    summary = train(_config(), small, run, val_data=small, pretrained="none", progress=False)
    assert summary["epochs"] == 2 and (run / "last.pth").is_file()
    assert "stopped before it finished an epoch (no last.pth was saved)" in caplog.text


def test_a_run_stopped_before_its_first_checkpoint_is_started_again(
    small, tmp_path, monkeypatch, caplog
):
    run = tmp_path / "run"

    def killed(*args, **kwargs):  # after the epoch's steps were logged, before last.pth
        (run / ".last.pth.k1ll.tmp").write_bytes(b"PK\x03\x04 cut off")
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_config(), small, run, pretrained="none", progress=False)
    monkeypatch.undo()
    assert _losses(run) and not (run / "last.pth").exists()
    with pytest.raises(TrainingError, match="stopped before it finished an epoch: start it again"):
        train(_config(), small, run, pretrained="none", resume=True, progress=False)
    caplog.set_level(logging.WARNING, "nextpose")
    summary = train(_config(), small, run, pretrained="none", progress=False)
    assert summary["epochs"] == 2
    assert "stopped before it finished an epoch (no last.pth was saved)" in caplog.text
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "loss" in r] == [1, 2]  # each step logged once
    assert len((run / "run.json").read_text().splitlines()) == 2  # both starts recorded
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("name", ["config.toml", "run.json", "metrics.jsonl"])
def test_files_no_run_wrote_are_never_replaced(small, tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text("# my notes\n")
    with pytest.raises(TrainingError, match=rf"holds {name}, not written by a nextpose run"):
        train(_config(), small, run, pretrained="none", progress=False)
    assert sorted(p.name for p in run.iterdir()) == [name]
    assert (run / name).read_text() == "# my notes\n"


def test_an_epoch_of_unreadable_images_stops_the_run(small, tmp_path):
    for i in SMALL_IMAGES:
        (small.image_dir / IMAGES[i].name).write_bytes(truncated(IMAGES[i], 0.3))
    with pytest.raises(TrainingError, match="epoch 1: the image of every sample was unreadable"):
        train(_config(), small, tmp_path / "run", pretrained="none", progress=False)
    assert not list((tmp_path / "run").glob("*.pth"))


def test_a_validation_file_without_persons_is_refused_before_training(small, tmp_path):
    data = coco_json()
    data["annotations"] = []
    val = Dataset(write_json(tmp_path / "val.json", data), small.image_dir)
    with pytest.raises(TrainingError, match=r"val\.json: no persons to validate on.*--no-val"):
        train(_config(), small, tmp_path / "run", val, pretrained="none", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unknown_pretrained_name_lists_the_names(small, tmp_path, capsys):
    args = ["train", "tiny_coco_96x64", "--pretrained", "imagenet21k", "--ann-file",
            str(small.ann_file), "--images", str(small.image_dir),
            "--out", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--pretrained imagenet21k: neither a name (imagenet, imagenet-2021, torchvision, " in err
    assert not (tmp_path / "run").exists()


def test_resuming_on_another_number_of_processes_is_warned_about(small, tmp_path, caplog):
    from nextpose.training import build_learner, build_model, restore_checkpoint

    run = tmp_path / "run"
    train(_config(epochs=1), small, run, pretrained="none", progress=False)
    saved = checkpoint.read(run / "last.pth")
    assert saved["world_size"] == 1
    model, _ = build_model(_config(), "cpu")
    learner = build_learner(model, _config().train, "cpu")
    caplog.set_level(logging.WARNING, "nextpose")
    parts = (model, learner.optimizer, learner.scaler)
    restore_checkpoint(saved, run / "last.pth", *parts, world_size=1)
    assert "processes" not in caplog.text
    state = restore_checkpoint(saved, run / "last.pth", *parts, world_size=4)
    assert state.world_size == 4
    assert "on 4 processes; it trained on 1 until now" in caplog.text


def test_ctrl_c_while_a_command_starts_ends_it_without_a_traceback(tmp_path, monkeypatch, capsys):
    from nextpose.cli import train as train_verb

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_verb, "resolve_config", interrupted)
    assert main(["train", "tiny_coco_96x64", "--out", str(tmp_path / "run")]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"
    assert not (tmp_path / "run").exists()


def test_a_finished_epoch_whose_weights_are_gone_is_not_trained_over(small, tmp_path):
    run = tmp_path / "run"
    train(_config(epochs=1), small, run, pretrained="none", progress=False)  # no validation
    (run / "last.pth").unlink()
    before = (run / "metrics.jsonl").read_text()
    assert '"epoch_end": true' in before
    with pytest.raises(TrainingError, match=r"already holds a training run \(metrics\.jsonl\)"):
        train(_config(epochs=1), small, run, pretrained="none", progress=False)
    assert (run / "metrics.jsonl").read_text() == before
    with pytest.raises(TrainingError, match=r"last\.pth does not exist; nothing to resume"):
        train(_config(epochs=1), small, run, pretrained="none", resume=True, progress=False)
