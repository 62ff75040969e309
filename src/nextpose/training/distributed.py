"""DDP plumbing for training: the process-group helpers of :mod:`nextpose.distributed`, plus
what only training needs (averaging BatchNorm statistics)."""

import torch.distributed as dist
from torch import nn

from ..distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    broadcast_object,
    gather_objects,
    init,
    shutdown,
)

__all__ = [
    "DistInfo",
    "all_reduce_mean",
    "average_buffers",
    "barrier",
    "broadcast_object",
    "gather_objects",
    "init",
    "shutdown",
]


def average_buffers(model: nn.Module) -> None:
    """Average BatchNorm running statistics across ranks, as the reference does each epoch."""
    if not dist.is_initialized():
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer /= dist.get_world_size()
