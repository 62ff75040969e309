"""Deprecated: the names that lived here in nextpose's pre-releases (before 0.1.0) moved to the
modules below; they are kept here until 0.2.

``PoseEstimator`` and ``load`` are in :mod:`nextpose.predictor`, ``Poses`` in
:mod:`nextpose.structures`, ``as_boxes`` in :mod:`nextpose.boxes`, ``flip_test`` and ``normalize``
in :mod:`nextpose.model.tta`, the backend and precision names in :mod:`nextpose.options`,
``ordered_map`` in :mod:`nextpose.engine`.
"""

import importlib
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .geometry import crop_region, cut_crops

_MOVED = {
    "PoseEstimator": "predictor",
    "load": "predictor",
    "Poses": "structures",
    "as_boxes": "boxes",
    "flip_test": "model.tta",
    "normalize": "model.tta",
    "ordered_map": "engine",
    "BACKENDS": "options",
    "PRECISIONS": "options",
    "Backend": "options",
    "Precision": "options",
}


@dataclass
class Crops:
    """Deprecated: crops cut from one image and their regions (see :func:`prepare_crops`)."""

    images: np.ndarray  # (N, h, w, 3) uint8 RGB
    centers: np.ndarray  # (N, 2) float32 image pixels
    scales: np.ndarray  # (N, 2) float32 image pixels


def prepare_crops(
    image: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int], padding: float = 1.25
) -> Crops:
    """Deprecated: :func:`~nextpose.geometry.crop_region` + :func:`~nextpose.geometry.cut_crops`."""
    warnings.warn(
        "nextpose.inference.prepare_crops is deprecated: use geometry.crop_region and "
        "geometry.cut_crops",
        DeprecationWarning,
        stacklevel=2,
    )
    centers, scales = crop_region(np.asarray(boxes, np.float32)[:, :4], input_size, padding)
    return Crops(cut_crops(image, centers, scales, input_size), centers, scales)


def __getattr__(name: str) -> Any:
    if name not in _MOVED:
        raise AttributeError(f"module 'nextpose.inference' has no attribute {name!r}")
    where = f"nextpose.{_MOVED[name]}"
    warnings.warn(
        f"nextpose.inference.{name} moved to {where}.{name}", DeprecationWarning, stacklevel=2
    )
    return getattr(importlib.import_module(where), name)
