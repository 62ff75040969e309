"""Training: loss (loss.py), Adam + schedule (optim.py), ImageNet init (pretrained.py), DDP
plumbing (distributed.py) and the loop (loop.py)."""

from .loop import Dataset, Trainer, TrainingError, train
from .loss import KeypointMSELoss
from .optim import build_optimizer, lr_at
from .pretrained import load_pretrained_backbone

__all__ = [
    "Dataset",
    "KeypointMSELoss",
    "Trainer",
    "TrainingError",
    "build_optimizer",
    "load_pretrained_backbone",
    "lr_at",
    "train",
]
