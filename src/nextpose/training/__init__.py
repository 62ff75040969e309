"""Training: loss (loss.py), Adam + schedule (optim.py), ImageNet init (pretrained.py), DDP
plumbing (distributed.py), the run folder (run_folder.py), the run's state and checkpoint layout
(state.py) and the loop (loop.py)."""

from ..errors import TrainingError
from .loop import (
    Dataset,
    Learner,
    NonFiniteLoss,
    Trainer,
    build_learner,
    build_loader,
    build_model,
    load_eval_set,
    load_instances,
    train,
    train_one_epoch,
    validate,
)
from .loss import KeypointMSELoss
from .optim import build_optimizer, lr_at
from .pretrained import load_pretrained_backbone
from .run_folder import RunFolder
from .state import RESUME_OVERRIDABLE, TrainState, make_checkpoint, restore_checkpoint

__all__ = [
    "RESUME_OVERRIDABLE",
    "Dataset",
    "KeypointMSELoss",
    "Learner",
    "NonFiniteLoss",
    "RunFolder",
    "TrainState",
    "Trainer",
    "TrainingError",
    "build_learner",
    "build_loader",
    "build_model",
    "build_optimizer",
    "load_eval_set",
    "load_instances",
    "load_pretrained_backbone",
    "lr_at",
    "make_checkpoint",
    "restore_checkpoint",
    "train",
    "train_one_epoch",
    "validate",
]
