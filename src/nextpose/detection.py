"""Person boxes from torchvision's COCO detection models, for the top-down pose estimator.

The models are torchvision's own (``torchvision.models.detection``); their published COCO weights
are found through torchvision's weights API (URL, categories) and downloaded by
:func:`nextpose.checkpoint.download` into nextpose's cache, checked against the sha256 prefix in
the file name. Only the ``person`` class is kept, and boxes below a score or size are dropped.

Which detector: top-down pose accuracy follows the person boxes (the published pose AP was
measured with boxes of a detector with person AP 56.4). The default, the box branch of
torchvision's Keypoint R-CNN, is trained on people only and has a person box AP of 54.6 at
137 GFLOPs; the keypoint branch is removed, so it runs as a plain Faster R-CNN.
"""

import pickle
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.models import detection as tvd
from torchvision.models._api import WeightsEnum
from torchvision.ops.misc import FrozenBatchNorm2d

from . import checkpoint
from .checkpoint import CheckpointError, is_url
from .errors import InputError
from .options import DEFAULT_DETECTOR


@dataclass(frozen=True)
class DetectorSpec:
    """A torchvision detection model and its published COCO weights.

    Attributes:
        builder: the torchvision model function.
        weights: its COCO weights (torchvision's weights enum: URL, categories, metrics).
        box_ap: COCO val2017 box AP from torchvision's documentation (all 80 classes, except
            Keypoint R-CNN: people only).
        gflops: operations per image at the model's own input size, from torchvision's docs.
        zero_eps: torchvision sets the frozen batch-norm epsilon to 0 for these weights.
    """

    builder: Callable[..., nn.Module]
    weights: WeightsEnum
    box_ap: float
    gflops: float
    zero_eps: bool = False


DETECTORS: dict[str, DetectorSpec] = {  # in options.DETECTOR_NAMES' order
    "keypointrcnn_resnet50_fpn": DetectorSpec(
        tvd.keypointrcnn_resnet50_fpn,
        tvd.KeypointRCNN_ResNet50_FPN_Weights.COCO_V1,
        54.6,
        137.42,
        zero_eps=True,
    ),
    "fasterrcnn_resnet50_fpn_v2": DetectorSpec(
        tvd.fasterrcnn_resnet50_fpn_v2, tvd.FasterRCNN_ResNet50_FPN_V2_Weights.COCO_V1, 46.7, 280.37
    ),
    "retinanet_resnet50_fpn_v2": DetectorSpec(
        tvd.retinanet_resnet50_fpn_v2, tvd.RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1, 41.5, 152.24
    ),
    "fcos_resnet50_fpn": DetectorSpec(
        tvd.fcos_resnet50_fpn, tvd.FCOS_ResNet50_FPN_Weights.COCO_V1, 39.2, 128.21
    ),
    "fasterrcnn_resnet50_fpn": DetectorSpec(
        tvd.fasterrcnn_resnet50_fpn,
        tvd.FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
        37.0,
        134.38,
        zero_eps=True,
    ),
    "fasterrcnn_mobilenet_v3_large_fpn": DetectorSpec(
        tvd.fasterrcnn_mobilenet_v3_large_fpn,
        tvd.FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1,
        32.8,
        4.49,
    ),
    "fasterrcnn_mobilenet_v3_large_320_fpn": DetectorSpec(
        tvd.fasterrcnn_mobilenet_v3_large_320_fpn,
        tvd.FasterRCNN_MobileNet_V3_Large_320_FPN_Weights.COCO_V1,
        22.8,
        0.72,
    ),
    "ssdlite320_mobilenet_v3_large": DetectorSpec(
        tvd.ssdlite320_mobilenet_v3_large,
        tvd.SSDLite320_MobileNet_V3_Large_Weights.COCO_V1,
        21.3,
        0.58,
    ),
}
PERSON_LABEL = 1  # "person" in torchvision's COCO category list (and Keypoint R-CNN's)


