"""ResNeXt trunk (Xie et al. 2017, "Aggregated Residual Transformations"), with torchvision's
parameter names (``conv1``, ``layer1.0.conv2``, ``layer1.0.downsample.1``, ...), which are also
the published checkpoints' names.

Written here, not subclassed from ``torchvision.models.resnet``: importing torchvision costs
every process 2.4 s (its ``ops`` import ``torch._dynamo``; BENCHMARKS.md, "Start-up"), more than
a cached ONNX Runtime network takes to start, and only the detector and ImageNet weights need
it. tests/test_model.py checks that it computes what torchvision's ResNeXt does, bit for bit.
"""

import torch
from torch import nn


class Bottleneck(nn.Module):
    """1x1 reduce, grouped 3x3 (carrying the stride, "ResNet v1.5"), 1x1 expand to 4x
    ``planes``; BatchNorm after each; the shortcut is projected (1x1 + BatchNorm) where the
    shape changes."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, groups: int, width: int):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNeXt(nn.Module):
    """Stem (7x7 stride-2 convolution, 3x3 stride-2 max pool) and four stages of bottlenecks.

    ``forward`` maps (N, 3, h, w) to the stage-4 feature map (N, 2048, h/32, w/32).
    ``groups=1, width_per_group=64`` is ResNet.
    """

    def __init__(
        self, blocks: tuple[int, int, int, int], groups: int = 32, width_per_group: int = 4
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = 64
        for stage, count in enumerate(blocks):
            planes = 64 * 2**stage
            width = planes * width_per_group // 64 * groups
            layer = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                layer.append(Bottleneck(in_channels, planes, stride, groups, width))
                in_channels = planes * Bottleneck.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
        self.out_channels = in_channels
        for m in self.modules():  # as torchvision initialises its ResNets
            if getattr(m, "weight", None) is None or m.weight.is_meta:
                continue  # built on "meta" to take loaded weights: normal_ would import dynamo
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))
