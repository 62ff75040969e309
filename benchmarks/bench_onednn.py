"""Where one forward pass spends its time in oneDNN: per primitive kind and implementation
(``brgconv_1x1:avx512_core_amx`` is a bf16 convolution on AMX, ``jit:uni`` a reorder, ``ref:``
a slow reference kernel), with the layouts of the reorders, for the ``fast`` network in the
asked precision. On an AMX CPU this says which layers reach AMX, which fall back and how much
the per-call weight reorders cost (BENCHMARKS.md, "Where the bf16 forward spends its time").

Usage::

    python benchmarks/bench_onednn.py                        # resnext50 256x192, bf16 `ends`
    python benchmarks/bench_onednn.py --precision fp32 --batch 8
    python benchmarks/bench_onednn.py --keep-fp32 none --checkpoint RUN/model.pth
    python benchmarks/bench_onednn.py --layers      # also per convolution shape, with GFLOP/s
"""

import argparse
import collections
import os
import re
import sys
import tempfile

import torch

import nextpose
from nextpose.model import PoseNet
from nextpose.optimize import ReducedPrecision, cpu_features, prepare_for_inference
from nextpose.options import KEEP_FP32, RunOptions
from nextpose.presets import get_preset
from nextpose.runtime import build_network


def verbose_lines(net: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """oneDNN's ``exec`` lines of one call of ``net`` (after two warm-up calls)."""
    with torch.inference_mode():
        net(x)
        net(x)
        with tempfile.TemporaryFile(mode="w+") as log:
            # oneDNN prints from C++ to the process's stdout: catch file descriptor 1.
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(log.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    net(x)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
            log.seek(0)
            return [line for line in log.read().splitlines() if ",exec," in line]


SHAPE = re.compile(
    r"(?:g(\d+))?mb(\d+)_ic(\d+)oc(\d+)_ih\d+oh(\d+)kh(\d+)sh(\d+)\D.*ow(\d+)kw(\d+)"
)


def convolution_flops(problem: str) -> tuple[str, float]:
    """A oneDNN convolution problem descriptor (``g32mb8_ic128oc128_ih64oh64kh3sh1...``) as a
    short name (groups, channels, kernel, stride) and its FLOPs (2 per multiply-add)."""
    m = SHAPE.search(problem)
    if not m:
        return problem, 0.0
    g, mb, ic, oc, oh, kh, sh, ow, kw = (int(v) if v else 1 for v in m.groups())
    name = f"{f'g{g} ' if g > 1 else ''}{ic}->{oc} {kh}x{kw} s{sh} out {oh}x{ow}"
    return name, 2.0 * mb * oc * oh * ow * (ic // g) * kh * kw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="resnext50_coco_256x192")
    parser.add_argument("--checkpoint", help="weights (default: random; the timing is the same)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    parser.add_argument("--keep-fp32", choices=KEEP_FP32, default="ends")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument(
        "--plain",
        action="store_true",
        help="the prepared model without the fast backend's packing and sub-pixel head",
    )
    parser.add_argument(
        "--layers", action="store_true", help="also time per convolution shape, with GFLOP/s"
    )
    parser.add_argument("--repeats", type=int, default=1, help="keep the fastest of N calls")
    args = parser.parse_args()
    config = get_preset(args.preset).config
    model = PoseNet(config.model).eval()
    if args.checkpoint:
        model = nextpose.load(args.preset, args.checkpoint, backend="eager").model
    if args.plain:
        net: torch.nn.Module = prepare_for_inference(model)
        if args.precision != "fp32":
            dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
            net = ReducedPrecision(net, dtype, args.keep_fp32)
    else:  # what the fast backend runs: packed weights, the head as convolutions
        options = RunOptions(backend="fast", precision=args.precision, keep_fp32=args.keep_fp32)
        net = build_network(model, config, options).net
    w, h = config.model.input_size
    x = torch.randn(args.batch, 3, h, w).contiguous(memory_format=torch.channels_last)
    lines = min(
        (verbose_lines(net, x) for _ in range(args.repeats)),
        key=lambda ls: sum(float(line.split(",")[-1]) for line in ls),
    )
    print(
        f"{args.preset}, {args.precision}"
        + (f" keep_fp32={args.keep_fp32}" if args.precision != "fp32" else "")
        + f", batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"CPU features: {' '.join(cpu_features())}"
    )
    if not lines:
        raise SystemExit("oneDNN printed nothing: is this torch built with oneDNN (mkldnn)?")
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    reorders: collections.Counter = collections.Counter()
    for line in lines:
        fields = line.split(",")
        kind, impl, ms = fields[5], fields[6], float(fields[-1])
        times[kind, impl].append(ms)
        if kind == "reorder":
            reorders[fields[8]] += 1  # "src:... dst:..." layouts
    total = sum(sum(t) for t in times.values())
    print(f"{len(lines)} primitives, {total:.1f} ms in oneDNN")
    for (kind, impl), t in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        share = sum(t) / total * 100
        print(f"  {kind:<15} {impl:<55} {len(t):4d} calls {sum(t):8.1f} ms {share:5.1f} %")
    if args.layers:
        shapes: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
        for line in lines:
            fields = line.split(",")
            if fields[5] != "convolution":
                continue
            name, flops = convolution_flops(fields[-2])
            dtype = fields[8].split(":")[1]  # the source's data type: bf16 or f32
            row = shapes[f"{name} {dtype}", fields[6].split(":")[-1]]
            row[0] += 1
            row[1] += float(fields[-1])
            row[2] += flops
        print("convolutions by shape (calls, ms, share, GFLOP/s):")
        for (name, isa), (n, ms, flops) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
            print(
                f"  {name:<36} {isa:<16} {n:3d} {ms:7.1f} ms {ms / total * 100:5.1f} % "
                f"{flops / ms / 1e6:7.0f}"
            )
    if reorders:
        print("reorders (layouts):")
        for layouts, n in reorders.most_common(6):
            print(f"  {n:4d} x {layouts}")


if __name__ == "__main__":
    main()