class PersonDetector:
    """Person boxes of images: a torchvision detection model, the person class, thresholds.

    Args:
        model: a torchvision detection model (takes a list of (3, H, W) float tensors in [0, 1],
            returns dicts with ``boxes``, ``labels``, ``scores``); it is put in eval mode.
        device: where to run it.
        score_threshold: keep boxes scoring at least this (the models' own internal thresholds,
            0.05 for the R-CNNs, apply first).
        min_size: drop boxes whose longer side is below this many pixels (COCO gives people
            smaller than 32x32 pixels no keypoints).
        max_people: keep at most this many boxes per image, the highest-scoring.
        batch_size: images per forward pass; None: 4 on a GPU, 1 on a CPU (where padding
            images of different sizes to one batch costs more than it saves).
        person_label: the model's label of the person class.
        name: for messages.
    """

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.5,
        min_size: float = 32.0,
        max_people: int | None = None,
        batch_size: int | None = None,
        person_label: int = PERSON_LABEL,
        name: str = "custom",
    ):
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = 1 if self.device.type == "cpu" else 4
        if batch_size < 1:
            raise InputError(f"detector batch_size must be >= 1, got {batch_size}")
        self.model = model.eval().to(self.device)
        self.score_threshold = score_threshold
        self.min_size = min_size
        self.max_people = max_people
        self.batch_size = batch_size
        self.person_label = person_label
        self.name = name

    def __repr__(self) -> str:
        return (
            f"PersonDetector({self.name!r}, device={str(self.device)!r}, "
            f"score_threshold={self.score_threshold}, min_size={self.min_size})"
        )

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3:
            raise InputError("the detector takes (H, W, 3) uint8 RGB arrays")
        x = torch.from_numpy(np.ascontiguousarray(image[..., :3])).to(self.device)
        return x.permute(2, 0, 1).float().div_(255)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Person boxes of each (H, W, 3) uint8 RGB image: (N, 5) float32 xyxy + score, image
        pixels, highest score first."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self._tensor(im) for im in images[start : start + self.batch_size]]
            for result in self.model(chunk):
                out.append(self._select(result))
        return out

    def detect(self, image: np.ndarray) -> np.ndarray:
        """Person boxes (N, 5) of one image; see :meth:`__call__`."""
        return self([image])[0]

    def _select(self, result: dict[str, torch.Tensor]) -> np.ndarray:
        boxes = result["boxes"].float().cpu().numpy().reshape(-1, 4)
        scores = result["scores"].float().cpu().numpy().reshape(-1)
        labels = result["labels"].cpu().numpy().reshape(-1)
        size = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = (
            (labels == self.person_label)
            & (scores >= self.score_threshold)
            & (size >= self.min_size)
        )
        boxes, scores = boxes[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[: self.max_people]
        return np.concatenate([boxes[order], scores[order, None]], axis=1).astype(np.float32)


def download_weights(url: str, directory: Path | None = None, progress: bool = True) -> Path:
    """Fetch detector weights into the cache (once), as for pose checkpoints.

    torchvision's file names end in ``-<sha256 prefix>.pth``; the download is checked against
    that prefix, and so is a file already in the cache (a corrupt one is fetched again).
    ``file://`` URLs work.
    """
    hint = "--detector-weights PATH in the CLI, weights=PATH in Python"
    return checkpoint.download(url, directory, progress, local_file_hint=hint)


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A detector state dict from a file, loaded without executing code (``weights_only``).

    Bare state dicts and ``{"model": ...}`` / ``{"state_dict": ...}`` wrappers (torchvision's
    training scripts) are accepted.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{path}: no such detector weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors ({e})"
        ) from None
    except Exception as e:  # torch.load fails in many ways on a damaged or foreign file
        said = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(
            f"{path}: not a readable PyTorch weights file (torch.load: {type(e).__name__} {said})"
        ) from None
    if isinstance(obj, dict):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors")
    return obj


