"""Inference speed against this machine's own ceiling and a plain eager baseline, in one run.

Prints, for resnext50 256x192 (seed-0 deterministic weights) on the COCO sample:

1. the machine (CPU, SIMD level, native bf16/fp16, load) and library versions;
2. the fp32 matmul ceiling (GFLOP/s, measured at the start and at the end) and the crops/s it
   allows: ceiling / GFLOP per crop (11.1 for resnext50 256x192; twice that with flip);
3. model-only crops/s (flip on, batch 8) of the plain eager model and of every fast path,
   with the fast path's ablations (channels-last, BatchNorm folding, joint flip batch);
4. each path's numerical effect on the oracle sample: keypoints vs the fp32 eager path (share
   within 1e-3 px, max deviation) and vs the reference's (mmpose) keypoints; bf16 and fp16
   are also emulated in fp32 (``nextpose.optimize.emulate_autocast``), so their effect is
   measured on any machine (the seed-0 weights' activations reach 2e5 and overflow fp16;
   ``--checkpoint`` measures trained weights instead);
5. the in-graph crop (ONNX image graph): mean abs pixel difference vs OpenCV and keypoints;
6. end-to-end crops/s: read JPEGs + crop + forward + flip + decode back to image pixels, for
   the plain path (eager, one image at a time) and nextpose's paths, with ratios.

Absolute numbers on a shared machine are noise: compare the ratios, measured in one run.
Repetitions are interleaved (round robin over the paths) and the median is reported.

Usage::

    python benchmarks/bench_inference.py                 # everything (~10 min on 2 cores)
    python benchmarks/bench_inference.py --quick         # fewer repeats, GT boxes only
    python benchmarks/bench_inference.py --no-compile --no-onnx
    python benchmarks/bench_inference.py --device cuda --batch 64 --precision bf16
"""

import argparse
import copy
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

import nextpose
from nextpose import checkpoint
from nextpose.evaluation import evaluate
from nextpose.geometry import crop_region, crop_to_image, cut_crops
from nextpose.geometry_torch import warp_crops
from nextpose.model import PoseNet
from nextpose.optimize import (
    ReducedPrecision,
    emulate_autocast,
    prepack,
    prepare_for_inference,
    subpixel_deconvolutions,
)
from nextpose.options import (
    KEEP_FP32,
    RunOptions,
    cpu_capability,
    cpu_supports_bf16,
    cpu_supports_fp16,
)
from nextpose.predictor import PoseEstimator
from nextpose.presets import get_preset
from nextpose.runtime import REDUCED, TorchNetwork

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT / "tests" / "data" / "coco-mini"
ORACLE = ROOT / "tests" / "data" / "oracle"
DETECTIONS = "test_coco_det_AP_H_56.json"
ORACLE_RUNS = ORACLE / "td-hm_resnext50_8xb64-210e_coco-256x192"


