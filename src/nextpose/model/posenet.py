"""PoseNet: normalised image crops in, keypoint heatmaps out."""

import torch
from torch import nn

from ..config import ModelConfig
from .backbone import ResNeXt
from .head import HeatmapHead


class PoseNet(nn.Module):
    """ResNeXt trunk + deconvolution head (Xiao et al. 2018, "Simple Baselines").

    ``forward`` maps (N, 3, h, w) normalised RGB crops to (N, K, h/s, w/s) heatmaps, s =
    ``config.heatmap_stride`` (4 for the published models). Pre- and
    post-processing live in :class:`nextpose.PoseEstimator`.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone = ResNeXt(config.blocks, config.groups, config.width_per_group)
        self.head = HeatmapHead(
            self.backbone.out_channels,
            config.num_keypoints,
            config.deconv_channels,
            config.num_deconv,
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))
