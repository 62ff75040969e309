"""ImageNet initialisation of the ResNeXt or ResNet trunk from OpenMMLab, torchvision or local
files."""

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .. import checkpoint
from ..config import ModelConfig
from ..errors import InputError

_MMCLS = "https://download.openmmlab.com/mmclassification/v0/resnext/"
# The ImageNet files the published pose models were trained from (July 2020), by depth ...
IMAGENET_2020 = {
    50: _MMCLS + "resnext50_32x4d_batch256_imagenet_20200708-c07adbb7.pth",
    101: _MMCLS + "resnext101_32x4d_batch256_imagenet_20200708-87f2d1c9.pth",
    152: _MMCLS + "resnext152_32x4d_batch256_imagenet_20200708-aab5034c.pth",
}
# ... and the ones today's mmpose configs resolve to (2021).
IMAGENET_2021 = {
    50: _MMCLS + "resnext50_32x4d_b32x8_imagenet_20210429-56066e27.pth",
    101: _MMCLS + "resnext101_32x4d_b32x8_imagenet_20210506-e0fa3dd5.pth",
    152: _MMCLS + "resnext152_32x4d_b32x8_imagenet_20210524-927787be.pth",
}

SOURCES = ("imagenet", "imagenet-2021", "torchvision", "none", "a path or URL")


def backbone_state(obj: dict) -> "OrderedDict[str, torch.Tensor]":
    """Trunk weights of a classification checkpoint, with nextpose's (torchvision's) names.

    OpenMMLab files name the trunk ``backbone.*`` and the classifier ``head.fc.*``; torchvision
    files name the trunk at the top level and the classifier ``fc.*``; pose checkpoints
    (``backbone.*`` + ``head.*``) work too. Classifier and head weights are dropped.
    """
    state = obj.get("state_dict", obj)
    if any(k.startswith("backbone.") for k in state):
        items = ((k[len("backbone.") :], v) for k, v in state.items() if k.startswith("backbone."))
    else:
        items = ((k, v) for k, v in state.items() if not k.startswith("fc."))
    return OrderedDict((k.removeprefix("module."), v) for k, v in items if torch.is_tensor(v))


def _torchvision_resnet(depth: int) -> str:
    """torchvision's original (V1) ImageNet ResNet weights, what the reference's ResNet configs
    name ``torchvision://resnet{depth}``."""
    from torchvision.models import ResNet50_Weights, ResNet101_Weights, ResNet152_Weights

    weights = {50: ResNet50_Weights, 101: ResNet101_Weights, 152: ResNet152_Weights}[depth]
    return weights.IMAGENET1K_V1.url


def resolve_source(source: str, model: ModelConfig) -> str | None:
    """A path/URL for ``source`` (see :data:`SOURCES`), or None for no initialisation.

    ResNet trunks (groups 1, width 64) start from torchvision's ImageNet ResNets for both
    ``imagenet`` and ``torchvision``, as the reference's ResNet configs do."""
    if source == "none":
        return None
    resnet = (model.groups, model.width_per_group) == (1, 64) and model.depth is not None
    if resnet and source in ("imagenet", "torchvision"):
        assert model.depth is not None
        return _torchvision_resnet(model.depth)
    if source in ("imagenet", "imagenet-2021"):
        table = IMAGENET_2020 if source == "imagenet" else IMAGENET_2021
        if model.depth not in table or (model.groups, model.width_per_group) != (32, 4):
            raise InputError(
                f"--pretrained {source}: OpenMMLab ImageNet weights exist for ResNeXt-50/101/152 "
                "32x4d only; this model is custom (pass a file, or 'none')"
            )
        return table[model.depth]
    if source == "torchvision":
        if model.depth != 50 or (model.groups, model.width_per_group) != (32, 4):
            raise InputError(
                "--pretrained torchvision: torchvision ships ResNeXt-50 32x4d only "
                "(its ResNeXt-101 is 32x8d/64x4d); use 'imagenet' for this model"
            )
        from torchvision.models import ResNeXt50_32X4D_Weights

        return ResNeXt50_32X4D_Weights.IMAGENET1K_V1.url
    if not checkpoint.is_url(source) and not Path(source).expanduser().exists():
        raise InputError(
            f"--pretrained {source}: neither a name ({', '.join(SOURCES[:-1])}) nor an "
            "existing weights file or URL"
        )
    return source


def load_pretrained_backbone(backbone: nn.Module, source: str, model: ModelConfig) -> str | None:
    """Fill ``backbone`` from ``source``; returns what was loaded (None for 'none').

    The trunk must match exactly (strict loading); a mismatch names the file and the keys.
    """
    location = resolve_source(source, model)
    if location is None:
        return None
    path = checkpoint.resolve(location)
    state = backbone_state(checkpoint.read(path))
    kind = "ResNet" if (model.groups, model.width_per_group) == (1, 64) else "ResNeXt"
    name = f"{kind} trunk {model.blocks}"
    checkpoint.load_into(backbone, {"state_dict": state}, str(path), name)
    return str(location)
