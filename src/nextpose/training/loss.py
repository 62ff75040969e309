"""The training loss: keypoint-weighted mean squared error between heatmaps (§8.4)."""

import torch
from torch import nn


class KeypointMSELoss(nn.Module):
    """``mean over B*K*H*W of w[b, k] * (pred - target)^2``, times ``loss_weight``.

    Squared error per heatmap pixel (no 1/2 factor), weighted per keypoint; channels with weight 0
    add nothing but still count in the denominator, as in the reference. Computed in float32
    whatever the dtype of ``pred`` (mixed precision).
    """

    def __init__(self, loss_weight: float = 1.0):
        super().__init__()
        self.loss_weight = loss_weight

    def forward(
        self, pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        """pred, target: (B, K, H, W); weights: (B, K). Returns a scalar tensor."""
        if pred.shape != target.shape or weights.shape != pred.shape[:2]:
            raise ValueError(
                f"KeypointMSELoss: pred {tuple(pred.shape)}, target {tuple(target.shape)} and "
                f"weights {tuple(weights.shape)} must be (B, K, H, W), (B, K, H, W) and (B, K)"
            )
        error = (pred.float() - target.float()) ** 2
        return (error * weights.float()[:, :, None, None]).mean() * self.loss_weight
