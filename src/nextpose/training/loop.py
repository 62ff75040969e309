"""The training loop: the published recipe on one device or many (torchrun / DDP).

Read :func:`train` top to bottom: it checks the data, takes the run folder, builds the model
(:func:`build_model`), what trains it (:func:`build_learner`) and the data (:func:`build_loader`),
then alternates :func:`train_one_epoch` and :func:`validate`, saving a checkpoint after every
epoch. The builders are public, so a custom loop (``benchmarks/bench_overfit.py``) is made of the
same parts. The run folder's files are described in :mod:`nextpose.training.run_folder`.
"""

import functools
import logging
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from .._version import __version__
from ..checkpoint import read as read_checkpoint
from ..config import Config, TrainConfig
from ..data.coco import CocoKeypoints, PersonInstance
from ..data.datasets import TrainDataset, collate_train, watch_trainer
from ..errors import TrainingError
from ..evaluation.evaluate import (
    EvalSet,
    predict_instances_sharded,
    read_eval_set,
    score_instances,
)
from ..model import PoseNet
from ..model.backbone import Bottleneck
from ..model.tta import normalize
from ..predictor import PoseEstimator
from ..progress import Progress
from . import distributed as dist
from .distributed import DistInfo
from .loss import KeypointMSELoss
from .optim import build_optimizer, lr_at, set_lr
from .pretrained import load_pretrained_backbone, resolve_source
from .run_folder import BEST, LAST, RunFolder
from .state import (
    WEIGHTS_KEYS,
    TrainState,
    make_checkpoint,
    restore_checkpoint,
    resume_config,
)

log = logging.getLogger("nextpose")


@dataclass(frozen=True)
class Dataset:
    """A COCO-format keypoint dataset: annotations, images, and optionally detection boxes."""

    ann_file: Path
    image_dir: Path
    bbox_file: Path | None = None  # validation only; None uses the ground-truth boxes


class NonFiniteLoss(TrainingError):
    """The loss of a step was NaN or inf; the step was not taken."""

    def __init__(self, value: float):
        super().__init__(f"the loss became {value}")
        self.value = value


@dataclass
class Learner:
    """The model and what updates it; :meth:`step` is one optimisation step."""

    model: PoseNet  # the weights: saved, validated (SyncBatchNorm-converted under sync_bn)
    network: nn.Module  # what the step runs: the model, or its DDP / torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module
    config: TrainConfig
    device: torch.device
    world_size: int = 1

    def step(
        self, images: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """One optimisation step on a batch of uint8 crops (N, h, w, 3), target heatmaps and
        keypoint weights, at the optimizer's current learning rate; returns the loss.

        Raises:
            NonFiniteLoss: the loss is NaN or inf (nothing was updated).
        """
        cfg = self.config
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
        model = self.model.config  # its pixel statistics
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
        # Every rank stops alike: one alone would leave the others waiting in DDP's all-reduce.
        checked = dist.all_reduce_mean(loss.detach()) if self.world_size > 1 else loss
        if not torch.isfinite(checked):
            raise NonFiniteLoss(loss.item() if not torch.isfinite(loss) else checked.item())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss

    train_step = step  # the name benchmarks and older code use

    def train_mode(self) -> None:
        """Training mode, with BatchNorm on its running statistics under ``train.freeze_bn``."""
        self.network.train()
        if self.config.freeze_bn:
            for m in self.network.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()


# -- builders --------------------------------------------------------------------------------


def check_device(config: TrainConfig, device: torch.device) -> None:
    """Refuse options the device cannot run."""
    if config.sync_bn and device.type != "cuda":
        raise TrainingError("train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm)")
    if config.amp == "fp16" and device.type != "cuda":
        raise TrainingError("train.amp='fp16' needs CUDA; use 'bf16' on CPU")


def load_instances(data: Dataset, config: Config, what: str) -> list[PersonInstance]:
    """The person instances of a dataset; every image they are in must exist (else stop now)."""
    coco = CocoKeypoints(data.ann_file, config.model.num_keypoints)
    if data.bbox_file is None:
        instances = coco.ground_truth_instances()
    else:
        instances = coco.detection_instances(data.bbox_file)
    _check_images(instances, data, what)
    return instances


def load_eval_set(data: Dataset, config: Config) -> EvalSet:
    """The validation boxes and ground truth, with every check the metric makes: a file the
    metric refuses stops the run now, not after the first epoch."""
    eval_set = read_eval_set(data.ann_file, data.bbox_file, config.model.num_keypoints)
    _check_images(eval_set.instances, data, "validation")
    return eval_set


def _check_images(instances: list[PersonInstance], data: Dataset, what: str) -> None:
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


def build_model(
    config: Config,
    device: torch.device | str,
    pretrained: str = "none",
    env: DistInfo | None = None,
) -> tuple[PoseNet, str | None]:
    """The network on ``device``, seeded by ``data.seed``, its trunk filled from ``pretrained``
    (see :data:`nextpose.training.pretrained.SOURCES`; ``none``: the reference's from-scratch
    init, each block's last BN weight 0); returns it and what was loaded."""
    env = env or DistInfo()
    torch.manual_seed(config.data.seed)  # the head's random init is part of the run's seed
    model = PoseNet(config.model)
    if not env.is_main:  # rank 0 downloads first, so that the other ranks find the cached file
        dist.barrier()
    loaded = load_pretrained_backbone(model.backbone, pretrained, config.model)
    if env.is_main:
        dist.barrier()
    if loaded is None:
        # From scratch, the reference's ResNet starts every block as the identity: the last BN
        # of each residual branch at 0 (skipped when a trunk is loaded: its weights replace it).
        for m in model.backbone.modules():
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)
    model.to(device)
    if config.train.channels_last:
        model.to(memory_format=torch.channels_last)
    if config.train.sync_bn and env.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif config.train.sync_bn:
        log.warning("train.sync_bn has no effect on one process (torchrun starts several)")
    return model, loaded