def _match_frozen_batchnorm(model: nn.Module, state: dict[str, Any], zero_eps: bool) -> None:
    """Swap in FrozenBatchNorm2d where the weights were saved from one (no num_batches_tracked),
    as torchvision's builders do when given trained weights."""
    for name, module in list(model.named_modules()):
        if (
            isinstance(module, nn.BatchNorm2d)
            and f"{name}.running_mean" in state
            and f"{name}.num_batches_tracked" not in state
        ):
            frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, frozen)
    if zero_eps:
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0


def _mismatch(expected: dict[str, Any], state: dict[str, Any]) -> str:
    """How ``state`` differs from a model's state dict, in a few words ("" when it fits)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if keys:
            more = f" and {len(keys) - 2} more" if len(keys) > 2 else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:2])}{more}")
    return "; ".join(parts)


def _fitting_detector(state: dict[str, Any], tried: str) -> str | None:
    """The detector of :data:`DETECTORS` whose architecture ``state`` fits, if any (each is
    built with random weights to compare names and shapes: seconds, on this error path only)."""
    for name, spec in DETECTORS.items():
        if name == tried:
            continue
        classes = len(spec.weights.meta["categories"])
        model = spec.builder(weights=None, weights_backbone=None, num_classes=classes)
        if not _mismatch(model.state_dict(), state):
            return name
    return None


def build_detector_model(
    name: str = DEFAULT_DETECTOR,
    weights: str | Path | None = "default",
    progress: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """A torchvision detection model from :data:`DETECTORS`, in eval mode, with weights.

    Args:
        name: a key of :data:`DETECTORS`.
        weights: ``"default"``: the published COCO weights (downloaded into the cache once);
            a local file or a URL (``https``, ``file``) of a state dict; None: random weights
            (for tests).
        model_kwargs: passed to the torchvision builder, e.g. ``min_size=512`` (the input's
            shorter side after resizing; smaller is faster and misses small people).
    """
    if name not in DETECTORS:
        raise InputError(f"unknown detector '{name}'; choose one of {', '.join(DETECTORS)}")
    spec = DETECTORS[name]
    kwargs: dict[str, Any] = {"num_classes": len(spec.weights.meta["categories"])} | model_kwargs
    model = spec.builder(weights=None, weights_backbone=None, **kwargs)
    if weights is not None:
        source = str(weights)
        if source.lower() in ("default", spec.weights.name.lower()):
            source = spec.weights.url
        path = download_weights(source, progress=progress) if is_url(source) else Path(source)
        state = read_weights(path)
        official = Path(path).name == Path(urllib.parse.urlparse(spec.weights.url).path).name
        _match_frozen_batchnorm(model, state, spec.zero_eps and official)
        mismatch = _mismatch(model.state_dict(), state)
        if mismatch:
            fits = _fitting_detector(state, name)
            hint = f"; they are weights of '{fits}': use --detector {fits}" if fits else ""
            raise CheckpointError(
                f"{path}: the weights do not fit detector '{name}' ({mismatch}){hint}"
            )
        model.load_state_dict(state, strict=False)
    if isinstance(model, tvd.KeypointRCNN):  # boxes only: skip the keypoint branch
        model.roi_heads.keypoint_roi_pool = None
        model.roi_heads.keypoint_head = None
        model.roi_heads.keypoint_predictor = None
    return model.eval()


def load_detector(
    name: str = DEFAULT_DETECTOR,
    weights: str | Path | None = "default",
    device: str | torch.device = "cpu",
    score_threshold: float = 0.5,
    min_size: float = 32.0,
    max_people: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    **model_kwargs: Any,
) -> PersonDetector:
    """A ready :class:`PersonDetector` by name; see :func:`build_detector_model` for the
    arguments, :class:`PersonDetector` for the thresholds."""
    model = build_detector_model(name, weights, progress, **model_kwargs)
    return PersonDetector(
        model,
        device=device,
        score_threshold=score_threshold,
        min_size=min_size,
        max_people=max_people,
        batch_size=batch_size,
        name=name,
    )