def oracle_model(preset: str) -> PoseNet:
    """The preset's network with the oracle's seed-0 deterministic weights."""
    spec = importlib.util.spec_from_file_location("make_weights", ORACLE / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    config = get_preset(preset).config
    manifest = json.loads((ORACLE / f"manifest_resnext{config.model.depth}.json").read_text())
    net = PoseNet(config.model)
    checkpoint.load_into(net, make_weights.make_checkpoint(manifest, 0), "seed-0", preset)
    return net.eval()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_flags() -> str:
    """The CPU flags that decide the fast paths (as `lscpu` lists them)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "amx_int8")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return " ".join(f for f in wanted if f in have) or "none of " + " ".join(wanted)
    except OSError:
        pass
    return "unknown"


def wait_until_quiet(max_load: float, timeout: float) -> float:
    """Wait (up to ``timeout`` s) for the 1-minute load average to fall below ``max_load``."""
    start = time.time()
    load = os.getloadavg()[0]
    while load > max_load and time.time() - start < timeout:
        print(f"  load average {load:.2f} > {max_load}: waiting ...", flush=True)
        time.sleep(30)
        load = os.getloadavg()[0]
    return load


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, reps: int = 8) -> float:
    """The best square-matmul rate over a few sizes and ``reps`` tries each: the practical
    ceiling of dense convolutions (the best the machine reaches, not an average)."""
    sizes = (4096, 8192) if device.type == "cuda" else (2048, 3072, 4096)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b
        sync(device)
        for _ in range(reps):
            start = time.perf_counter()
            a @ b
            sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def conv_gflops(device: torch.device, dtype: torch.dtype, reps: int = 6) -> float:
    """The best rate of large 1x1 convolutions (channels-last): oneDNN's GEMM, the kernels
    the network runs. On AMD CPUs torch.matmul goes through MKL, which runs below this."""
    best = 0.0
    for c, side in ((1024, 64), (2048, 32)):
        x = torch.randn(8, c, side, side, device=device).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, c, 1, 1, device=device).to(dtype)
        with torch.inference_mode():
            torch.nn.functional.conv2d(x, w)
            sync(device)
            for _ in range(reps):
                start = time.perf_counter()
                torch.nn.functional.conv2d(x, w)
                sync(device)
                best = max(best, 2 * 8 * c * c * side * side / (time.perf_counter() - start) / 1e9)
    return best


def ceiling_gflops(device: torch.device, dtype: torch.dtype) -> float:
    """The practical dense ceiling: the better of square matmuls and 1x1 convolutions."""
    return max(matmul_gflops(device, dtype), conv_gflops(device, dtype))


def gflop_per_crop(net: torch.nn.Module, input_size: tuple[int, int]) -> float:
    """Counted FLOPs (2 per multiply-add) of one forward pass of one crop."""
    from torch.utils.flop_counter import FlopCounterMode

    w, h = input_size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, h, w))
    return counter.get_total_flops() / 1e9


def interleaved(
    fns: dict[str, Callable[[], object]], reps: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per call of each function, repetitions taken round robin (so that load
    changes on a shared machine hit every path alike); one warm-up call each first."""
    for fn in fns.values():
        fn()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def frozen_static(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``torch.compile`` with inductor's freezing switched on (``options={"freezing": True}``
    does not, in torch 2.14.1) and static shapes: the only way inductor prepacks the convolution
    weights for oneDNN. One graph per batch size: an ablation, not a backend."""
    compiled = torch.compile(model, dynamic=False)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch._inductor.config.patch(freezing=True):
            return compiled(x)

    return run


def sample(boxes: str) -> tuple[list[str], list[np.ndarray], np.ndarray, np.ndarray]:
    """The oracle sample: image files, per-image xyxy boxes (dataset order), and the
    reference's keypoints and scores for flip on."""
    coco = nextpose.CocoKeypoints(COCO / "test_coco.json")
    if boxes == "gt":
        instances = coco.ground_truth_instances()
    else:
        instances = coco.detection_instances(COCO / DETECTIONS)
    files: list[str] = []
    per_image: list[np.ndarray] = []
    for inst in instances:
        if not files or files[-1] != inst.image_file:
            files.append(inst.image_file)
            per_image.append(np.zeros((0, 4), np.float32))
        per_image[-1] = np.concatenate([per_image[-1], inst.bbox[None]])
    oracle = np.load(ORACLE_RUNS / f"oracle_{boxes}_flip.npz")
    return files, per_image, oracle["kpts_img"], oracle["kpt_scores"]


def jittered(per_image: list[np.ndarray], copies: int) -> list[np.ndarray]:
    """Each image's xyxy boxes followed by ``copies`` seeded copies of each, every coordinate
    moved by up to 10 % of the box's size."""
    rng = np.random.default_rng(0)
    return [
        np.concatenate([b] + [
            b + rng.uniform(-0.1, 0.1, b.shape) * np.tile(b[:, 2:] - b[:, :2], 2)
            for _ in range(copies)
        ]).astype(np.float32)
        for b in per_image
    ]  # fmt: skip


def cut(
    image: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (N, h, w, 3) uint8 crops of ``boxes`` (xyxy) cut with OpenCV as the reference cuts
    them, and their regions: centers and scales (N, 2) image pixels."""
    centers, scales = crop_region(np.asarray(boxes, np.float32)[:, :4], input_size)
    return cut_crops(image, centers, scales, input_size), centers, scales


def compare(keypoints: np.ndarray, reference: np.ndarray) -> str:
    d = np.abs(keypoints - reference).max(-1)
    return f"{(d <= 1e-3).mean() * 100:6.2f}% within 1e-3 px, max {d.max():.3g} px"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="resnext50_coco_256x192")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8, help="crops per forward pass (8)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch/ORT threads")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions per path")
    parser.add_argument("--e2e-images", type=int, default=8, help="images per end-to-end pass")
    parser.add_argument("--e2e-boxes", type=int, default=8, help="boxes per image end to end")
    parser.add_argument(
        "--val-sized",
        type=int,
        default=0,
        metavar="IMAGES",
        help="also time one pass over IMAGES JPEGs with 21 boxes each (5000: val2017-sized)",
    )
    parser.add_argument("--checkpoint", help="weights instead of the oracle's seed-0 ones")
    parser.add_argument("--precision", choices=["bf16", "fp16"], help="also time autocast")
    parser.add_argument(
        "--sections",
        default="model,numerics,crop,e2e",
        help="comma-separated subset of model,numerics,crop,e2e (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="3 repeats, GT boxes only")
    parser.add_argument(
        "--jitter",
        type=int,
        default=0,
        metavar="N",
        help="numerics also on N seeded jittered copies of each GT box (+-10%% of its size)",
    )
    parser.add_argument(
        "--paths",
        help="only these paths (';'-separated names as printed, e.g. 'eager;fast')",
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime")
    parser.add_argument("--max-load", type=float, default=1.0, help="wait for a quieter machine")
    parser.add_argument("--wait", type=float, default=600, help="longest wait for quiet, s")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    reps = 3 if args.quick else args.reps
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    print("== machine")
    print(f"  date {time.strftime('%Y-%m-%d %H:%M')}, {cpu_name()}, {os.cpu_count()} cores")
    print(f"  CPU flags: {cpu_flags()}")
    print(
        f"  torch {torch.__version__} ({args.threads} threads, CPU kernels {cpu_capability()}), "
        f"numpy {np.__version__}, opencv {cv2.__version__}, python {platform.python_version()}"
    )
    try:
        import onnxruntime

        print(f"  onnxruntime {onnxruntime.__version__}")
    except ImportError:
        args.no_onnx = True
        print("  onnxruntime not installed: its paths are skipped")
    bf16, fp16 = cpu_supports_bf16(), cpu_supports_fp16()
    print(
        f"  CPU bf16: {'native' if bf16 else 'NOT native (no AVX-512 BF16 / AMX): skipped'}; "
        f"CPU fp16: {'native' if fp16 else 'NOT native: skipped'}"
    )
    if cuda:
        print(f"  GPU {torch.cuda.get_device_name(device)}")
    load = wait_until_quiet(args.max_load, args.wait)
    print(f"  load average at start {load:.2f} (1 min), {os.getloadavg()[1]:.2f} (5 min)")

    preset = get_preset(args.preset)
    config = preset.config
    w, h = config.model.input_size
    if args.checkpoint:  # e.g. a trained run's last.pth: peaked heatmaps, unlike seed 0's
        net = nextpose.load(args.preset, args.checkpoint, backend="eager").model
        print(f"  weights: {args.checkpoint} (the mmpose columns compare other weights)")
    else:
        net = oracle_model(args.preset)
    gflop = gflop_per_crop(net, (w, h))

    print("\n== ceiling")
    ceiling = ceiling_gflops(device, torch.float32)
    print(f"  fp32 matmul/1x1-conv {ceiling:.0f} GFLOP/s; {gflop:.2f} GFLOP per crop counted")
    ceiling_crops = ceiling / gflop / 2
    print(f"  ceiling: {ceiling / gflop:.1f} crops/s without flip, {ceiling_crops:.1f} with flip")
    low_ceiling = None
    if cuda or bf16:
        low_ceiling = ceiling_gflops(device, torch.bfloat16)
        print(f"  bf16 matmul {low_ceiling:.0f} GFLOP/s: {low_ceiling / gflop / 2:.1f} crops/s")

    files, per_image, _, _ = sample("det")
    images = {f: nextpose.read_image(COCO / f) for f in files}
    all_crops = np.concatenate(
        [cut(images[f], b, (w, h))[0] for f, b in zip(files, per_image, strict=True)]
    )

    def estimator(backend: str, **options: object) -> PoseEstimator:
        return PoseEstimator(
            net, config, device, name=args.preset, backend=backend, batch_size=args.batch, **options
        )

    estimators = {"eager": estimator("eager"), "fast": estimator("fast")}
    if not args.no_onnx and not cuda:
        estimators["onnxruntime"] = estimator("onnxruntime")
    if not args.no_compile:
        estimators["compile"] = estimator("compile")
    low_precision = args.precision or ("bf16" if cuda or bf16 else None)
    if low_precision:  # what --keep-fp32 trades: speed here, keypoints in the numerics section
        p = low_precision
        estimators[f"eager {p} (autocast)"] = estimator("eager", precision=p)
        for keep in ("ends", "final", "none", "head"):
            estimators[f"fast {p}, fp32 {keep}"] = estimator("fast", precision=p, keep_fp32=keep)
        if not args.no_compile:
            estimators[f"compile {p}, fp32 ends"] = estimator("compile", precision=p)
    if low_precision == "bf16" and fp16 and not cuda:  # AVX-512 FP16: fp16 convolutions too
        estimators["fast fp16, fp32 ends"] = estimator("fast", precision="fp16")
    if args.paths:
        wanted = {"eager", *args.paths.split(";")}
        estimators = {n: e for n, e in estimators.items() if n in wanted}
    build = {}
    for name, est in estimators.items():
        start = time.perf_counter()
        network = est.network
        if name == "onnxruntime":
            network.session(True)
        elif name.startswith("compile"):  # torch.compile works on the first call
            est.heatmaps(est.normalize(all_crops[: args.batch]), flip=True)
        build[name] = time.perf_counter() - start
    print("  preparation: " + ", ".join(f"{n} {t:.1f} s" for n, t in build.items()))

    def model_only_fn(name: str, crops: np.ndarray) -> Callable[[], object]:
        """The network (+ flip) over ``crops`` in batches of args.batch, inputs ready."""
        est = estimators[name]
        if name == "onnxruntime":
            session = est.network.session(True)  # crops in; keypoints, scores, heatmaps out
            batches = [crops[i : i + args.batch] for i in range(0, len(crops), args.batch)]
            return lambda: [session.run(None, {"crops": b}) for b in batches]
        inputs = est.normalize(crops)
        parts = inputs.split(args.batch)
        return lambda: [est.heatmaps(x, flip=True) for x in parts]

    model_only: dict[str, float] = {}
    if "model" in sections:
        print(f"\n== model only: batch {args.batch}, flip on, crops/s (median of {reps})")
        crops8 = all_crops[: args.batch]
        x = estimators["eager"].normalize(crops8)
        fp32 = RunOptions(device=str(device), precision="fp32").resolve()
        fold_cl = prepare_for_inference(net, device, fold=True, channels_last=True)
        ablations = {
            "fast ablation: channels-last only": TorchNetwork(
                prepare_for_inference(net, device, fold=False, channels_last=True),
                config, fp32, channels_last=True, joint_flip=False,
            ),
            "fast ablation: BN folded only": TorchNetwork(
                prepare_for_inference(net, device, fold=True, channels_last=False),
                config, fp32, channels_last=False, joint_flip=False,
            ),
            "fast ablation: folded + channels-last, one 2N batch": TorchNetwork(
                fold_cl, config, fp32, channels_last=True, joint_flip=True,
            ),
        }  # fmt: skip
        if low_precision and not cuda:  # what the sub-pixel head and the fusions buy
            p = low_precision
            example = x[:1].contiguous(memory_format=torch.channels_last)
            unfused = ReducedPrecision(
                subpixel_deconvolutions(copy.deepcopy(fold_cl)), REDUCED[p], "ends"
            )
            transposed = ReducedPrecision(fold_cl, REDUCED[p], "ends")
            for what, model, fuse in (
                ("packed, ReLUs/sums not fused", unfused, False),
                ("transposed convolutions (no sub-pixel)", transposed, True),
            ):
                packed = prepack(copy.deepcopy(model), example, args.batch, fuse=fuse)
                ablations[f"fast {p} ablation: {what}"] = TorchNetwork(
                    packed, config, fp32, channels_last=True, joint_flip=False, chunk=args.batch
                )
        if not args.no_compile:  # does weight prepacking pay? (BENCHMARKS.md, oneDNN verbose)
            static = {"fp32": fold_cl}
            if low_precision:
                static[low_precision] = ReducedPrecision(fold_cl, REDUCED[low_precision], "ends")
            for p, model in static.items():
                name = f"ablation: {p} inductor frozen, static batch (prepacked)"
                ablations[name] = TorchNetwork(
                    frozen_static(model), config, fp32, channels_last=True, joint_flip=False
                )
        fns: dict[str, Callable[[], object]] = {n: model_only_fn(n, crops8) for n in estimators}
        for name, network in ablations.items():
            fns[name] = lambda n=network: n.heatmaps(x, True)
        model_only = {n: args.batch / t for n, t in interleaved(fns, reps, device).items()}
        for name, rate in model_only.items():
            of_low = ""
            if low_ceiling and "bf16" in name:
                of_low = f", {rate / (low_ceiling / gflop / 2) * 100:5.1f}% of the bf16 ceiling"
            print(
                f"  {name:<52} {rate:7.2f} crops/s  x{rate / model_only['eager']:4.2f} eager  "
                f"{rate / ceiling_crops * 100:5.1f}% of the fp32 ceiling{of_low}"
            )
        if not args.quick:
            print(f"  fast graph, one forward pass per batch size (median of {reps}), crops/s:")
            whole = TorchNetwork(fold_cl, config, fp32, channels_last=True, joint_flip=cuda)
            sizes = (1, 4, 8, 16, 32)
            inputs = {n: estimators["fast"].normalize(all_crops[:n]) for n in sizes}
            by_batch = interleaved(
                {n: lambda n=n: whole.heatmaps(inputs[n], True) for n in sizes},
                reps,
                device,
            )
            print("    " + ", ".join(f"batch {n}: {n / t:.2f}" for n, t in by_batch.items()))

    if "numerics" in sections:
        print("\n== numerics: flip on, keypoints in image pixels")
        # bf16/fp16 rounding emulated in fp32 (see emulate_autocast): their effect on keypoints,
        # measurable on any machine; a native autocast row appears where the hardware has one.
        folded = prepare_for_inference(net, device, channels_last=False)
        emulated = {
            f"{graph} {p} (emulated)": PoseEstimator(
                emulate_autocast(model, dtype), config, device, name=args.preset, backend="eager"
            )
            for p, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))
            for graph, model in (("eager", net), ("fast", folded))
        }
        if not (cuda or bf16):  # the bf16 rows of an AVX-512 BF16/AMX CPU, computed slowly here
            for keep in KEEP_FP32:  # bf16 weights and inputs, fp32 sums: the same rounding
                emulated[f"fast bf16 {keep} (non-native)"] = PoseEstimator(
                    ReducedPrecision(folded, torch.bfloat16, keep), config, device,
                    name=args.preset, backend="eager",
                )  # fmt: skip
        runs = ["gt"] if args.quick else ["gt", "det"]
        for run in runs + (["gt-jitter"] if args.jitter else []):
            files, per_image, ref_kpts, _ = sample(run.removesuffix("-jitter"))
            if run == "gt-jitter":  # more well-formed heatmaps: the GT people, boxes moved
                per_image = jittered(per_image, args.jitter)
                ref_kpts = None
            arrays = [images[f] for f in files]
            results, failed = {}, {}
            for name, est in [*estimators.items(), *emulated.items()]:
                try:  # every image's crops batched together, in dataset order
                    poses = est.predict_many(arrays, per_image, flip=True)
                    results[name] = (
                        np.concatenate([p.keypoints for p in poses]),
                        np.concatenate([p.scores for p in poses]),
                    )
                except ValueError:  # NumericsError: the engine refuses non-finite heatmaps
                    failed[name] = "heatmaps inf/NaN: activations beyond this precision's range"
            eager_kpts, eager_scores = results["eager"]
            print(f"  {run} boxes ({len(eager_kpts)} people, {eager_kpts.size // 2} keypoints)")
            for name, (kpts, scores) in results.items():
                rel = (np.abs(scores - eager_scores) / np.abs(eager_scores)).max()
                mmpose = "" if ref_kpts is None else f" | vs mmpose: {compare(kpts, ref_kpts)}"
                print(
                    f"    {name:<22} vs fp32 eager: {compare(kpts, eager_kpts)}; scores max rel "
                    f"{rel:.1e}{mmpose}"
                )
            for name, why in failed.items():
                print(f"    {name:<22} {why}")
        if args.checkpoint:  # trained weights: what the changes do to the metric
            print("  COCO AP on the sample (detector boxes, flip, rescoring + OKS-NMS)")
            for name, est in [*estimators.items(), *emulated.items()]:
                if name in failed:
                    continue
                m = evaluate(est, COCO / "test_coco.json", COCO, COCO / DETECTIONS, progress=False)
                print(f"    {name:<22} AP {m['AP']:.4f}  AP50 {m['AP50']:.4f}  AR {m['AR']:.4f}")

    if "crop" in sections:
        print("\n== in-graph / on-device crop vs OpenCV (det boxes)")
        files, per_image, _, _ = sample("det")
        for method in ("fixed", "grid_sample"):
            diffs, differing, total = [], 0, 0
            for f, b in zip(files, per_image, strict=True):
                ref, c, s = cut(images[f], b, (w, h))
                out = warp_crops(
                    torch.from_numpy(images[f]).to(device),
                    torch.from_numpy(c).to(device),
                    torch.from_numpy(s).to(device),
                    (w, h),
                    method,
                ).cpu()
                d = np.abs(out.numpy() - ref.astype(np.float32))
                diffs.append(d.reshape(-1))
                differing += int((d.reshape(len(d), -1).max(1) > 0).sum())
                total += len(d)
            d = np.concatenate(diffs)
            print(
                f"  {method:<12} mean abs diff {d.mean():.5f} grey levels, "
                f"{(d > 0).mean() * 100:.3f}% of pixels differ (max {d.max():.0f}), "
                f"{differing}/{total} crops differ"
            )
        if not args.no_onnx:
            import onnxruntime

            from nextpose.export import export_onnx

            eager = estimators["eager"]
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = args.threads
            for method in ("fixed", "grid_sample"):
                start = time.perf_counter()
                graph = export_onnx(net, config, None, input="image", flip=True, warp=method)
                session = onnxruntime.InferenceSession(graph, options)
                made = time.perf_counter() - start
                got, want = [], []
                for f, b in zip(files, per_image, strict=True):
                    got.append(session.run(None, {"image": images[f], "boxes": b})[0])
                    want.append(eager.predict(images[f], b, flip=True).keypoints)
                print(
                    f"  ONNX image graph ({method}, made in {made:.0f} s) vs PyTorch eager path: "
                    f"{compare(np.concatenate(got), np.concatenate(want))}"
                )

    e2e: dict[str, float] = {}
    n_crops = args.e2e_images * args.e2e_boxes
    if "e2e" in sections:
        print(
            f"\n== end to end: {args.e2e_images} JPEGs x {args.e2e_boxes} boxes, read + crop + "
            f"forward + flip + decode to image pixels, batch {args.batch}; with model-only runs "
            f"of the same {n_crops} crops in the same round robin (median of {reps})"
        )
        files, per_image, _, _ = sample("det")
        paths = [COCO / files[i % len(files)] for i in range(args.e2e_images)]
        boxes = [
            np.resize(per_image[i % len(files)], (args.e2e_boxes, 4))
            for i in range(args.e2e_images)
        ]
        pairs = zip(paths, boxes, strict=True)
        same_crops = np.concatenate([cut(images[p.name], b, (w, h))[0] for p, b in pairs])
        plain = estimator("eager", read_threads=0)

        def plain_path() -> None:  # the reference's way: one image at a time
            for path, b in zip(paths, boxes, strict=True):
                plain.predict(path, b, flip=True)

        def prep_only() -> None:  # everything but the network
            for path, b in zip(paths, boxes, strict=True):
                _, centers, scales = cut(nextpose.read_image(path), b, (w, h))
                points = np.zeros((len(b), 17, 2), np.float32)
                crop_to_image(points, centers, scales, (w, h))

        e2e_fns: dict[str, Callable[[], object]] = {"plain (eager, per image)": plain_path}
        for name, est in estimators.items():
            if name != "eager":
                e2e_fns[f"nextpose {name}"] = lambda e=est: e.predict_many(paths, boxes, flip=True)
        if cuda:
            on_gpu = estimator("fast", device_crops=True, read_threads=4)
            e2e_fns["nextpose fast, crops on the GPU"] = lambda: on_gpu.predict_many(
                paths, boxes, flip=True
            )
        for name in estimators:
            e2e_fns[f"model only: {name}"] = model_only_fn(name, same_crops)
        e2e_fns["read + crop + map back only (no network)"] = prep_only
        e2e = {n: n_crops / t for n, t in interleaved(e2e_fns, reps, device).items()}
        plain_rate = e2e["plain (eager, per image)"]
        for name, rate in e2e.items():
            model = e2e.get(f"model only: {name.removeprefix('nextpose ')}")
            of_model = f"{rate / model * 100:5.1f}% of its model-only" if model else ""
            print(f"  {name:<44} {rate:7.2f} crops/s  x{rate / plain_rate:4.2f} plain  {of_model}")

    if args.val_sized:
        # COCO val2017 with the reference's person detections: 5,000 images, 104,125 boxes.
        files, per_image, _, _ = sample("det")
        many = [COCO / files[i % len(files)] for i in range(args.val_sized)]
        many_boxes = [np.resize(per_image[i % len(files)], (21, 4)) for i in range(len(many))]
        precision = args.precision or "fp32"
        fast = estimator(
            "fast", precision=precision, device_crops=cuda, read_threads=8 if cuda else 2
        )
        start = time.perf_counter()
        fast.predict_many(many, many_boxes, flip=True)
        seconds = time.perf_counter() - start
        where = ", crops on the GPU" if cuda else ""
        print(
            f"  val-sized pass (fast {precision}{where}, batch {args.batch}): {len(many)} images, "
            f"{21 * len(many)} boxes in {seconds:.1f} s = {21 * len(many) / seconds:.1f} crops/s"
        )

    end_ceiling = ceiling_gflops(device, torch.float32)
    print(f"\n== ceiling again: fp32 {end_ceiling:.0f} GFLOP/s (start {ceiling:.0f})")
    if low_ceiling:
        end_low = ceiling_gflops(device, torch.bfloat16)
        print(f"  bf16 matmul {end_low:.0f} GFLOP/s (start {low_ceiling:.0f})")
    print(f"  load average at end {os.getloadavg()[0]:.2f}")
    print("\n== targets (issue #6), fp32, flip on")
    if model_only:
        top = max(ceiling, end_ceiling) / gflop / 2  # the higher of the two measurements
        for name in [n for n in estimators if n != "eager"] + ["eager"]:
            print(
                f"  {name:<12} model-only >= 70% of the ceiling: "
                f"{model_only[name] / top * 100:.0f}% of {top:.1f} crops/s"
            )
    if e2e:
        for name in [n for n in estimators if n != "eager"]:
            rate = e2e[f"nextpose {name}"]
            print(
                f"  {name:<12} end-to-end >= 85% of model-only: "
                f"{rate / e2e[f'model only: {name}'] * 100:.0f}%; >= 2.5x plain eager end to end: "
                f"x{rate / e2e['plain (eager, per image)']:.2f}"
            )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
