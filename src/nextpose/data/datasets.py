"""PyTorch datasets that turn person instances into network-ready crops."""

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..codec import encode_heatmaps
from ..config import Config
from ..geometry import box_to_center_scale
from .coco import PersonInstance
from .images import ImageError, read_image
from .transforms import PoseSample, TrainTransform


class TrainDataset(Dataset):
    """Augmented training crops and their heatmap targets.

    Item ``i`` at epoch ``e`` draws all its randomness from
    ``np.random.default_rng([config.data.seed, e, i])``, so a run is repeatable whatever the number
    of workers or the order items are fetched in, and a resumed run sees exactly the samples of an
    unbroken one. Call :meth:`set_epoch` before each epoch; the epoch lives in shared memory, so
    persistent DataLoader workers see the change too.

    Items are dicts of numpy arrays: ``image`` (h, w, 3) uint8 RGB crop, ``heatmaps`` (K, Hh, Wh)
    float32 targets, ``weights`` (K,) float32 target weights, ``keypoints`` (K, 2) float32 crop
    pixels and ``visible`` (K,) float32, plus for debugging ``center``/``scale`` (2,) float32 (the
    augmented, aspect-fixed crop region in image pixels), ``rotation`` (float32 degrees),
    ``flipped`` and ``index``, and ``error``: "" or, for an image that cannot be read, the reason;
    such an item is a black crop with all keypoint weights 0, so it adds nothing to the loss and
    a run never stops on one bad file (the training loop reports and counts them).
    """

    def __init__(self, instances: list[PersonInstance], image_dir: str | Path, config: Config):
        self.instances = instances
        self.image_dir = Path(image_dir)
        self.config = config
        self.transform = TrainTransform(config)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._cached: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of ``epoch`` (0-based) for all following items."""
        self._epoch.fill_(int(epoch))

    def image(self, file_name: str) -> np.ndarray:
        if self._cached is None or self._cached[0] != file_name:
            self._cached = (file_name, read_image(self.image_dir / file_name))
        return self._cached[1]

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The generator of item ``index`` at ``epoch`` (the current one by default)."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.config.data.seed, epoch, index])

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int | bool | str]:
        inst = self.instances[index]
        center, scale = box_to_center_scale(inst.bbox[None], self.config.data.padding)
        try:
            image = self.image(inst.image_file)
        except ImageError as e:
            return self._unreadable(index, center[0], scale[0], str(e))
        sample = PoseSample(
            image=image,
            center=center[0],
            scale=scale[0],
            keypoints=inst.keypoints.astype(np.float32),
            visible=inst.visible.astype(np.float32),
        )
        try:
            out = self.transform(sample, self.rng(index), inst.image_file)
        except ImageError as e:  # e.g. a crop of a huge image OpenCV's warp cannot make
            return self._unreadable(index, center[0], scale[0], str(e))
        model, codec = self.config.model, self.config.codec
        heatmaps, weights = encode_heatmaps(
            out.keypoints,
            out.visible,
            model.input_size,
            model.heatmap_size,
            codec.sigma,
            unbiased=codec.unbiased,
        )
        return {
            "image": out.image,
            "heatmaps": heatmaps,
            "weights": weights,
            "keypoints": out.keypoints,
            "visible": out.visible,
            "center": out.center,
            "scale": out.scale,
            "rotation": np.float32(out.rotation),
            "flipped": out.flipped,
            "index": index,
            "error": "",
        }

    def _unreadable(
        self, index: int, center: np.ndarray, scale: np.ndarray, error: str
    ) -> dict[str, np.ndarray | int | bool | str]:
        """The stand-in for an item whose image cannot be read: black, every weight 0."""
        model = self.config.model
        (w, h), (hw, hh), k = model.input_size, model.heatmap_size, model.num_keypoints
        return {
            "image": np.zeros((h, w, 3), np.uint8),
            "heatmaps": np.zeros((k, hh, hw), np.float32),
            "weights": np.zeros(k, np.float32),
            "keypoints": np.zeros((k, 2), np.float32),
            "visible": np.zeros(k, np.float32),
            "center": center.astype(np.float32),
            "scale": scale.astype(np.float32),
            "rotation": np.float32(0),
            "flipped": False,
            "index": index,
            "error": error,
        }


def collate_train(items: list[dict]) -> dict[str, Any]:
    """Stack training items; images stay uint8 (N, h, w, 3), normalised later on the device;
    ``error`` is a list of strings ("" for a readable image)."""
    batch = {
        key: torch.from_numpy(np.stack([i[key] for i in items]))
        for key in ("image", "heatmaps", "weights", "keypoints", "visible", "center", "scale")
    }
    batch["rotation"] = torch.tensor([float(i["rotation"]) for i in items], dtype=torch.float32)
    batch["flipped"] = torch.tensor([bool(i["flipped"]) for i in items])
    batch["index"] = torch.tensor([i["index"] for i in items])
    batch["error"] = [i.get("error", "") for i in items]
    return batch


def watch_trainer(pid: int, worker_id: int) -> None:
    """A loader worker's init (``functools.partial(watch_trainer, os.getpid())``): the worker
    ends itself once the training process ``pid`` is gone. Under forkserver a worker's parent
    is the fork server, which outlives a killed trainer (its workers keep it open), so
    PyTorch's own check of the parent never fires and the workers would run on for ever."""

    def watch() -> None:
        while _alive(pid):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="nextpose-watch-trainer").start()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): kill's answer
        return True
