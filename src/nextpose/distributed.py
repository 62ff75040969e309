"""torch.distributed plumbing shared by training, evaluation and batch prediction.

Every verb runs one process per device under ``torchrun`` (Gloo on CPU, NCCL on GPU, several
machines through torchrun's rendezvous); without torchrun it is one process and every helper
here is a no-op. Only rank 0 writes results and shows progress.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import InputError
from .progress import Progress

if TYPE_CHECKING:
    import torch


def _group() -> Any:
    """``torch.distributed`` when a process group is up, else None (a process that never
    imported it has none: torch is not imported to ask)."""
    dist = sys.modules.get("torch.distributed")
    return dist if dist is not None and dist.is_initialized() else None


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def current() -> DistInfo:
    """The initialised process group's rank and size (one process when there is none)."""
    dist = _group()
    if dist is None:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def init(device: str | None = None) -> tuple[DistInfo, str]:
    """Join the process group torchrun describes in the environment (if any); pick the device
    (returned as a string, e.g. ``"cuda:1"``).

    Without torchrun this is a single process (on the CPU, torch is not imported). The backend
    is NCCL on CUDA, Gloo on CPU; a ``cuda`` device without an index becomes the local rank's
    GPU.

    Raises:
        InputError: more processes on this machine than GPUs.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device == "cpu" and not info.enabled:
        return info, device
    import torch
    import torch.distributed as dist

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", info.local_rank)
        if info.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"--device cuda: process {info.local_rank} of this machine has no GPU of its "
                f"own ({torch.cuda.device_count()} here): start at most that many processes "
                "per machine (torchrun --nproc-per-node)"
            )
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return info, str(dev)


def shutdown() -> None:
    dist = _group()
    if dist is not None:
        dist.destroy_process_group()


def barrier() -> None:
    dist = _group()
    if dist is not None:
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first and on the other ranks after it: a file rank 0 downloads
    lands in the cache once, and the others read it there."""
    main = current().is_main
    if not main:
        barrier()
    yield
    if main:
        barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (a one-item list without DDP)."""
    dist = _group()
    if dist is None:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_main(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (None on the others)."""
    dist = _group()
    if dist is None:
        return [obj]
    main = dist.get_rank() == 0
    out: list[Any] | None = [None] * dist.get_world_size() if main else None
    # gather_object sends through the default group; on NCCL that needs the current device set
    # (init does it), on Gloo plain CPU tensors.
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    dist = _group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    dist = _group()
    if dist is not None:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def split_evenly(n: int, world: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges of ``n`` items for ``world`` ranks, sizes differing by
    at most one, the larger ones first (ranks past ``n`` get empty ranges)."""
    base, extra = divmod(n, world)
    out, start = [], 0
    for rank in range(world):
        stop = start + base + (rank < extra)
        out.append((start, stop))
        start = stop
    return out


class JobProgress:
    """One progress bar, on rank 0, counting the work of every rank.

    Each rank counts its own work with :meth:`update`; a background thread sums the counts of
    all ranks every ``interval`` seconds in a Gloo group of its own (so it never interleaves
    with the collectives of the main thread), and rank 0's bar shows the sum. :meth:`close`
    waits until every rank has closed; it returns the job's total count. Without a process
    group (or with ``enabled`` False) it counts this rank's work only.
    """

    def __init__(
        self,
        total: int | None,
        desc: str,
        unit: str,
        enabled: bool | None = True,
        interval: float = 1.0,
        initial: int = 0,
    ):
        self.info = current()
        self.bar = Progress(total, desc, unit, enabled if self.info.is_main else False)
        if initial:
            self.bar.update(initial)
        self.count = 0  # this rank's
        self.total_count = 0  # every rank's, as last summed
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if self.info.enabled and enabled is not False:  # nobody shows it: no need to sum
            self._group = _group().new_group(backend="gloo")
            self._interval = interval
            self._thread = threading.Thread(target=self._sum, daemon=True)
            self._thread.start()

    def update(self, n: int = 1) -> None:
        self.count += n
        if self._thread is None:
            self.bar.update(n)
            self.total_count = self.count

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def _sum(self) -> None:
        import torch

        shown = 0
        while True:
            # Every rank runs this loop the same number of times: it ends when the summed
            # "closed" flags say that all ranks are done, which every rank sees alike.
            closed = self._closed.is_set()
            counts = torch.tensor([self.count, int(closed)], dtype=torch.int64)
            torch.distributed.all_reduce(counts, group=self._group)
            total, done = (int(v) for v in counts)
            self.total_count = total
            if total > shown:
                self.bar.update(total - shown)
                shown = total
            if done == self.info.world_size:
                return
            self._closed.wait(self._interval)

    def close(self) -> int:
        """Stop counting (waits for every rank); the job's count of all ranks."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join()
            _group().destroy_process_group(self._group)
        self.bar.close()
        return self.total_count
