"""Training throughput: images/s of the training step, fp32 against AMP, in one run.

Times ``Learner.step`` (normalise, forward, KeypointMSELoss, backward, Adam step; the same code
``nextpose train`` runs) on fixed batches already in memory, so the figure is the network's
side only; the input pipeline has its own benchmark (``bench_train_data.py``). Each precision
gets its own model and learner (same seed); repetitions are taken round robin over the
precisions and the median is reported with the ratio to fp32.

Usage::

    python benchmarks/bench_train_speed.py --device cuda             # batch 64: fp32, bf16, fp16
    python benchmarks/bench_train_speed.py --device cuda --compile
    python benchmarks/bench_train_speed.py --device cpu --batch 8    # bf16 on AMX CPUs only
"""

import argparse
import json
import platform
import statistics
import time

import torch

from nextpose import get_preset
from nextpose.options import cpu_supports_bf16
from nextpose.training import Learner, build_learner, build_model


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnext50_coco_256x192")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=64, help="images per step (64: per GPU)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (median reported)")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)

    precisions = ["none"]
    if device.type == "cuda":
        precisions += ["bf16", "fp16"]
    elif cpu_supports_bf16():
        precisions += ["bf16"]
    config = get_preset(args.model).config
    w, h = config.model.input_size
    k = config.keypoints.num_keypoints
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch, h, w, 3), dtype=torch.uint8, generator=generator)
    targets = torch.rand(args.batch, k, h // 4, w // 4, generator=generator)
    weights = torch.ones(args.batch, k)
    if device.type == "cuda":
        images, targets, weights = images.pin_memory(), targets.pin_memory(), weights.pin_memory()

    trainers: dict[str, Learner] = {}
    for amp in precisions:
        settings = {
            "train.amp": amp,
            "train.batch_size": args.batch,
            "train.compile": args.compile,
            "train.channels_last": not args.no_channels_last,
        }
        run = config.override([f"{key}={json.dumps(v)}" for key, v in settings.items()])
        model, _ = build_model(run, device)
        trainers[amp] = build_learner(model, run.train, device)
        trainers[amp].train_mode()

    def steps(trainer: Learner) -> float:
        sync(device)
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(images, targets, weights)
        sync(device)
        return time.perf_counter() - start

    for trainer in trainers.values():  # warm-up: cuDNN autotuning, compilation, allocator
        trainer.step(images, targets, weights)
        steps(trainer)
    times: dict[str, list[float]] = {amp: [] for amp in trainers}
    for _ in range(args.reps):
        for amp, trainer in trainers.items():
            times[amp].append(steps(trainer))

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"{args.model}, {device} ({name or platform.machine()}), torch {torch.__version__}, "
        f"batch {args.batch}, channels-last {not args.no_channels_last}, compile {args.compile}, "
        f"{args.steps} steps x {args.reps} repetitions"
    )
    fp32 = args.batch * args.steps / statistics.median(times["none"])
    for amp, seconds in times.items():
        rate = args.batch * args.steps / statistics.median(seconds)
        label = "fp32" if amp == "none" else f"AMP {amp}"
        if amp == "none" and device.type == "cuda" and hasattr(torch.backends.cudnn, "conv"):
            label += f" (cuDNN convolutions: {torch.backends.cudnn.conv.fp32_precision})"
        print(f"  {label:<9} {rate:9.1f} images/s  x{rate / fp32:.2f} fp32")
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"  peak GPU memory {peak:.1f} GiB (all trainers together)")


if __name__ == "__main__":
    main()
