"""The training loop: the published recipe on one device or many (torchrun / DDP).

A run folder holds ``config.toml`` (the resolved config), ``run.json`` (data, versions, git SHA),
``metrics.jsonl`` (loss/lr every ``log_interval`` iterations, metrics after each validation),
TensorBoard scalars (``tb/``, when tensorboard is installed), ``last.pth`` (everything needed to
resume, written atomically after every epoch) and ``best.pth`` (the best validation AP).
"""

import json
import math
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from .. import checkpoint
from .._version import __version__
from ..config import Config
from ..data.coco import CocoKeypoints, PersonInstance
from ..data.datasets import TrainDataset, collate_train
from ..errors import TrainingError
from ..evaluation.evaluate import InstancePredictions, predict_instances, score_instances
from ..model import PoseNet
from ..model.tta import normalize
from ..predictor import PoseEstimator
from . import distributed as dist
from .loss import KeypointMSELoss
from .optim import build_optimizer, lr_at, set_lr
from .pretrained import load_pretrained_backbone


@dataclass(frozen=True)
class Dataset:
    """A COCO-format keypoint dataset: annotations, images, and optionally detection boxes."""

    ann_file: Path
    image_dir: Path
    bbox_file: Path | None = None  # validation only; None uses the ground-truth boxes


def _git_sha() -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _unwrap(model: nn.Module) -> PoseNet:
    model = model.module if isinstance(model, DistributedDataParallel) else model
    return getattr(model, "_orig_mod", model)


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


