"""Adam with linear warm-up and step decay: the published recipe's learning rate at every step."""

import torch
from torch import nn

from ..config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig, world_size: int = 1) -> torch.optim.Adam:
    """Adam (PyTorch defaults, no weight decay) at :func:`base_lr`."""
    return torch.optim.Adam(model.parameters(), lr=base_lr(config, world_size))


def base_lr(config: TrainConfig, world_size: int = 1) -> float:
    """The configured lr, scaled by total batch / base batch when ``scale_lr`` is on."""
    if not config.scale_lr:
        return config.lr
    return config.lr * world_size * config.batch_size / config.base_batch_size


def lr_at(config: TrainConfig, iteration: int, epoch: int, world_size: int = 1) -> float:
    """Learning rate of global ``iteration`` (0-based) in ``epoch`` (0-based).

    Warm-up rises linearly from ``warmup_ratio`` to 1 over ``warmup_iters`` iterations (the
    reference reaches 1 at iteration ``warmup_iters - 1``); each passed milestone multiplies by
    ``gamma``. A closed form, so a resumed run continues on exactly the same schedule.
    """
    factor = 1.0
    if config.warmup_iters > 1 and iteration < config.warmup_iters:
        progress = iteration / (config.warmup_iters - 1)
        factor = config.warmup_ratio + (1 - config.warmup_ratio) * progress
    decay = config.gamma ** sum(epoch >= m for m in config.milestones)
    return base_lr(config, world_size) * factor * decay


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
