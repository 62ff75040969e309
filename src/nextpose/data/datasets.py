"""PyTorch datasets that turn person instances into network-ready crops."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..codec import encode_heatmaps
from ..config import Config
from ..geometry import box_to_center_scale, crop, crop_region
from .coco import PersonInstance
from .images import read_image
from .transforms import PoseSample, TrainTransform


class CropDataset(Dataset):
    """Test-time crops: item i is the un-augmented crop of ``instances[i]``.

    Items are dicts of numpy arrays: ``image`` (h, w, 3) uint8 RGB, ``center`` and ``scale`` (2,)
    float32 (the aspect-fixed crop region, image pixels) and ``index``. Instances of one image are
    usually adjacent and a worker gets whole batches, so the last decoded image is kept.
    """

    def __init__(
        self,
        instances: list[PersonInstance],
        image_dir: str | Path,
        input_size: tuple[int, int],
        padding: float = 1.25,
    ):
        self.instances = instances
        self.image_dir = Path(image_dir)
        self.input_size = input_size
        self.padding = padding
        self._cached: tuple[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.instances)

    def image(self, file_name: str) -> np.ndarray:
        if self._cached is None or self._cached[0] != file_name:
            self._cached = (file_name, read_image(self.image_dir / file_name))
        return self._cached[1]

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int]:
        inst = self.instances[index]
        center, scale = crop_region(inst.bbox[None], self.input_size, self.padding)
        image = crop(self.image(inst.image_file), center[0], scale[0], self.input_size)
        return {"image": image, "center": center[0], "scale": scale[0], "index": index}


def collate_crops(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack crops (kept uint8 and channels-last: 4x less to move than float) and their metadata."""
    return {
        "image": torch.from_numpy(np.stack([i["image"] for i in items])),
        "center": torch.from_numpy(np.stack([i["center"] for i in items])),
        "scale": torch.from_numpy(np.stack([i["scale"] for i in items])),
        "index": torch.tensor([i["index"] for i in items]),
    }


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
    ``flipped`` and ``index``.
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

    def __getitem__(self, index: int) -> dict[str, np.ndarray | int | bool]:
        inst = self.instances[index]
        center, scale = box_to_center_scale(inst.bbox[None], self.config.data.padding)
        sample = PoseSample(
            image=self.image(inst.image_file),
            center=center[0],
            scale=scale[0],
            keypoints=inst.keypoints.astype(np.float32),
            visible=inst.visible.astype(np.float32),
        )
        out = self.transform(sample, self.rng(index))
        model, sigma = self.config.model, self.config.codec.sigma
        heatmaps, weights = encode_heatmaps(
            out.keypoints, out.visible, model.input_size, model.heatmap_size, sigma
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
        }


def collate_train(items: list[dict]) -> dict[str, torch.Tensor]:
    """Stack training items; images stay uint8 (N, h, w, 3), normalised later on the device."""
    batch = {
        key: torch.from_numpy(np.stack([i[key] for i in items]))
        for key in ("image", "heatmaps", "weights", "keypoints", "visible", "center", "scale")
    }
    batch["rotation"] = torch.tensor([float(i["rotation"]) for i in items], dtype=torch.float32)
    batch["flipped"] = torch.tensor([bool(i["flipped"]) for i in items])
    batch["index"] = torch.tensor([i["index"] for i in items])
    return batch
