"""PyTorch datasets that turn person instances into network-ready crops."""

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..geometry import crop, crop_region
from .coco import PersonInstance
from .images import read_image


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
