"""Which parts of the network move keypoints in bf16: the fraction of keypoints equal to fp32
(within 1e-3 px, flip on) when each part runs in bf16 or fp32, and when only the convolution
weights or only the convolution inputs are rounded to bf16 (sums and the rest in fp32).

Parts, in order: ``S`` stem, ``1``-``4`` the four stages, ``a``/``b``/``c`` the three
upsampling layers, ``F`` the 1x1 heatmap layer. A mask names each part's precision, ``f``
fp32 or ``b`` bf16: ``fbbbbbbbf`` is ``--keep-fp32 ends``, ``fbbbbfffb``... The boxes are the
sample's GT boxes plus ``--jitter`` seeded copies of each moved by up to 10 % of its size
(BENCHMARKS.md, AMX CPU, "Where bf16 moves keypoints"). bf16 layers run natively where the CPU has
AVX-512 BF16 or AMX, slowly elsewhere; the rounding is the same.

Usage::

    python benchmarks/bench_precision_parts.py --checkpoint RUN/model.pth
    python benchmarks/bench_precision_parts.py --checkpoint W --jitter 0 --masks fbbbbbbbf
"""

import argparse
import copy
import time

import cv2
import numpy as np
import torch
from bench_inference import COCO, jittered, sample
from torch import nn

import nextpose
from nextpose.optimize import prepare_for_inference
from nextpose.predictor import PoseEstimator
from nextpose.presets import get_preset

PARTS = "S1234abcF"
MASKS = (
    "bbbbbbbbb",  # --keep-fp32 none
    "bbbbbbbbf",  # final
    "fbbbbbbbf",  # ends
    "fbbbbffff",  # head
    "fbbbbbbff",  # ends + the last upsampling layer
    "fbbbbbfff",  # ends + the last two
    "ffffffffb",  # only the heatmap layer in bf16
)


def parts_of(model: nn.Module) -> list[nn.Module]:
    """The prepared PoseNet cut into the nine parts of ``PARTS``."""
    trunk, head = model.backbone, model.head
    stages = list(head.deconv_layers)
    k = len(stages) // 3  # (transposed conv, folded BatchNorm, ReLU) x 3
    return [
        nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool),
        trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4,
        *(nn.Sequential(*stages[i * k : (i + 1) * k]) for i in range(3)),
        head.final_layer,
    ]  # fmt: skip


class Mixed(nn.Module):
    """The parts in sequence, part i in float32 where ``mask[i] == "f"``, else in bf16."""

    def __init__(self, parts: list[nn.Module], mask: str):
        super().__init__()
        self.parts = nn.ModuleList(copy.deepcopy(p) for p in parts)
        self.dtypes = [torch.float32 if c == "f" else torch.bfloat16 for c in mask]
        for part, dtype in zip(self.parts, self.dtypes, strict=True):
            part.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part, dtype in zip(self.parts, self.dtypes, strict=True):
            x = part(x.to(dtype))
        return x.float()


def bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).float()


def rounded(parts: list[nn.Module], what: str) -> nn.Module:
    """The fp32 network with only its convolution ``weights`` or only their ``inputs`` rounded
    to bf16 (every part)."""
    net = Mixed(parts, "f" * len(PARTS))
    for conv in net.modules():
        if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
            continue
        if what == "weights":
            with torch.no_grad():
                conv.weight.copy_(bf16(conv.weight))
        else:
            conv.register_forward_pre_hook(lambda _, args: (bf16(args[0]),))
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="resnext50_coco_256x192")
    parser.add_argument("--checkpoint", help="trained weights (default: seed-0 random ones)")
    parser.add_argument("--jitter", type=int, default=20, help="moved copies of each GT box")
    parser.add_argument("--masks", nargs="*", default=list(MASKS), help="f/b per part")
    parser.add_argument("--no-rounding", action="store_true", help="skip the weights/inputs rows")
    args = parser.parse_args()
    config = get_preset(args.preset).config
    if args.checkpoint:
        model = nextpose.load(args.preset, args.checkpoint, backend="eager").model
    else:
        torch.manual_seed(0)
        model = nextpose.model.PoseNet(config.model).eval()
    parts = parts_of(prepare_for_inference(model, "cpu", channels_last=True))
    files, per_image, _, _ = sample("gt")
    per_image = jittered(per_image, args.jitter)
    images = [cv2.cvtColor(cv2.imread(str(COCO / f)), cv2.COLOR_BGR2RGB) for f in files]

    def keypoints(net: nn.Module) -> np.ndarray:
        est = PoseEstimator(net, config, "cpu", name=args.preset, backend="eager")
        poses = est.predict_many(images, per_image, flip=True)
        return np.concatenate([p.keypoints for p in poses])

    reference = keypoints(Mixed(parts, "f" * len(PARTS)))
    print(
        f"{args.preset}, {args.checkpoint or 'seed-0 weights'}, {len(reference)} people "
        f"(GT + {args.jitter} jittered copies), {reference.size // 2} keypoints, flip on; "
        f"parts {PARTS}"
    )
    for m in args.masks:
        if len(m) != len(PARTS) or set(m) - {"f", "b"}:
            raise SystemExit(f"--masks: {m!r} is not {len(PARTS)} letters of f/b")
    kept = ["".join(p for p, c in zip(PARTS, m, strict=True) if c == "f") for m in args.masks]
    rows = [(f"{m} (fp32: {k or '-'})", m) for m, k in zip(args.masks, kept, strict=True)]
    if not args.no_rounding:
        rows += [("fp32, conv weights rounded to bf16", "weights")]
        rows += [("fp32, conv inputs rounded to bf16", "inputs")]
    for name, what in rows:
        start = time.perf_counter()
        net = rounded(parts, what) if what in ("weights", "inputs") else Mixed(parts, what)
        d = np.abs(keypoints(net) - reference).max(-1)
        moved = d[d > 1e-3]
        spread = "" if not moved.size else (
            f"; moved ones: median {np.median(moved):.2f} px, 90 % {np.quantile(moved, 0.9):.1f} px"
        )  # fmt: skip
        print(
            f"  {name:<36} {(d <= 1e-3).mean() * 100:6.2f} % equal ({moved.size} moved)"
            f"{spread}  [{time.perf_counter() - start:.0f} s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
