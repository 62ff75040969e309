"""Where a run stands (:class:`TrainState`), and the one checkpoint layout that saves it.

``last.pth`` holds everything a resume needs (:data:`CHECKPOINT_KEYS`); ``best.pth`` holds the
weights part of the same dict (:data:`WEIGHTS_KEYS`), which is what :func:`nextpose.load` reads.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import ConfigError, TrainingError

log = logging.getLogger("nextpose")

CHECKPOINT_KEYS = ("state_dict", "config", "optimizer", "scaler", "epoch", "iteration", "best_ap",
                   "pretrained", "metrics", "rng_torch")  # fmt: skip
WEIGHTS_KEYS = ("state_dict", "config", "epoch", "metrics")

# Keys a resumed run may change: they decide how long the run goes and what it reports, not what
# any step computes. Every other difference between the saved and the given config is refused.
RESUME_OVERRIDABLE = (
    "train.epochs",
    "train.val_interval",
    "train.log_interval",
    "data.workers",
    "data.start_method",
)


@dataclass
class TrainState:
    """Where a run stands. ``epoch`` counts finished epochs; ``iteration`` optimisation steps."""

    epoch: int = 0
    iteration: int = 0
    best_ap: float = -math.inf
    pretrained: str | None = None  # what initialised the trunk (kept through resumes)
    world_size: int = 1  # the processes the run trains on (the total batch is this x batch_size)
    # Counted in this process only (not saved): samples whose image could not be read, and the
    # files already named in a warning.
    skipped: int = 0
    bad_images: set[str] = field(default_factory=set)


def make_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    config: Config,
    state: TrainState,
    metrics: dict[str, float] | None,
) -> dict[str, Any]:
    """The ``last.pth`` dict; ``{k: ckpt[k] for k in WEIGHTS_KEYS}`` is ``best.pth``."""
    return {
        "state_dict": model.state_dict(),
        "config": config.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "epoch": state.epoch,
        "iteration": state.iteration,
        "best_ap": state.best_ap,
        "pretrained": state.pretrained,
        "metrics": metrics,
        "rng_torch": torch.get_rng_state(),  # data randomness comes from (seed, epoch, index)
        "world_size": state.world_size,  # not in CHECKPOINT_KEYS: older files lack it
    }


def restore_checkpoint(
    saved: dict[str, Any],
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    world_size: int = 1,
) -> TrainState:
    """Load a :func:`make_checkpoint` dict into the model, optimizer, scaler and torch's RNG.

    Raises:
        TrainingError: naming ``path`` and the entry that is missing or does not fit.
    """
    missing = [k for k in CHECKPOINT_KEYS if k not in saved]
    if missing:
        what = "a best.pth (weights only)" if "optimizer" in missing else "damaged or foreign"
        raise TrainingError(
            f"{path}: cannot resume from this file: it has no {', '.join(map(repr, missing))} "
            f"entr{'y' if len(missing) == 1 else 'ies'} (is it {what}?). --resume needs the "
            "last.pth a nextpose training run wrote"
        )
    for key, kind in (("epoch", int), ("iteration", int), ("best_ap", float)):
        value = saved[key]
        if isinstance(value, bool) or not isinstance(value, kind | int):
            raise TrainingError(f"{path}: cannot resume: '{key}' is {value!r}, not a number")
    parts = (("state_dict", model), ("optimizer", optimizer), ("scaler", scaler))
    for key, part in parts:
        try:
            part.load_state_dict(saved[key])
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError) as e:
            raise TrainingError(
                f"{path}: cannot resume: its '{key}' entry does not fit this run "
                f"({type(e).__name__}: {str(e)[:300]})"
            ) from None
    try:
        torch.set_rng_state(saved["rng_torch"])
    except (TypeError, RuntimeError) as e:
        raise TrainingError(f"{path}: cannot resume: its 'rng_torch' entry is not a torch "
                            f"random state ({e})") from None  # fmt: skip
    before = saved.get("world_size")
    if isinstance(before, int) and before != world_size:
        config = saved.get("config")
        train = config.get("train") if isinstance(config, dict) else None
        with_lr = isinstance(train, dict) and train.get("scale_lr") is True
        scaled = " and the learning rate scaled with it" if with_lr else ""
        log.warning(
            "resuming %s on %d process%s; it trained on %d until now: from here the total batch"
            "%s changes, so the run will not equal one trained on %d throughout",
            path.parent, world_size, "" if world_size == 1 else "es", before, scaled, before,
        )  # fmt: skip
    return TrainState(
        epoch=saved["epoch"],
        iteration=saved["iteration"],
        best_ap=saved["best_ap"],
        pretrained=saved["pretrained"],
        world_size=world_size,
    )


def resume_config(config: Config, saved: dict[str, Any], path: Path) -> Config:
    """The config a resumed run goes on with: ``config``, which must equal the saved one except
    for :data:`RESUME_OVERRIDABLE` keys (their new values are applied and logged).

    Raises:
        TrainingError: the configs differ in other keys (each named, with both values).
    """
    try:
        before = Config.from_dict(saved["config"])
    except (ConfigError, KeyError, TypeError) as e:
        raise TrainingError(
            f"{path}: cannot resume: the config it carries is invalid ({e})"
        ) from None
    old, new = _flatten(before.to_dict()), _flatten(config.to_dict())
    changed = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
    refused = [k for k in changed if k not in RESUME_OVERRIDABLE]
    if refused:
        shown = "; ".join(f"{k}: saved {_show(old.get(k))}, given {_show(new.get(k))}"
                          for k in refused[:20])  # fmt: skip
        more = f" ... ({len(refused)} keys in all)" if len(refused) > 20 else ""
        raise TrainingError(
            f"{path} was trained with another config: {shown}{more}. A resumed run keeps its "
            f"config; only {', '.join(RESUME_OVERRIDABLE)} may change. Resume with the run's own "
            f"config ({path.parent / 'config.toml'}, e.g. `nextpose train "
            f"{path.parent / 'config.toml'} --out {path.parent} --resume`), or train into "
            "another folder"
        )
    for key in changed:
        log.warning("resuming %s with %s=%s (was %s)", path.parent, key, _show(new.get(key)),
                    _show(old.get(key)))  # fmt: skip
    return config


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
