"""Overfit benchmark: train a preset on the 4 COCO sample images until it scores AP >= target there.

A check that the whole training path (augmentation off, targets, loss, Adam, BatchNorm
statistics, checkpointed evaluation with the published metric) can fit data at all: a model
that cannot memorise 12 people has a bug. The run uses the ground-truth boxes of
``tests/data/coco-mini`` for training and for scoring, all 12 annotated people in every batch,
and stops at the first validation that reaches the target. Prints iterations, wall time and
the AP curve; the run folder (``--out``) holds ``metrics.jsonl`` and the config.

Usage::

    python benchmarks/bench_overfit.py                                  # resnext50 256x192
    python benchmarks/bench_overfit.py --model tiny_coco_96x64 --device cpu
    python benchmarks/bench_overfit.py --pretrained imagenet --device cuda
"""

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from nextpose import get_preset
from nextpose.training import Dataset, Trainer

COCO = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-mini"
NO_AUGMENT = [f"data.augment.{p}_prob=0" for p in ("flip", "half_body", "shift", "scale", "rotate")]


class TargetReached(Exception):
    """Raised from validation to end the run at the first AP >= target."""


class OverfitTrainer(Trainer):
    """A :class:`Trainer` that stops once validation AP reaches ``target``."""

    target = 0.9

    def validate(self) -> dict[str, float]:
        metrics = super().validate()
        print(f"iteration {self.iteration}: AP {metrics['AP']:.3f}", flush=True)
        if metrics["AP"] >= self.target:
            raise TargetReached
        return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_coco_256x192")
    parser.add_argument("--target", type=float, default=0.9, help="AP to reach")
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=20, help="iterations between scorings")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--pretrained", default="none", help="trunk init (default: from scratch)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--out", help="run folder (default: a temporary folder)")
    args = parser.parse_args()

    data = Dataset(COCO / "test_coco.json", COCO)
    settings = {
        "train.epochs": args.max_iters,  # one iteration per epoch: all 12 people in one batch
        "train.batch_size": 12,
        "train.lr": args.lr,
        "train.warmup_iters": 10,
        "train.milestones": [args.max_iters + 1],
        "train.val_interval": args.eval_every,
        "train.log_interval": 10,
        "train.amp": args.amp,
        "data.workers": 0,
    }
    config = get_preset(args.model).config.override(
        [f"{k}={json.dumps(v)}" for k, v in settings.items()] + NO_AUGMENT
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="nextpose-overfit-"))
    OverfitTrainer.target = args.target
    trainer = OverfitTrainer(config, data, out, data, args.pretrained, device=args.device)
    start = time.perf_counter()
    reached = True
    try:
        trainer.fit()
        reached = False
    except TargetReached:
        pass
    seconds = time.perf_counter() - start
    device = trainer.device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    verdict = "reached" if reached else "did NOT reach"
    print(
        f"{args.model} on {device} ({name or platform.machine()}), {args.pretrained} init, "
        f"amp {args.amp}: {verdict} AP {args.target} after {trainer.iteration} iterations "
        f"(batch 12), {seconds:.0f} s; run folder {out}"
    )


if __name__ == "__main__":
    main()
