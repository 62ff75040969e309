"""Top-down inference: person boxes -> crops -> network (+ flip test) -> image keypoints."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import checkpoint
from .codec import decode_heatmaps
from .config import Config
from .data.images import read_image
from .geometry import crop, crop_region, crop_to_image
from .keypoints import KeypointSet
from .model import PoseNet
from .presets import PRESETS, get_preset

# ImageNet statistics in R, G, B order; the network sees (pixel - mean) / std.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """(N, h, w, 3) uint8 RGB crops -> (N, 3, h, w) float32 network input, (x - mean) / std.

    A true division by std, as the reference does (not a multiplication by 1 / std).
    """
    mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    return (crops.permute(0, 3, 1, 2).float() - mean) / std


@dataclass
class Poses:
    """The people found in one image.

    Attributes:
        keypoints: (N, K, 2) float32, image pixels.
        scores: (N, K) float32, heatmap maxima (not normalised, not clipped).
        boxes: (N, 4) float32 xyxy image pixels, the person boxes used.
        box_scores: (N,) float32, detector scores (1 when unknown).
        centers, scales: (N, 2) float32, the crop regions in image pixels (aspect-fixed, padded).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)

    def to_coco(
        self, image_id: int, category_id: int = 1, score_threshold: float = 0.2
    ) -> list[dict]:
        """COCO keypoint results, one dict per person in box order: ``image_id, category_id,
        keypoints`` (K*3 floats x, y, score), ``score`` (the box score times the mean keypoint
        score above ``score_threshold``, as the reference rescores) and ``bbox`` (x, y, w, h)."""
        from .evaluation.oks_nms import rescore  # evaluation imports this module

        instance_scores = rescore(self.scores, self.box_scores, score_threshold)
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i][:4])
            kpts = np.concatenate([self.keypoints[i], self.scores[i][:, None]], axis=1)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "keypoints": kpts.astype(float).reshape(-1).tolist(),
                    "score": float(instance_scores[i]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
        return out

    def draw(
        self,
        image: np.ndarray,
        score_threshold: float = 0.3,
        keypoint_set: KeypointSet | None = None,
        boxes: bool = True,
        labels: Sequence[str] | None = None,
    ) -> np.ndarray:
        """A copy of ``image`` (H, W, 3) uint8 RGB with these poses drawn (see ``draw_poses``);
        keypoints scoring at or below ``score_threshold`` are hidden."""
        from .keypoints import COCO_KEYPOINTS
        from .visualize import draw_poses

        return draw_poses(
            image,
            self.keypoints,
            self.scores,
            self.boxes if boxes else None,
            keypoint_set or COCO_KEYPOINTS,
            score_threshold,
            labels=labels,
        )


@dataclass
class Crops:
    """Network inputs cut from images, and where they came from."""

    images: np.ndarray | torch.Tensor  # (N, h, w, 3) uint8 RGB
    centers: np.ndarray  # (N, 2) float32 image pixels
    scales: np.ndarray  # (N, 2) float32 (w, h) image pixels, aspect-fixed


def prepare_crops(
    image: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int], padding: float = 1.25
) -> Crops:
    """Cut one crop per xyxy box out of an (H, W, 3) uint8 image."""
    center, scale = crop_region(boxes, input_size, padding)
    crops = np.empty((len(center), input_size[1], input_size[0], 3), np.uint8)
    for i in range(len(center)):
        crops[i] = crop(image, center[i], scale[i], input_size)
    return Crops(crops, center, scale)


def as_boxes(boxes: Sequence | np.ndarray | None, image_shape: tuple[int, ...]) -> np.ndarray:
    """(N, 5) float32 xyxy + score; no boxes means the whole image; a missing score means 1."""
    if boxes is None:
        h, w = image_shape[:2]
        return np.array([[0, 0, w - 1, h - 1, 1]], np.float32)
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 5), np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"boxes must be (N, 4) xyxy or (N, 5) xyxy+score, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes contain NaN or infinite values")
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1), np.float32)], axis=1)
    return arr


