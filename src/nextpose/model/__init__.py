"""The network: ResNeXt trunk (backbone.py), deconvolution head (head.py), joined (posenet.py)."""

from .backbone import ResNeXt
from .head import HeatmapHead
from .posenet import PoseNet

__all__ = ["HeatmapHead", "PoseNet", "ResNeXt"]
