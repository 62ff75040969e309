"""nextpose: top-down human pose estimation with the ResNeXt SimpleBaseline models in PyTorch.

>>> import nextpose
>>> estimator = nextpose.load("resnext50_coco_256x192")
>>> poses = estimator.predict("street.jpg", boxes=[[48, 30, 210, 400]])
>>> poses.keypoints, poses.scores  # (N, 17, 2) image pixels, (N, 17)
"""

from ._version import __version__
from .checkpoint import CheckpointError
from .config import CodecConfig, Config, ConfigError, InferenceConfig, ModelConfig
from .data import AnnotationError, CocoKeypoints, ImageError, PersonInstance, read_image
from .data.images import VideoError, VideoReader, list_images
from .detection import DEFAULT_DETECTOR, DETECTORS, PersonDetector, load_detector
from .evaluation import evaluate
from .inference import PoseEstimator, Poses, load
from .keypoints import COCO_KEYPOINTS, KeypointSet
from .model import PoseNet
from .pipeline import BoxTable, Frame, PosePipeline
from .presets import PRESETS, Preset, get_preset
from .tracking import OneEuro, PoseTracker
from .visualize import draw_poses

__all__ = [
    "COCO_KEYPOINTS",
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "PRESETS",
    "AnnotationError",
    "BoxTable",
    "CheckpointError",
    "CocoKeypoints",
    "CodecConfig",
    "Config",
    "ConfigError",
    "Frame",
    "ImageError",
    "InferenceConfig",
    "KeypointSet",
    "ModelConfig",
    "OneEuro",
    "PersonDetector",
    "PersonInstance",
    "PoseEstimator",
    "PoseNet",
    "PosePipeline",
    "PoseTracker",
    "Poses",
    "Preset",
    "VideoError",
    "VideoReader",
    "__version__",
    "draw_poses",
    "evaluate",
    "get_preset",
    "list_images",
    "load",
    "load_detector",
    "read_image",
]
