"""The SimpleBaseline head: transposed convolutions up to stride 4, then a 1x1 conv per keypoint."""

import torch
from torch import nn


class HeatmapHead(nn.Module):
    """``num_deconv`` x (ConvTranspose2d 4x4 stride 2 -> BN -> ReLU), then a 1x1 conv to K heatmaps.

    Each transposed convolution doubles height and width exactly. Module names
    (``deconv_layers.{0,1,3,4,6,7}``, ``final_layer``) match the published checkpoints.
    """

    def __init__(
        self, in_channels: int, num_keypoints: int, channels: int = 256, num_deconv: int = 3
    ):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(num_deconv):
            layers += [
                nn.ConvTranspose2d(
                    in_channels if i == 0 else channels,
                    channels,
                    4,
                    stride=2,
                    padding=1,
                    bias=False,
                ),
                nn.BatchNorm2d(channels),
                nn.ReLU(inplace=True),
            ]
        self.deconv_layers = nn.Sequential(*layers)
        self.final_layer = nn.Conv2d(channels, num_keypoints, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.001) weights, zero bias, unit BatchNorm: the reference's head init."""
        for m in self.modules():
            if getattr(m, "weight", None) is None or m.weight.is_meta:
                continue  # built on "meta" to take loaded weights: normal_ would import dynamo
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(features))
