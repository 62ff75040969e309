"""Overfit benchmark: train a preset on the 4 COCO sample images until it scores AP >= target there.

A check that the whole training path (augmentation off, targets, loss, Adam, BatchNorm
statistics, checkpointed evaluation with the published metric) can fit data at all: a model
that cannot memorise 12 people has a bug. The run uses the ground-truth boxes of
``tests/data/coco-mini`` for training and for scoring, all 12 annotated people in every batch,
and stops at the first validation that reaches the target. Prints iterations, wall time and
the AP curve; the run folder (``--out``) holds ``metrics.jsonl``, the config and the weights
as of the last scoring (``model.pth``, a nextpose checkpoint).

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
from nextpose.checkpoint import save_model
from nextpose.training import (
    Dataset,
    RunFolder,
    TrainState,
    build_learner,
    build_loader,
    build_model,
    load_eval_set,
    load_instances,
    train_one_epoch,
    validate,
)

COCO = Path(__file__).resolve().parents[1] / "tests" / "data" / "coco-mini"
NO_AUGMENT = [f"data.augment.{p}_prob=0" for p in ("flip", "half_body", "shift", "scale", "rotate")]


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
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The training loop of nextpose.training.train, made of its parts, with an early stop.
    instances = load_instances(data, config, "training")
    eval_set = load_eval_set(data, config)
    model, _ = build_model(config, device, args.pretrained)
    learner = build_learner(model, config.train, device)
    loader = build_loader(instances, data, config, device)
    state, reached = TrainState(), False
    start = time.perf_counter()
    with RunFolder(out) as run:
        run.check(resume=False)
        run.start(config.to_toml(), {"benchmark": "bench_overfit", "device": str(device)}, 0)
        while state.epoch < config.train.epochs and not reached:
            train_one_epoch(learner, loader, state, config.train.epochs, run)
            state.epoch += 1
            if state.epoch % args.eval_every == 0:
                metrics = validate(learner, config, eval_set, data)
                run.log({"epoch": state.epoch, "iteration": state.iteration, "val": metrics})
                print(f"iteration {state.iteration}: AP {metrics['AP']:.3f}", flush=True)
                reached = metrics["AP"] >= args.target
                # The trained weights, for measuring inference on them (bench_inference.py
                # --checkpoint): peaked heatmaps, unlike untrained ones.
                save_model(out / "model.pth", model, config, iteration=state.iteration, **metrics)
    seconds = time.perf_counter() - start
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    verdict = "reached" if reached else "did NOT reach"
    print(
        f"{args.model} on {device} ({name or platform.machine()}), {args.pretrained} init, "
        f"amp {args.amp}: {verdict} AP {args.target} after {state.iteration} iterations "
        f"(batch 12), {seconds:.0f} s; run folder {out}"
    )


if __name__ == "__main__":
    main()