# The CPU's 1x1 convolution gives its weight gradient strides [C_in, 1, X, Y] for its two
# size-1 dims, DDP's bucket has [C_in, 1, 1, 1]: the same memory layout (no element sits at
# another place), yet DDP warns about it on every run. Only that message is matched (DDP warns
# once per process, so a real mismatch elsewhere would have gone unsaid after it anyway).
SAME_LAYOUT_1X1 = (
    r"(?s)Grad strides do not match bucket view strides\..*"
    r"grad\.sizes\(\) = \[(\d+), (\d+), 1, 1\], strides\(\) = \[(\d+), 1, \d+, \d+\]\s*"
    r"bucket_view\.sizes\(\) = \[\1, \2, 1, 1\], strides\(\) = \[\3, 1, 1, 1\]"
)


def build_learner(
    model: PoseNet, config: TrainConfig, device: torch.device | str, env: DistInfo | None = None
) -> Learner:
    """Wrap ``model`` for training (DDP across ranks, torch.compile) with Adam, the loss and the
    fp16 loss scaler."""
    env = env or DistInfo()
    device = torch.device(device)
    network: nn.Module = model
    if env.enabled:
        ids = [device.index] if device.type == "cuda" else None
        # BatchNorm statistics stay each rank's own during the epoch and are averaged at its end
        # (average_buffers), as the reference does; DDP's default broadcast of rank 0's would
        # discard the others' before every step.
        network = DistributedDataParallel(network, device_ids=ids, broadcast_buffers=False)
        warnings.filterwarnings("ignore", message=SAME_LAYOUT_1X1, category=UserWarning)
    if config.compile:
        network = torch.compile(network)
    return Learner(
        model=model,
        network=network,
        optimizer=build_optimizer(model, config, env.world_size),
        scaler=torch.amp.GradScaler(device.type, enabled=config.amp == "fp16"),
        loss_fn=KeypointMSELoss(),
        config=config,
        device=device,
        world_size=env.world_size,
    )


def build_loader(
    instances: list[PersonInstance],
    data: Dataset,
    config: Config,
    device: torch.device,
    env: DistInfo | None = None,
) -> DataLoader:
    """Augmented training batches; each rank reads its share of one seeded permutation per
    epoch (call ``loader.sampler.set_epoch`` and ``loader.dataset.set_epoch``)."""
    env = env or DistInfo()
    dataset = TrainDataset(instances, data.image_dir, config)
    sampler = DistributedSampler(
        dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=config.data.seed
    )
    workers = config.data.workers
    return DataLoader(
        dataset,
        batch_size=config.train.batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_train,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        multiprocessing_context=_start_context(config.data.start_method) if workers else None,
        worker_init_fn=functools.partial(watch_trainer, os.getpid()) if workers else None,
    )


