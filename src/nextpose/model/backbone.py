"""ResNeXt trunk, built from torchvision's ResNet so parameter names match the published files."""

import torch
from torchvision.models.resnet import Bottleneck, ResNet


class ResNeXt(ResNet):
    """torchvision's ResNet with grouped bottlenecks, without the classifier.

    Returns the stage-4 feature map: (N, 2048, h/32, w/32). Names (``conv1``, ``layer1.0.conv2``,
    ``layer1.0.downsample.1``, ...) are torchvision's, which are also the reference's.
    """

    def __init__(
        self, blocks: tuple[int, int, int, int], groups: int = 32, width_per_group: int = 4
    ):
        super().__init__(Bottleneck, list(blocks), groups=groups, width_per_group=width_per_group)
        del self.avgpool, self.fc
        self.out_channels = 512 * Bottleneck.expansion

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
