"""nextpose: top-down human pose estimation with the ResNeXt SimpleBaseline models in PyTorch.

>>> import nextpose
>>> estimator = nextpose.load("resnext50_coco_256x192")
>>> poses = estimator.predict("street.jpg", boxes=[[48, 30, 210, 400]])
>>> poses.keypoints, poses.scores  # (N, 17, 2) image pixels, (N, 17)

Section numbers in comments and docstrings (``§6.5``) refer to ``docs/topdown-semantics.md``,
the reference's behaviour stated in plain maths.

The names below are imported on first use, so ``import nextpose`` is quick and torchvision's
detection models load only when a detector is asked for.
"""

import importlib
from typing import Any

from ._version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "AnnotationError": "errors",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "ImageError": "errors",
    "InputError": "errors",
    "MissingExtraError": "errors",
    "NextposeError": "errors",
    "NumericsError": "errors",
    "OutputError": "errors",
    "TrainingError": "errors",
    "VideoError": "errors",
    "CodecConfig": "config",
    "Config": "config",
    "InferenceConfig": "config",
    "ModelConfig": "config",
    "COCO_KEYPOINTS": "keypoints",
    "KeypointSet": "keypoints",
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
    "Frame": "structures",
    "Poses": "structures",
    "BoxTable": "boxes",
    "CocoKeypoints": "data.coco",
    "PersonInstance": "data.coco",
    "VideoReader": "data.images",
    "list_images": "data.images",
    "read_image": "data.images",
    "PoseNet": "model",
    "RunOptions": "options",
    "Engine": "engine",
    "Task": "engine",
    "PoseEstimator": "predictor",
    "load": "predictor",
    "DEFAULT_DETECTOR": "detection",
    "DETECTORS": "detection",
    "PersonDetector": "detection",
    "load_detector": "detection",
    "PosePipeline": "pipeline",
    "predict_job": "sharded",
    "OneEuro": "tracking",
    "PoseTracker": "tracking",
    "draw_poses": "visualize",
    "evaluate": "evaluation",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nextpose' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