def _start_context(method: str) -> multiprocessing.context.BaseContext:
    """The multiprocessing context of the loader's workers. With forkserver the server imports
    the dataset's module once (with torch), so each worker starts from there: measured
    ~8 s before the first batch on a loaded 2-core machine against 0.1 s with fork, once per
    run (the workers persist). Platforms without forkserver use spawn."""
    if method not in multiprocessing.get_all_start_methods():
        method = "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload([TrainDataset.__module__])
    return context


# -- one epoch, one validation ---------------------------------------------------------------


def train_one_epoch(
    learner: Learner,
    loader: DataLoader,
    state: TrainState,
    epochs: int,
    run: RunFolder | None = None,
    progress: bool = False,
) -> None:
    """Train epoch ``state.epoch`` (0-based) over ``loader``, updating ``state.iteration`` and
    its skipped-sample count; loss and lr go to ``run``'s log every ``log_interval`` steps."""
    cfg = learner.config
    loader.sampler.set_epoch(state.epoch)  # type: ignore[union-attr]
    loader.dataset.set_epoch(state.epoch)  # type: ignore[attr-defined]
    learner.train_mode()
    bar = Progress(len(loader), f"epoch {state.epoch + 1}/{epochs}", "it", enabled=progress)
    start = time.perf_counter()
    seen = skipped = 0
    for batch in bar.iterate(loader):
        seen += len(batch["error"])
        skipped += _count_unreadable(batch["error"], state)
        lr = lr_at(cfg, state.iteration, state.epoch, learner.world_size)
        set_lr(learner.optimizer, lr)
        try:
            loss = learner.step(batch["image"], batch["heatmaps"], batch["weights"])
        except NonFiniteLoss as e:
            last = run.last if run is not None else None
            saved = (f" The last good checkpoint is {last}" if last is not None and last.is_file()
                     else " No checkpoint was written yet." if run is not None else "")  # fmt: skip
            raise TrainingError(
                f"the loss became {e.value} at iteration {state.iteration} (epoch "
                f"{state.epoch + 1}); lower train.lr or check the data.{saved}"
            ) from None
        state.iteration += 1
        if state.iteration % cfg.log_interval == 0 or state.iteration == 1:
            value = dist.all_reduce_mean(loss.detach()).item()
            bar.set_postfix(loss=f"{value:.3g}", lr=f"{lr:.2e}")
            if run is not None:
                run.log({"epoch": state.epoch + 1, "iteration": state.iteration, "loss": value,
                         "lr": lr, "seconds": round(time.perf_counter() - start, 3)})  # fmt: skip
    # Every rank decides alike (no rank waits on a collective another left for good).
    counts = dist.all_reduce_mean(torch.tensor([seen, skipped], dtype=torch.float32,
                                               device=learner.device))  # fmt: skip
    if counts[0] > 0 and counts[1] >= counts[0]:
        example = f" ({min(state.bad_images)})" if state.bad_images else ""
        raise TrainingError(
            f"epoch {state.epoch + 1}: the image of every sample was unreadable{example}; "
            "nothing can be learnt: check the training images"
        )
    if skipped:
        log.warning("epoch %d: %d samples had unreadable images and were skipped",
                    state.epoch + 1, skipped)  # fmt: skip
        if run is not None:
            run.log({"epoch": state.epoch + 1, "iteration": state.iteration,
                     "skipped_samples": skipped})  # fmt: skip


def _count_unreadable(errors: list[str], state: TrainState) -> int:
    """Count a batch's unreadable images; name each file the first time it fails."""
    count = 0
    for error in errors:
        if error:
            count += 1
            if error not in state.bad_images:
                state.bad_images.add(error)
                log.warning("skipped %s", error)
    state.skipped += count
    return count


def validate(
    learner: Learner,
    config: Config,
    eval_set: EvalSet,
    data: Dataset,
    env: DistInfo | None = None,
) -> dict[str, float]:
    """COCO AP/AR of the current weights on ``eval_set`` (:func:`load_eval_set` of ``data``);
    every rank predicts a share (whole batches of a single process's, so the numbers do not
    depend on the number of ranks), rank 0 scores, every rank gets the metrics."""
    # eager: the weights change every epoch, so a graph another backend builds (and ONNX Runtime
    # caches on disk) would serve one validation only
    estimator = PoseEstimator(learner.model, config, device=learner.device, backend="eager")
    instances = eval_set.instances
    pred = predict_instances_sharded(
        estimator, instances, data.image_dir, read_threads=config.data.workers, progress=False
    )
    metrics: dict[str, float] | None = None
    if pred is not None:
        metrics = score_instances(
            instances,
            pred,
            eval_set.ann_file,
            config.keypoints.sigmas_array(),
            ground_truth=eval_set.ground_truth,
        )
    learner.train_mode()
    return dist.broadcast_object(metrics)


