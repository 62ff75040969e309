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
from typing import TYPE_CHECKING, Any

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
    "Result": "engine",
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

if TYPE_CHECKING:  # what type checkers see ("X as X": re-exported); at run time, __getattr__
    from .boxes import BoxTable as BoxTable
    from .config import CodecConfig as CodecConfig
    from .config import Config as Config
    from .config import InferenceConfig as InferenceConfig
    from .config import ModelConfig as ModelConfig
    from .data.coco import CocoKeypoints as CocoKeypoints
    from .data.coco import PersonInstance as PersonInstance
    from .data.images import VideoReader as VideoReader
    from .data.images import list_images as list_images
    from .data.images import read_image as read_image
    from .detection import DEFAULT_DETECTOR as DEFAULT_DETECTOR
    from .detection import DETECTORS as DETECTORS
    from .detection import PersonDetector as PersonDetector
    from .detection import load_detector as load_detector
    from .engine import Engine as Engine
    from .engine import Result as Result
    from .engine import Task as Task
    from .errors import AnnotationError as AnnotationError
    from .errors import CheckpointError as CheckpointError
    from .errors import ConfigError as ConfigError
    from .errors import ImageError as ImageError
    from .errors import InputError as InputError
    from .errors import MissingExtraError as MissingExtraError
    from .errors import NextposeError as NextposeError
    from .errors import NumericsError as NumericsError
    from .errors import OutputError as OutputError
    from .errors import TrainingError as TrainingError
    from .errors import VideoError as VideoError
    from .evaluation import evaluate as evaluate
    from .keypoints import COCO_KEYPOINTS as COCO_KEYPOINTS
    from .keypoints import KeypointSet as KeypointSet
    from .model import PoseNet as PoseNet
    from .options import RunOptions as RunOptions
    from .pipeline import PosePipeline as PosePipeline
    from .predictor import PoseEstimator as PoseEstimator
    from .predictor import load as load
    from .presets import PRESETS as PRESETS
    from .presets import Preset as Preset
    from .presets import get_preset as get_preset
    from .sharded import predict_job as predict_job
    from .structures import Frame as Frame
    from .structures import Poses as Poses
    from .tracking import OneEuro as OneEuro
    from .tracking import PoseTracker as PoseTracker
    from .visualize import draw_poses as draw_poses


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'nextpose' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