class Trainer:
    """One training run. Build it, then call :meth:`fit`.

    Args:
        config: the full configuration (model, data, train, keypoints).
        train_data: where the training annotations and images are.
        out_dir: the run folder (created; must hold ``last.pth`` when ``resume``).
        val_data: validated every ``train.val_interval`` epochs and after the last; None skips.
        pretrained: trunk initialisation, see :data:`nextpose.training.pretrained.SOURCES`.
        resume: continue the run in ``out_dir`` from its ``last.pth``.
        device: "cpu", "cuda", ...; default CUDA when available (torchrun: the local rank's GPU).
        progress: show a progress bar (rank 0 only).
    """

    def __init__(
        self,
        config: Config,
        train_data: Dataset,
        out_dir: str | Path,
        val_data: Dataset | None = None,
        pretrained: str = "imagenet",
        resume: bool = False,
        device: str | None = None,
        progress: bool = True,
    ):
        self.out_dir = Path(out_dir)
        self.dist, self.device = dist.init(device)
        self.progress = progress and self.dist.is_main
        state = self._resume_state() if resume else None
        if state is not None:
            saved = Config.from_dict(state["config"])
            if saved != config:
                print("note: resuming with the run's saved config", file=sys.stderr)
            config = saved
        self.config = config
        self.train_data, self.val_data = train_data, val_data
        cfg = config.train
        if cfg.sync_bn and self.device.type != "cuda":
            raise TrainingError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm)")
        if cfg.amp == "fp16" and self.device.type != "cuda":
            raise TrainingError("train.amp='fp16' needs CUDA; use 'bf16' on CPU")
        if not resume and (self.out_dir / "last.pth").is_file():
            raise TrainingError(
                f"{self.out_dir / 'last.pth'} exists: continue that run with --resume "
                "(resume=True), or train into another folder"
            )
        # Annotations are parsed and every image is checked for before the network is built or
        # pretrained weights are fetched: a bad file stops the run now, not hours in.
        train_instances = _instances(train_data, config, "training")
        if not train_instances:
            raise TrainingError(f"{train_data.ann_file}: no usable person annotations to train on")
        self.val_instances = _instances(val_data, config, "validation") if val_data else []

        torch.manual_seed(config.data.seed)  # the head's random init is part of the run's seed
        self.model = PoseNet(config.model)
        if state is None:
            self.pretrained = self._init_backbone(pretrained)
        else:
            self.model.load_state_dict(state["state_dict"])
            self.pretrained = state.get("pretrained")
        self.model.to(self.device)
        if cfg.channels_last:
            self.model.to(memory_format=torch.channels_last)
        network: nn.Module = self.model
        if cfg.sync_bn and self.dist.enabled:
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
            self.model = network
        if self.dist.enabled:
            network = DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            network = torch.compile(network)
        self.network = network
        self.loss_fn = KeypointMSELoss()
        self.optimizer = build_optimizer(self.model, cfg, self.dist.world_size)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.epoch, self.iteration, self.best_ap = 0, 0, -math.inf
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            self.epoch, self.iteration = state["epoch"], state["iteration"]
            self.best_ap = state["best_ap"]
            torch.set_rng_state(state["rng_torch"])

        self.dataset = TrainDataset(train_instances, train_data.image_dir, config)
        self.skipped = 0  # samples whose image could not be read (black, weight 0)
        self._bad_images: set[str] = set()
        self.sampler = DistributedSampler(
            self.dataset,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            shuffle=True,
            seed=config.data.seed,
        )
        self.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=config.data.workers,
            collate_fn=collate_train,
            pin_memory=self.device.type == "cuda",
            persistent_workers=config.data.workers > 0,
        )
        self._writer = None
        if self.dist.is_main:
            self._start_run_folder(resume)

    # -- setup -------------------------------------------------------------------------------

    def _resume_state(self) -> dict[str, Any]:
        path = self.out_dir / "last.pth"
        if not path.is_file():
            raise TrainingError(f"--resume: {path} does not exist; nothing to resume")
        return checkpoint.read(path)

    def _init_backbone(self, pretrained: str) -> str | None:
        # Rank 0 downloads first so that the other ranks find the file in the cache.
        if not self.dist.is_main:
            dist.barrier()
        loaded = load_pretrained_backbone(self.model.backbone, pretrained, self.config.model)
        if self.dist.is_main:
            dist.barrier()
        return loaded

    def _start_run_folder(self, resume: bool) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.out_dir.glob(".*.pth.*.tmp"):  # a run killed while saving left these
            stale.unlink(missing_ok=True)
        self._trim_log()
        (self.out_dir / "config.toml").write_text(self.config.to_toml())
        info = {
            "nextpose": __version__,
            "git_sha": _git_sha(),
            "command": sys.argv,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "train_data": {k: str(v) for k, v in vars(self.train_data).items()},
            "val_data": {k: str(v) for k, v in vars(self.val_data).items()}
            if self.val_data
            else None,
            "pretrained": self.pretrained,
            "resumed_at_epoch": self.epoch if resume else None,
        }
        with open(self.out_dir / "run.json", "a") as f:
            f.write(json.dumps(info) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.out_dir / "tb"))
        except ImportError:
            print("note: install tensorboard for training curves (pip install tensorboard)",
                  file=sys.stderr)  # fmt: skip

    def _trim_log(self) -> None:
        """Drop the ``metrics.jsonl`` records a killed run wrote after its last checkpoint (they
        are written again on resume) and a half-written last line."""
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("iteration", 0) <= self.iteration:
                kept.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)

    # -- the loop ----------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train from the current epoch to ``train.epochs``; returns a summary."""
        cfg = self.config.train
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                if self.dist.enabled and not cfg.sync_bn:
                    dist.average_buffers(self.model)
                metrics = None
                done = self.epoch + 1
                if self.val_data is not None and (
                    done % cfg.val_interval == 0 or done == cfg.epochs
                ):
                    metrics = self.validate()
                self.epoch = done
                if self.dist.is_main:
                    self._save(metrics)
                dist.barrier()
        finally:
            if self._writer is not None:
                self._writer.close()
        return {"epochs": self.epoch, "iterations": self.iteration, "best_ap": self.best_ap,
                "skipped_samples": self.skipped, "out_dir": str(self.out_dir)}  # fmt: skip

    def _train_epoch(self) -> None:
        cfg = self.config.train
        self.sampler.set_epoch(self.epoch)
        self.dataset.set_epoch(self.epoch)
        _set_train_mode(self.network, cfg.freeze_bn)
        bar = tqdm(self.loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="it",
                   disable=not self.progress, file=sys.stderr, dynamic_ncols=True)  # fmt: skip
        start = time.perf_counter()
        skipped = 0
        for batch in bar:
            skipped += self._report_unreadable(batch["error"])
            lr = lr_at(cfg, self.iteration, self.epoch, self.dist.world_size)
            set_lr(self.optimizer, lr)
            loss = self.train_step(batch["image"], batch["heatmaps"], batch["weights"])
            self.iteration += 1
            if self.iteration % cfg.log_interval == 0 or self.iteration == 1:
                value = dist.all_reduce_mean(loss.detach()).item()
                bar.set_postfix(loss=f"{value:.3g}", lr=f"{lr:.2e}")
                self._log({"epoch": self.epoch + 1, "iteration": self.iteration, "loss": value,
                           "lr": lr, "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
        if skipped:
            print(f"warning: epoch {self.epoch + 1}: {skipped} samples had unreadable images "
                  "and were skipped", file=sys.stderr)  # fmt: skip
            self._log({"epoch": self.epoch + 1, "iteration": self.iteration,
                       "skipped_samples": skipped})  # fmt: skip

    def train_step(
        self, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """One optimisation step on a batch of uint8 crops (N, h, w, 3), target heatmaps and
        keypoint weights, at the optimizer's current learning rate; returns the loss."""
        cfg = self.config.train
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        model = self.config.model
        images = normalize(
            images.to(self.device, non_blocking=True), model.pixel_mean, model.pixel_std
        )
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = targets.to(self.device, non_blocking=True)
        weights = weights.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            heatmaps = self.network(images)
        loss = self.loss_fn(heatmaps.float(), targets, weights)
        if not torch.isfinite(loss):
            last = self.out_dir / "last.pth"
            raise TrainingError(
                f"the loss became {loss.item()} at iteration {self.iteration} (epoch "
                f"{self.epoch + 1}); lower train.lr or check the data. "
                + (f"The last good checkpoint is {last}" if last.is_file() else
                   "No checkpoint was written yet.")
            )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    def _report_unreadable(self, errors: list[str]) -> int:
        """Count a batch's unreadable images; name each file the first time it fails."""
        count = 0
        for error in errors:
            if error:
                count += 1
                if error not in self._bad_images:
                    self._bad_images.add(error)
                    print(f"warning: skipped {error}", file=sys.stderr)
        self.skipped += count
        return count

    def validate(self) -> dict[str, float]:
        """COCO AP/AR of the current weights; every rank predicts a share, rank 0 scores."""
        assert self.val_data is not None
        config = self.config
        instances = self.val_instances
        share = instances[self.dist.rank :: self.dist.world_size]
        estimator = PoseEstimator(self.model, config, device=self.device)
        pred = predict_instances(
            estimator, share, self.val_data.image_dir, workers=config.data.workers, progress=False
        )
        parts = dist.gather_objects(pred)
        metrics: dict[str, float] | None = None
        if self.dist.is_main:
            merged = _interleave(parts, len(instances))
            metrics = score_instances(
                instances, merged, self.val_data.ann_file, config.keypoints.sigmas_array()
            )
            self._log({"epoch": self.epoch + 1, "iteration": self.iteration, "val": metrics})
        _set_train_mode(self.network, config.train.freeze_bn)
        return dist.broadcast_object(metrics)

    # -- outputs -----------------------------------------------------------------------------

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._writer is not None:
            step = record["iteration"]
            for key in ("loss", "lr"):
                if key in record:
                    self._writer.add_scalar(f"train/{key}", record[key], step)
            for key, value in record.get("val", {}).items():
                self._writer.add_scalar(f"val/{key}", value, step)

    def _save(self, metrics: dict[str, float] | None) -> None:
        state = {
            "state_dict": _unwrap(self.model).state_dict(),
            "config": self.config.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_ap": self.best_ap,
            "pretrained": self.pretrained,
            "metrics": metrics,
            "rng_torch": torch.get_rng_state(),  # data randomness comes from (seed, epoch, index)
        }
        if metrics is not None and metrics["AP"] > self.best_ap:
            self.best_ap = metrics["AP"]
            state["best_ap"] = self.best_ap
            weights = {k: state[k] for k in ("state_dict", "config", "epoch", "metrics")}
            self._write(self.out_dir / "best.pth", weights)
        self._write(self.out_dir / "last.pth", state)

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        """Save atomically; a failed write (a full disk) stops the run and keeps the old file."""
        try:
            checkpoint.save(path, payload)
        except OSError as e:
            kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was saved"
            raise TrainingError(
                f"could not write {path} at the end of epoch {self.epoch} ({e.strerror or e}); "
                f"{kept}. Free some space and continue with --resume"
            ) from e


def _instances(data: Dataset, config: Config, what: str) -> list[PersonInstance]:
    """The person instances of a dataset; every image they are in must exist (else stop now)."""
    coco = CocoKeypoints(data.ann_file, config.model.num_keypoints)
    if data.bbox_file is None:
        instances = coco.ground_truth_instances()
    else:
        instances = coco.detection_instances(data.bbox_file)
    folder = Path(data.image_dir)
    if not folder.is_dir():
        raise TrainingError(f"{folder}: no such {what} image folder")
    files = dict.fromkeys(i.image_file for i in instances)
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        more = f" ... ({len(missing)} in all)" if len(missing) > 5 else ""
        raise TrainingError(
            f"{len(missing)} of the {len(files)} {what} images named in {data.ann_file} are not "
            f"in {folder}: {', '.join(missing[:5])}{more}"
        )
    return instances


def _interleave(parts: list[InstancePredictions], n: int) -> InstancePredictions:
    """Undo the ``instances[rank::world]`` split: back to dataset order."""
    world = len(parts)
    out = InstancePredictions(
        *(np.zeros((n, *a.shape[1:]), a.dtype) for a in vars(parts[0]).values())
    )
    for rank, part in enumerate(parts):
        for name, array in vars(part).items():
            getattr(out, name)[rank::world] = array
    return out


def train(
    config: Config,
    train_data: Dataset,
    out_dir: str | Path,
    val_data: Dataset | None = None,
    pretrained: str = "imagenet",
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a model; see :class:`Trainer`. Returns ``{"epochs", "iterations", "best_ap", ...}``."""
    trainer = Trainer(config, train_data, out_dir, val_data, pretrained, resume, device, progress)
    try:
        return trainer.fit()
    finally:
        dist.shutdown()
