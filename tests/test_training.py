"""Training on the COCO sample with the tiny model: loss goes down, resume is exact, DDP agrees."""

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ANN_FILE, COCO

import nextpose
from nextpose import get_preset
from nextpose.cli import main
from nextpose.training import Dataset, Trainer, TrainingError, loop, train

DATA = Dataset(ANN_FILE, COCO)


def _config(**train):
    settings = {"epochs": 4, "batch_size": 4, "warmup_iters": 2, "milestones": [3],
                "log_interval": 1, "val_interval": 2, "lr": 1e-3} | train  # fmt: skip
    return get_preset("tiny_coco_96x64").config.override(
        [f"train.{k}={json.dumps(v)}" for k, v in settings.items()] + ["data.workers=0"]
    )


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if "loss" in r]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pth", weights_only=True)["state_dict"]


NO_AUGMENT = [f"data.augment.{p}_prob=0" for p in ("flip", "half_body", "shift", "scale", "rotate")]


def test_training_reduces_the_loss_and_writes_a_run_folder(tmp_path, caplog):
    config = _config(epochs=6, val_interval=3, lr=3e-3).override(NO_AUGMENT)
    caplog.set_level(logging.INFO, "nextpose")
    summary = train(config, DATA, tmp_path, val_data=DATA, pretrained="none", progress=False)
    printed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert [m.split(":")[0] for m in printed] == ["epoch 3/6", "epoch 6/6"]  # each validation's
    assert all(re.search(r": AP \d\.\d{3}, AP50 .*, AR \d\.\d{3}$", m) for m in printed)
    assert summary["epochs"] == 6 and summary["iterations"] == 18  # 12 persons / batch 4
    losses = _losses(tmp_path)
    assert len(losses) == 18
    # Predicting zeros costs ~0.027 here; the heatmaps start near zero, so learning to place the
    # peaks shows as a steady fall below that (measured: -21% after 18 steps).
    assert sum(losses[-3:]) < 0.85 * sum(losses[:3])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val" in r] == [3, 6]
    assert nextpose.Config.from_toml(tmp_path / "config.toml") == config
    assert json.loads((tmp_path / "run.json").read_text().splitlines()[0])["git_sha"]
    for name in ("last.pth", "best.pth"):
        estimator = nextpose.load(tmp_path / name)  # a trained checkpoint is a usable model
        assert estimator.predict(COCO / "000000000785.jpg").keypoints.shape == (1, 17, 2)


def test_resume_after_interruption_gives_identical_weights(tmp_path, monkeypatch):
    config = _config()
    train(config, DATA, tmp_path / "unbroken", pretrained="none", progress=False)

    original = loop.train_one_epoch

    def interrupted(learner, loader, state, *args, **kwargs):
        if state.epoch == 2:
            raise KeyboardInterrupt  # killed during the third epoch
        original(learner, loader, state, *args, **kwargs)

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, DATA, tmp_path / "broken", pretrained="none", progress=False)
    monkeypatch.undo()
    assert torch.load(tmp_path / "broken" / "last.pth", weights_only=True)["epoch"] == 2
    train(config, DATA, tmp_path / "broken", pretrained="none", resume=True, progress=False)

    unbroken, resumed = _weights(tmp_path / "unbroken"), _weights(tmp_path / "broken")
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)
    assert _losses(tmp_path / "unbroken") == _losses(tmp_path / "broken")


def test_bf16_autocast_and_channels_last_train_to_a_loadable_checkpoint(tmp_path):
    config = _config(epochs=1, amp="bf16", channels_last=True)
    train(config, DATA, tmp_path, pretrained="none", device="cpu", progress=False)
    losses = _losses(tmp_path)
    assert len(losses) == 3 and all(0 < loss < 1 for loss in losses)
    weights = _weights(tmp_path)
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    estimator = nextpose.load(tmp_path / "last.pth")
    assert torch.isfinite(
        torch.from_numpy(estimator.predict(COCO / "000000000785.jpg").scores)
    ).all()


def test_fp16_and_sync_bn_need_cuda(tmp_path):
    for key in ('amp="fp16"', "sync_bn=true"):
        with pytest.raises(TrainingError, match="CUDA"):
            train(_config().override([f"train.{key}"]), DATA, tmp_path, pretrained="none",
                  device="cpu", progress=False)  # fmt: skip


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(TrainingError, match=r"last\.pth does not exist"):
        train(_config(), DATA, tmp_path, pretrained="none", resume=True, progress=False)


def test_non_finite_loss_stops_with_the_iteration(tmp_path, monkeypatch):
    from nextpose.training import loss as loss_module

    monkeypatch.setattr(
        loss_module.KeypointMSELoss, "forward", lambda self, *a: torch.tensor(float("nan"))
    )
    with pytest.raises(TrainingError, match=r"loss became nan at iteration 0 \(epoch 1\)"):
        train(_config(), DATA, tmp_path, pretrained="none", progress=False)