# -- the run ---------------------------------------------------------------------------------


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
    """Train a model into the run folder ``out_dir``; returns
    ``{"epochs", "iterations", "best_ap", "skipped_samples", "out_dir"}``.

    Args:
        config: the full configuration (model, data, train, keypoints).
        train_data: where the training annotations and images are.
        out_dir: the run folder; created. A new run refuses a folder that holds a run
            (``last.pth`` or ``best.pth``) or files no run wrote; it starts again in place of a
            run that stopped before finishing an epoch. A second run into a folder that a run
            is training in is refused (``train.lock`` names the holder's pid).
        val_data: validated every ``train.val_interval`` epochs and after the last; None skips.
        pretrained: trunk initialisation, see :data:`nextpose.training.pretrained.SOURCES`.
        resume: continue the run in ``out_dir`` from its ``last.pth``. ``config`` must be the
            run's config, except for the keys in :data:`~nextpose.training.state.RESUME_OVERRIDABLE`
            (``train.epochs``, ``train.val_interval``, ``train.log_interval``, ``data.workers``,
            ``data.start_method``), whose new values are applied with a logged warning; any
            other difference is refused, naming the keys. Resuming on another number of
            processes is warned about (the total batch changes).
        device: "cpu", "cuda", ...; default CUDA when available (torchrun: the local rank's GPU).
        progress: show a progress bar (rank 0 only).

    Raises:
        TrainingError: the data, run folder, resume file or device cannot work; the loss became
            non-finite; a checkpoint could not be written (the previous one is kept).
    """
    env, name = dist.init(device)
    dev = torch.device(name)
    try:
        check_device(config.train, dev)
        # The data is checked before the run folder is touched and before the network is built
        # or pretrained weights are fetched: a bad file stops the run now, not hours in.
        train_instances = load_instances(train_data, config, "training")
        if not train_instances:
            raise TrainingError(f"{train_data.ann_file}: no usable person annotations to train on")
        val_set = load_eval_set(val_data, config) if val_data else None
        if val_set is not None and not val_set.instances:
            what = "detections in " + str(val_data.bbox_file) if val_data.bbox_file else "persons"
            raise TrainingError(
                f"{val_data.ann_file}: no {what} to validate on (validation would score "
                "nothing); give another validation file, or train without validation (--no-val)"
            )
        if not resume:
            resolve_source(pretrained, config.model)  # a bad name stops the run now

        with RunFolder(out_dir, writer=env.is_main) as run:
            run.check(resume)
            saved = read_checkpoint(run.last) if resume else None
            if saved is not None:
                config = resume_config(config, saved, run.last)
            model, loaded = build_model(config, dev, "none" if saved else pretrained, env)
            learner = build_learner(model, config.train, dev, env)
            if saved is None:
                state = TrainState(pretrained=loaded, world_size=env.world_size)
            else:
                state = restore_checkpoint(
                    saved, run.last, model, learner.optimizer, learner.scaler, env.world_size
                )
                del saved  # the weights and optimizer state are in place now
            loader = build_loader(train_instances, train_data, config, dev, env)
            info = _run_info(config, train_data, val_data, dev, env, state, resume)
            if resume and env.is_main:
                _warn_other_data(run, info)
            run.start(config.to_toml(), info, state.iteration)

            epochs = config.train.epochs
            if state.epoch >= epochs:
                log.warning("%s: already trained %d epochs (train.epochs=%d); nothing to do",
                            run.path, state.epoch, epochs)  # fmt: skip
            while state.epoch < epochs:
                train_one_epoch(learner, loader, state, epochs, run, progress and env.is_main)
                if env.enabled and not config.train.sync_bn:
                    dist.average_buffers(learner.model)
                done = state.epoch + 1
                metrics = None
                if val_data is not None and (
                    done % config.train.val_interval == 0 or done == epochs
                ):
                    metrics = validate(learner, config, val_set, val_data, env)
                    run.log({"epoch": done, "iteration": state.iteration, "val": metrics})
                    if env.is_main:
                        shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                          if k in ("AP", "AP50", "AP75", "AR"))  # fmt: skip
                        log.info("epoch %d/%d: %s", done, epochs, shown)
                state.epoch = done
                if env.is_main:
                    _save(run, learner, config, state, metrics)
                    # After the checkpoint: a folder whose record says so held a finished epoch.
                    run.log({"epoch": done, "iteration": state.iteration, "epoch_end": True})
                dist.barrier()
        best = state.best_ap if math.isfinite(state.best_ap) else None  # None: not validated
        return {"epochs": state.epoch, "iterations": state.iteration, "best_ap": best,
                "skipped_samples": state.skipped, "out_dir": str(Path(out_dir))}  # fmt: skip
    finally:
        dist.shutdown()


