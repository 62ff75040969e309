"""Test-time input and output transforms around the network: normalisation and the flip test."""

from collections.abc import Callable, Sequence

import torch


def normalize(
    crops: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """(N, h, w, 3) uint8 RGB crops -> (N, 3, h, w) float32 network input, ``(x - mean) / std``.

    ``mean`` and ``std`` are per channel (R, G, B), three numbers or (1, 3, 1, 1) tensors on the
    crops' device. A true division by std, as the reference does (not a product with 1 / std).
    The result is contiguous (N, 3, h, w), the reference's layout: a channels-last input would
    make PyTorch pick other convolution kernels, which sum in another order (heatmaps no longer
    bit-identical, and DARK's Newton step amplifies that).
    """
    if not isinstance(mean, torch.Tensor):
        mean = torch.tensor(mean, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    if not isinstance(std, torch.Tensor):
        std = torch.tensor(std, dtype=torch.float32, device=crops.device).view(1, 3, 1, 1)
    return ((crops.permute(0, 3, 1, 2).float() - mean) / std).contiguous()


def flip_test(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    flip_indices: Sequence[int] | torch.Tensor,
    joint: bool = False,
) -> torch.Tensor:
    """Heatmaps of ``inputs`` averaged with those of the mirrored inputs, as the reference does.

    The mirrored crops' heatmaps are mirrored back, left/right channels swapped
    (``flip_indices``, a list or a long tensor on the device) and shifted one column right (the
    first column kept). ``joint`` runs both as one batch of 2N (fewer, larger calls) instead of
    two forward passes of N.
    """
    if joint:
        both = forward(torch.cat([inputs, inputs.flip(3)]))
        out, mirrored = both[: inputs.shape[0]], both[inputs.shape[0] :]
    else:
        out, mirrored = forward(inputs), forward(inputs.flip(3))
    index = flip_indices
    if not isinstance(index, torch.Tensor):
        index = torch.tensor(list(index), dtype=torch.long, device=mirrored.device)
    mirrored = mirrored.flip(3).index_select(1, index)
    mirrored = torch.cat([mirrored[..., :1], mirrored[..., :-1]], dim=3)
    return (out + mirrored) * 0.5