@pytest.mark.slow
def test_two_process_ddp_follows_the_single_process_trajectory(tmp_path):
    """2 ranks x batch 2 (gloo, CPU) against 1 process x batch 4, with frozen BatchNorm.

    With frozen BN statistics both runs compute the same mean loss over the same 4 samples per
    step (DistributedSampler gives rank r every other index of one seeded permutation, and each
    sample's augmentation is seeded by (seed, epoch, index)). They differ only in float rounding:
    a mean of two 2-sample means vs one 4-sample mean, gradient all-reduce order and batch-size-
    dependent convolution kernels, each ~1e-7 relative per step; Adam over 6 steps keeps that
    far below the 1e-4 used here (a different sample split or missing gradient averaging moves
    the loss by > 1e-2).
    """
    settings = ["train.epochs=2", "train.warmup_iters=2", "train.log_interval=1",
                "train.freeze_bn=true", "data.workers=0"]  # fmt: skip
    common = [x for s in settings for x in ("--set", s)]
    common += ["--pretrained", "none", "--ann-file", str(ANN_FILE), "--images", str(COCO)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    single = tmp_path / "single"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # in this process, as torchrun's processes run (OMP_NUM_THREADS=1)
    try:
        args = ["train", "tiny_coco_96x64", "--out", str(single), "--set", "train.batch_size=4"]
        assert main([*args, *common, "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    double = tmp_path / "ddp"
    env.pop("PYTHONWARNINGS")  # the warnings the user would see
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "nextpose", "train", "tiny_coco_96x64", "--out", str(double), "--set",
         "train.batch_size=2", *common],
        env=env, timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "bucket view strides" not in ran.stderr  # DDP on 1x1 kernels' identical layouts
    one, two = _losses(single), _losses(double)
    assert len(one) == len(two) == 6
    assert one == pytest.approx(two, rel=1e-4)
    assert json.loads((double / "run.json").read_text())["world_size"] == 2


ONE_RANK_NAN = """
import json, os, sys
from nextpose import get_preset
from nextpose.training import Dataset, TrainingError, loop, train
from nextpose.training import loss as loss_module

ann_file, images, out = sys.argv[1:]
rank = int(os.environ["RANK"])
if rank == 1:  # only this rank's loss goes bad
    real = loss_module.KeypointMSELoss.forward
    loss_module.KeypointMSELoss.forward = lambda self, *a: real(self, *a) * float("nan")
build = loop.build_learner
learners = []
loop.build_learner = lambda *a, **k: learners.append(build(*a, **k)) or learners[-1]
settings = {"epochs": 1, "batch_size": 2, "warmup_iters": 1, "log_interval": 1}
config = get_preset("tiny_coco_96x64").config.override(
    [f"train.{k}={json.dumps(v)}" for k, v in settings.items()] + ["data.workers=0"]
)
try:
    train(config, Dataset(ann_file, images), out, pretrained="none", device="cpu", progress=False)
except TrainingError as e:
    print(f"rank {rank}: broadcast_buffers={learners[0].network.broadcast_buffers}: {e}")
    sys.exit(3)
"""


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank_with_its_message(tmp_path):
    """Every rank checks the mean loss: a NaN on one stops all of them with the same clear
    error (one rank alone would leave the others waiting in DDP's all-reduce, or dying of a
    lost peer). The ranks' BatchNorm statistics are their own until the epoch's end (DDP does
    not broadcast rank 0's before each step, as the reference's wrapper does not)."""
    script = tmp_path / "nan.py"
    script.write_text(ONE_RANK_NAN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(script), str(ANN_FILE), str(COCO), str(tmp_path / "run")],
        env=env, timeout=300, capture_output=True, text=True,
    )  # fmt: skip
    assert ran.returncode != 0
    for rank in (0, 1):
        assert f"rank {rank}: broadcast_buffers=False: the loss became nan at iteration 0" in (
            ran.stdout
        ), ran.stdout[-2000:] + ran.stderr[-3000:]


def test_the_deprecated_trainer_still_trains(tmp_path):
    with pytest.warns(DeprecationWarning, match=r"call nextpose\.training\.train"):
        trainer = Trainer(_config(epochs=1), DATA, tmp_path, pretrained="none", progress=False)
    assert trainer.fit()["epochs"] == 1 and (tmp_path / "last.pth").is_file()


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_loader_workers_start_clean_and_give_the_same_batches(method):
    """Workers started by forkserver/spawn (not fork, which copies a multi-threaded process)
    produce the batches the main process makes itself: the same samples, the same pixels."""
    config = _config().override([f"data.start_method={json.dumps(method)}", "data.workers=2"])
    instances = loop.load_instances(DATA, config, "training")
    cpu = torch.device("cpu")
    loader = loop.build_loader(instances, DATA, config, cpu)
    assert loader.multiprocessing_context.get_start_method() == method
    inline = loop.build_loader(instances, DATA, config.override(["data.workers=0"]), cpu)
    for batch, want in zip(loader, inline, strict=True):
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(batch[key], value), key
            else:
                assert batch[key] == value, key