def _save(run: RunFolder, learner: Learner, config: Config, state: TrainState,
          metrics: dict[str, float] | None) -> None:  # fmt: skip
    """``best.pth`` when the AP improved, then ``last.pth``: two views of one checkpoint dict."""
    improved = metrics is not None and metrics["AP"] > state.best_ap
    if improved:
        state.best_ap = metrics["AP"]  # type: ignore[index]
    ckpt = make_checkpoint(learner.model, learner.optimizer, learner.scaler, config, state, metrics)
    if improved:
        run.save(BEST, {k: ckpt[k] for k in WEIGHTS_KEYS}, state.epoch)
    run.save(LAST, ckpt, state.epoch)


def _paths(data: Dataset) -> dict[str, str | None]:
    """A dataset's files for ``run.json``: absolute paths (the run may be resumed from another
    folder), and null (not "None") where there is none."""
    return {k: None if v is None else str(Path(v).absolute()) for k, v in vars(data).items()}


def _run_info(config: Config, train_data: Dataset, val_data: Dataset | None, device: torch.device,
              env: DistInfo, state: TrainState, resume: bool) -> dict[str, Any]:  # fmt: skip
    """One ``run.json`` line: what ran, on what, from where."""
    return {
        "nextpose": __version__,
        "git_sha": _git_sha(),
        "command": sys.argv,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "world_size": env.world_size,
        "train_data": _paths(train_data),
        "val_data": _paths(val_data) if val_data else None,
        "pretrained": state.pretrained,
        "resumed_at_epoch": state.epoch if resume else None,
    }


def _warn_other_data(run: RunFolder, info: dict[str, Any]) -> None:
    """Say where a resumed run reads other training data than the run it continues did (it then
    will not reach the weights of an unbroken run), validates on other data (best.pth then
    compares APs of two sets) or no longer validates."""
    before = run.last_start()
    if before is None:
        return
    for key, what in (("train_data", "training"), ("val_data", "validation")):
        old, new = before.get(key), info[key]
        if old == new:
            continue
        if new is None:
            log.warning("resuming %s without validation: it validated on %s until now; "
                        "best.pth is no longer updated", run.path, old.get("ann_file"))  # fmt: skip
            continue
        if old is None:  # validation from here on: the weights are those of the same run
            continue
        for name, value in new.items():
            was = old.get(name)
            if (was is None) != (value is None) or (
                was is not None and Path(was).resolve() != Path(value).resolve()
            ):
                log.warning("resuming %s with other %s data: %s is %s (was %s)",
                            run.path, what, name, value, was)  # fmt: skip


def _git_sha() -> str:
    """The commit of nextpose's own checkout (``-dirty`` with changes not committed); "unknown"
    for an installed package, even one inside another project's git repository."""
    source = Path(__file__).resolve().parents[1]  # src/nextpose
    try:
        top = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
        if (Path(top) / "src" / "nextpose").resolve() != source:
            return "unknown"  # a checkout, but another project's
        out = subprocess.run(
            ["git", "-C", top, "describe", "--always", "--dirty", "--abbrev=40"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Trainer:
    """Deprecated: call :func:`train` (same arguments); ``Trainer(...).fit()`` still works for
    one release. A custom loop is made of :func:`build_model`, :func:`build_learner`,
    :func:`build_loader`, :func:`train_one_epoch` and :func:`validate`."""

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
        warnings.warn(
            "nextpose.training.Trainer is deprecated and will be removed in the next release: "
            "call nextpose.training.train(...) with the same arguments",
            DeprecationWarning,
            stacklevel=2,
        )
        self._args = (config, train_data, out_dir, val_data, pretrained, resume, device, progress)

    def fit(self) -> dict[str, Any]:
        return train(*self._args)