class PoseEstimator:
    """A :class:`PoseNet` with the reference's pre- and post-processing around it.

    ``predict`` takes an image and person boxes and returns :class:`Poses` in image pixels; crops
    of many boxes and many images are batched through the network together.
    """

    def __init__(
        self,
        model: PoseNet,
        config: Config,
        device: str | torch.device = "cpu",
        name: str = "custom",
    ):
        self.config = config
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.name = name

    @property
    def keypoint_set(self) -> KeypointSet:
        return self.config.keypoints

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.model.input_size

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB -> (N, 3, h, w) float32 on the device, (x - mean) / std."""
        if isinstance(crops, np.ndarray):
            crops = torch.from_numpy(np.ascontiguousarray(crops))
        return normalize(crops.to(self.device, non_blocking=True))

    @torch.inference_mode()
    def heatmaps(self, inputs: torch.Tensor, flip: bool | None = None) -> torch.Tensor:
        """Heatmaps (N, K, h/4, w/4) of normalised crops, averaged with the mirrored crops' if flip.

        The mirrored pass is a separate forward; its heatmaps are mirrored back, left/right channels
        swapped, and shifted one column right (the first column kept), as the reference does.
        """
        flip = self.config.inference.flip if flip is None else flip
        out = self.model(inputs)
        if flip:
            mirrored = self.model(inputs.flip(3)).flip(3)[
                :, list(self.config.keypoints.flip_indices)
            ]
            mirrored = torch.cat([mirrored[..., :1], mirrored[..., :-1]], dim=3)
            out = (out + mirrored) * 0.5
        return out

    def predict_crops(
        self, crops: Crops, flip: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) in image pixels and scores (N, K) for prepared crops, batched."""
        batch = self.config.inference.batch_size
        heatmaps = [
            self.heatmaps(self.normalize(crops.images[i : i + batch]), flip).float().cpu().numpy()
            for i in range(0, len(crops.images), batch)
        ]
        return self.decode(
            np.concatenate(heatmaps) if heatmaps else self._empty_heatmaps(),
            crops.centers,
            crops.scales,
        )

    def decode(
        self, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps -> keypoints in image pixels (N, K, 2) and scores (N, K)."""
        locations, scores = decode_heatmaps(heatmaps)
        w, h = self.input_size
        stride = np.array([w / heatmaps.shape[3], h / heatmaps.shape[2]], np.float32)
        keypoints = crop_to_image(locations * stride, centers, scales, self.input_size)
        return keypoints, scores

    def _empty_heatmaps(self) -> np.ndarray:
        w, h = self.config.model.heatmap_size
        return np.zeros((0, self.config.model.num_keypoints, h, w), np.float32)

    def predict(
        self,
        image: str | Path | np.ndarray,
        boxes: Sequence | np.ndarray | None = None,
        flip: bool | None = None,
    ) -> Poses:
        """Poses of the people in ``boxes`` (xyxy [+ score], image pixels) of one image.

        Args:
            image: a file path, or an (H, W, 3) uint8 RGB array.
            boxes: (N, 4) or (N, 5); None means one box covering the whole image.
            flip: flip test on/off; None uses the config (on by default).
        """
        return self.predict_many([image], [boxes], flip)[0]

    def predict_many(
        self,
        images: Iterable[str | Path | np.ndarray],
        boxes: Iterable[Sequence | np.ndarray | None],
        flip: bool | None = None,
    ) -> list[Poses]:
        """:meth:`predict` for many images, the crops of all of them batched together."""
        all_crops, all_boxes = [], []
        for image, image_boxes in zip(images, boxes, strict=True):
            array = read_image(image) if isinstance(image, str | Path) else _check_image(image)
            b = as_boxes(image_boxes, array.shape)
            all_boxes.append(b)
            all_crops.append(
                prepare_crops(array, b[:, :4], self.input_size, self.config.inference.padding)
            )
        joined = Crops(
            np.concatenate([c.images for c in all_crops]),
            np.concatenate([c.centers for c in all_crops]),
            np.concatenate([c.scales for c in all_crops]),
        )
        keypoints, scores = self.predict_crops(joined, flip)
        out, start = [], 0
        for crops, b in zip(all_crops, all_boxes, strict=True):
            end = start + len(b)
            out.append(
                Poses(
                    keypoints[start:end],
                    scores[start:end],
                    b[:, :4].copy(),
                    b[:, 4].copy(),
                    crops.centers,
                    crops.scales,
                )
            )
            start = end
        return out


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("an image array must be uint8 (H, W, 3) RGB")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be (H, W, 3) RGB, got shape {image.shape}")
    return image[..., :3]


def load(
    model: str | Path,
    checkpoint_source: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> PoseEstimator:
    """A ready-to-use estimator (eval mode) from a preset name or a nextpose checkpoint file.

    Args:
        model: a preset name (its published weights are downloaded unless ``checkpoint_source``
            is given), or the path/URL of a checkpoint written by nextpose (it carries its config).
        checkpoint_source: weights to use instead: a local path or a URL (``file://`` works).
        device: where to run, e.g. "cpu" or "cuda".
        progress: show a progress bar while downloading.
    """
    model = str(model)
    if model in PRESETS:
        preset = get_preset(model)
        config, name = preset.config, preset.name
        source = checkpoint_source or preset.weights_url
        if source is None:
            raise checkpoint.CheckpointError(
                f"preset '{name}' has no published weights; pass a checkpoint file"
            )
        path = checkpoint.resolve(source, progress)
        obj = checkpoint.read(path)
    else:
        if not (checkpoint.is_url(model) or Path(model).exists()):
            raise ValueError(
                f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file"
            )
        source = checkpoint_source or model
        path = checkpoint.resolve(source, progress)
        obj = checkpoint.read(path)
        own = checkpoint.read(checkpoint.resolve(model, progress)) if checkpoint_source else obj
        if "config" not in own:
            raise checkpoint.CheckpointError(
                f"{model}: the file carries no nextpose config; name a preset as MODEL and pass "
                "this file as the checkpoint"
            )
        config, name = Config.from_dict(own["config"]), Path(model).stem
    net = PoseNet(config.model)
    checkpoint.load_into(net, obj, str(path), name)
    return PoseEstimator(net, config, device=device, name=name)
