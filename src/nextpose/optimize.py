"""Faster inference graphs of a trained PoseNet: BatchNorm folded into the convolutions.

Folding changes only rounding (each output is computed with one fused weight instead of a
convolution followed by a scale and shift), so heatmaps agree with the plain model to ~1e-6
relative. It is also the safe way to compile: torch 2.14's inductor with ``freezing=True``
miscompiles a ConvTranspose2d with equal in/out channels followed by BatchNorm, and folding
first removes that pattern.
"""

import copy

import torch
from torch import nn


def _fold(conv: nn.Conv2d | nn.ConvTranspose2d, bn: nn.BatchNorm2d) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (conv gains a bias if it had none)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
    shift = bn.bias - bn.running_mean * scale
    with torch.no_grad():
        if isinstance(conv, nn.ConvTranspose2d):  # weight (C_in, C_out / groups, kh, kw)
            conv.weight.mul_(scale.view(1, -1, 1, 1))
        else:  # weight (C_out, C_in / groups, kh, kw)
            conv.weight.mul_(scale.view(-1, 1, 1, 1))
        bias = shift if conv.bias is None else conv.bias * scale + shift
        conv.bias = nn.Parameter(bias.detach().clone())


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm merged into the conv before it.

    Works on the module structure of :class:`nextpose.model.PoseNet`: torchvision bottlenecks
    (``convN``/``bnN``, ``downsample.0/1``), the stem (``conv1``/``bn1``) and the head's
    ``deconv_layers`` Sequential; each folded BatchNorm becomes an Identity.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        children = dict(module.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            conv_name = name.replace("bn", "conv") if name.startswith("bn") else None
            if conv_name is None and name.isdigit():  # inside a Sequential: the previous module
                conv_name = str(int(name) - 1)
            conv = children.get(conv_name) if conv_name else None
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
                _fold(conv, child)
                setattr(module, name, nn.Identity())
    remaining = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if remaining:
        raise ValueError(f"fold_batchnorm: no convolution found before {remaining[:3]}")
    return model
