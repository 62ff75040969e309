"""Faster inference graphs of a trained PoseNet: BatchNorm folded into the convolutions,
channels-last memory, on a CPU oneDNN convolutions with packed weights that apply their ReLUs
and residual sums and the head's transposed convolutions as sub-pixel convolutions, optional
``torch.compile``, and what the CPU can do in reduced precision.

Folding changes only rounding (each output is computed with one fused weight instead of a
convolution followed by a scale and shift), so heatmaps agree with the plain model to ~1e-6
relative. It is also the safe way to compile: torch 2.14's inductor with ``freezing=True``
miscompiles a ConvTranspose2d with equal in/out channels followed by BatchNorm, and folding
first removes that pattern. (``torch.compile(..., options={"freezing": True})`` does not turn
freezing on in torch 2.14.1: only ``torch._inductor.config.freezing`` does; and its oneDNN weight
prepacking applies to static shapes only.)
"""

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .errors import InputError
from .model.backbone import Bottleneck, ResNeXt
from .options import KEEP_FP32, KeepFp32

_BatchNorm = nn.modules.batchnorm._BatchNorm  # BatchNorm2d and SyncBatchNorm


def fold_conv_bn(conv: nn.Conv2d | nn.ConvTranspose2d, bn: _BatchNorm) -> None:
    """Fold eval-mode ``bn`` into ``conv`` in place (conv gains a bias if it had none).

    The per-channel scale and shift are computed as PyTorch's eval BatchNorm computes them
    (float32 ``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean * alpha``), so the folded
    layer differs from conv-then-BN only by the rounding of ``w * alpha`` and the summation
    order. (An exact float64 scale drifts further from the unfolded model: it is off from the
    float32 one by a consistent per-channel factor that compounds over 50 layers.)
    """
    if conv.groups != 1 and isinstance(conv, nn.ConvTranspose2d):
        raise ValueError("fold_conv_bn: grouped transposed convolutions are not supported")
    with torch.no_grad():
        var, mean = bn.running_var.float(), bn.running_mean.float()
        gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(var)
        alpha = (1 / torch.sqrt(var + bn.eps)) * gamma  # (C_out,)
        shift = beta - mean * alpha
        if isinstance(conv, nn.ConvTranspose2d):  # weight (C_in, C_out, kh, kw)
            weight = conv.weight * alpha.view(1, -1, 1, 1)
        else:  # weight (C_out, C_in / groups, kh, kw)
            weight = conv.weight * alpha.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias * alpha + shift
        conv.weight = nn.Parameter(weight, requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm (or SyncBatchNorm) merged into the
    convolution before it.

    Works on the module structure of :class:`nextpose.model.PoseNet`: the trunk's bottlenecks
    (``convN``/``bnN``, ``downsample.0/1``), the stem (``conv1``/``bn1``) and the head's
    ``deconv_layers`` Sequential; each folded BatchNorm becomes an Identity.
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        children = dict(module.named_children())
        for name, child in children.items():
            if not isinstance(child, _BatchNorm):
                continue
            conv_name = name.replace("bn", "conv") if name.startswith("bn") else None
            if conv_name is None and name.isdigit():  # inside a Sequential: the previous module
                conv_name = str(int(name) - 1)
            conv = children.get(conv_name) if conv_name else None
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d):
                fold_conv_bn(conv, child)
                setattr(module, name, nn.Identity())
    remaining = [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if remaining:
        raise ValueError(f"fold_batchnorm: no convolution found before {remaining[:3]}")
    return model


def prepare_for_inference(
    model: nn.Module,
    device: str | torch.device = "cpu",
    fold: bool = True,
    channels_last: bool = True,
) -> nn.Module:
    """A copy of ``model`` for fast inference: eval mode, no gradients, BatchNorm folded,
    weights in channels-last layout (what oneDNN and cuDNN run fastest), on ``device``."""
    model = fold_batchnorm(model) if fold else copy.deepcopy(model).eval()
    model.requires_grad_(False)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class PackedConv2d(nn.Module):
    """A convolution whose weight oneDNN reorders once, here, into the blocked layout its
    kernels read, instead of on every call (PyTorch's CPU convolution does that per call: half
    of a single crop's time in resnext50). The same oneDNN convolution runs: outputs are
    bit-identical to ``conv``'s for batches of two or more, and a single crop gets what it gets
    inside a batch (unpacked, oneDNN picks another kernel for one crop, which sums in another
    order). CPU only; the weight is opaque (not in a state dict). ``relu`` applies a ReLU in
    the same pass (:func:`prepack` sets it where a ReLU follows).

    Args:
        conv: a CPU ``nn.Conv2d`` with numeric padding and zero padding mode.
        input_size: the (N, C, H, W) the layout is chosen for.
    """

    def __init__(self, conv: nn.Conv2d, input_size: tuple[int, ...]):
        super().__init__()
        self.relu = False
        self.padding, self.stride = list(conv.padding), list(conv.stride)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), self.padding, self.stride, self.dilation, self.groups,
            list(input_size),
        )  # fmt: skip
        self.bias = None if conv.bias is None else conv.bias.detach()

    def __deepcopy__(self, memo: dict) -> "PackedConv2d":
        # oneDNN's opaque tensors cannot be copied; the packed weight is never written: share it
        return copy.copy(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(
            x, self.weight, self.bias, self.padding, self.stride, self.dilation, self.groups,
            "relu" if self.relu else "none", [], "",
        )  # fmt: skip

    def add_relu(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """``relu(self(x) + other)`` in one pass; ``other`` shaped as the output."""
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, self.weight, self.bias, self.padding, self.stride, self.dilation,
            self.groups, "add", None, "relu", [], "",
        )  # fmt: skip


class PackedBottleneck(nn.Module):
    """A BatchNorm-folded :class:`~nextpose.model.backbone.Bottleneck` whose
    packed convolutions apply its ReLUs and residual sum themselves: the block's
    elementwise passes over memory (ReLU, ReLU, add, ReLU: four) are gone. In float32 the outputs
    are bit-identical to the block's (the sum and ReLU are done on the same float32 values);
    in bf16 the residual sum is rounded once instead of twice.
    """

    def __init__(self, block: Bottleneck):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3
        self.conv1.relu = self.conv2.relu = True
        self.downsample = block.downsample[0] if block.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3.add_relu(self.conv2(self.conv1(x)), identity)


class SubpixelConvTranspose2d(nn.Module):
    """A 4x4 transposed convolution with stride 2 and padding 1 (the SimpleBaseline head's
    upsampling layer) computed as one 2x2 convolution with 4x the output channels followed by a
    pixel shuffle: each output pixel sums the same 2x2 input taps with the same weights, in
    another order. Output rows 2m-1 and 2m both read input rows m-1 and m, so one 2x2 window
    (padding 1) gives both; the shuffle interleaves them and the outer ring is cropped.

    Why: oneDNN's transposed convolution on AMX runs the head's first layer (2,048 channels at
    1/32 of the input size) at a fifth of the speed of the equivalent convolution
    (BENCHMARKS.md, "AMX CPU"); as a convolution a single crop also sums as it does inside a
    batch. Not bit-identical to ``deconv`` (the summation order differs: ~2e-6 relative in
    float32).

    Args:
        deconv: ``nn.ConvTranspose2d`` with kernel 4, stride 2, padding 1, no output padding,
            dilation 1, one group (see :func:`subpixel_eligible`).
    """

    def __init__(self, deconv: nn.ConvTranspose2d):
        super().__init__()
        if not subpixel_eligible(deconv):
            raise ValueError(f"SubpixelConvTranspose2d: not a 4x4 stride-2 layer: {deconv}")
        c_in, c_out = deconv.in_channels, deconv.out_channels
        w = deconv.weight.detach()  # (C_in, C_out, 4, 4)
        # Output row 2m-1 (phase 0) takes input rows m-1, m through kernel rows 2, 0; row 2m
        # (phase 1) through kernel rows 3, 1; the same for columns.
        taps = torch.tensor([[2, 0], [3, 1]], device=w.device)
        phases = w[:, :, taps][:, :, :, :, taps]  # (C_in, C_out, 2 rows-phase, 2, 2 col-phase, 2)
        weight = phases.permute(1, 2, 4, 0, 3, 5).reshape(4 * c_out, c_in, 2, 2)
        self.conv = nn.Conv2d(c_in, 4 * c_out, 2, padding=1, bias=deconv.bias is not None)
        self.conv.to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(weight)
            if deconv.bias is not None:
                self.conv.bias.copy_(deconv.bias.detach().repeat_interleave(4))
        self.conv.requires_grad_(False)
        if deconv.weight.is_contiguous(memory_format=torch.channels_last):
            self.conv.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.pixel_shuffle(self.conv(x), 2)[:, :, 1:-1, 1:-1]
        # dense, in the layout of the input: a strided view would make every later layer copy
        layout = torch.channels_last if _channels_last(x) else torch.contiguous_format
        return y.contiguous(memory_format=layout)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and x.size(1) > 1


def subpixel_eligible(deconv: nn.Module) -> bool:
    """Whether ``deconv`` is a transposed convolution :class:`SubpixelConvTranspose2d` can
    replace (kernel 4, stride 2, padding 1, no output padding, dilation 1, one group)."""
    return (
        type(deconv) is nn.ConvTranspose2d
        and tuple(deconv.kernel_size) == (4, 4)
        and tuple(deconv.stride) == (2, 2)
        and tuple(deconv.padding) == (1, 1)
        and tuple(deconv.output_padding) == (0, 0)
        and tuple(deconv.dilation) == (1, 1)
        and deconv.groups == 1
        and deconv.padding_mode == "zeros"
    )


def subpixel_deconvolutions(model: nn.Module) -> nn.Module:
    """``model`` with every eligible transposed convolution replaced in place by its
    :class:`SubpixelConvTranspose2d`."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if subpixel_eligible(child):
                setattr(parent, name, SubpixelConvTranspose2d(child))
    return model


def prepack(model: nn.Module, example: torch.Tensor, batch: int, fuse: bool = True) -> nn.Module:
    """``model`` (prepared, on the CPU) with its convolutions replaced in place by
    :class:`PackedConv2d`, each packed for the input it gets from ``example`` (N, 3, h, w) with
    the batch size ``batch``; with ``fuse``, the ReLUs and residual sums that follow them done
    in the same pass (:class:`PackedBottleneck`). Unchanged where PyTorch has no oneDNN; a
    convolution oneDNN will not pack stays as it is. (Transposed convolutions stay: packed, a
    single crop's output would differ from its in-batch one.)"""
    mkldnn = torch.backends.mkldnn.is_available()
    if not (mkldnn and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return model
    sizes: dict[nn.Module, tuple[int, ...]] = {}

    def seen(module: nn.Module, args: tuple) -> None:
        sizes.setdefault(module, (batch, *args[0].shape[1:]))

    convs = [
        m for m in model.modules()
        if type(m) is nn.Conv2d and not isinstance(m.padding, str) and m.padding_mode == "zeros"
    ]  # fmt: skip
    hooks = [m.register_forward_pre_hook(seen) for m in convs]
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in sizes:
                # a shape or dtype oneDNN does not pack stays as it was
                with contextlib.suppress(RuntimeError):
                    setattr(parent, name, PackedConv2d(child, sizes[child]))
    if fuse:
        _fuse_relus(model)
    return model


def _fuse_relus(model: nn.Module) -> None:
    """Let packed convolutions apply the ReLUs (and residual sums) that follow them, where the
    module structure says so: bottlenecks, the trunk's stem, and Sequential runs of
    convolution, folded BatchNorms (Identity) and ReLU (the head; the stem in
    :class:`ReducedPrecision`)."""

    def packed(m: nn.Module | None) -> PackedConv2d | None:
        if isinstance(m, SubpixelConvTranspose2d):  # a ReLU commutes with the pixel shuffle
            m = m.conv
        return m if type(m) is PackedConv2d and not m.relu else None

    def folded(*ms: nn.Module | None) -> bool:
        return all(type(m) is nn.Identity for m in ms)

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Bottleneck) and folded(child.bn1, child.bn2, child.bn3):
                down = child.downsample
                if all(packed(c) for c in (child.conv1, child.conv2, child.conv3)) and (
                    down is None or (len(down) == 2 and packed(down[0]) and folded(down[1]))
                ):
                    setattr(parent, name, PackedBottleneck(child))
        if isinstance(parent, ResNeXt) and folded(parent.bn1) and packed(parent.conv1):
            parent.conv1.relu = True
            parent.relu = nn.Identity()
        if isinstance(parent, nn.Sequential):
            layers = list(parent)
            for i, layer in enumerate(layers):
                conv = packed(layer)
                if conv is None:
                    continue
                j = i + 1
                while j < len(layers) and type(layers[j]) is nn.Identity:
                    j += 1
                if j < len(layers) and type(layers[j]) is nn.ReLU:
                    conv.relu = True
                    parent[j] = nn.Identity()


class ReducedPrecision(nn.Module):
    """A prepared PoseNet with its weights in ``dtype`` (bf16 or fp16) but for the layers
    ``keep_fp32`` names, which stay float32 (each choice keeps those of the one before):

    * ``none``: every layer reduced;
    * ``final``: the 1x1 heatmap layer (the heatmaps are not rounded to bf16's 8-bit mantissa,
      which makes ties of near-equal maxima);
    * ``ends``: also the stem (the 7x7 convolution on the normalised pixels, which bf16 would
      round to 3 significant digits), ~2 % of the FLOPs;
    * ``head``: also the deconvolution head, ~25 % of the FLOPs.

    float32 (N, 3, h, w) in, float32 heatmaps out. Weights are cast once here; autocast would
    cast every weight again on every call.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, keep_fp32: KeepFp32 = "ends"):
        super().__init__()
        if keep_fp32 not in KEEP_FP32:
            raise ValueError(f"keep_fp32 must be one of {KEEP_FP32}, not {keep_fp32!r}")
        model = copy.deepcopy(model)
        trunk, head = model.backbone, model.head
        stem = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool)
        layers = nn.Sequential(trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4)
        level = KEEP_FP32.index(keep_fp32)
        self.parts = nn.ModuleList([stem, layers, head.deconv_layers, head.final_layer])
        # (stem, layers, deconvolutions, final layer): float32 from which choice on
        fp32_from = (2, len(KEEP_FP32), 3, 1)
        self.dtypes = [torch.float32 if level >= f else dtype for f in fp32_from]
        for part, kind in zip(self.parts, self.dtypes, strict=True):
            part.to(kind)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part, kind in zip(self.parts, self.dtypes, strict=True):
            x = part(x.to(kind))
        return x.float()


def _refuse_batchnorm(model: nn.Module, who: str) -> None:
    if any(isinstance(m, _BatchNorm) for m in model.modules()):
        raise ValueError(f"{who}: fold BatchNorm first (see fold_batchnorm)")


def compile_model(model: nn.Module, device: str | torch.device = "cuda") -> Callable:
    """``torch.compile`` of a prepared (BatchNorm-folded) model for a GPU, with CUDA graphs
    (``mode="reduce-overhead"``) and a symbolic batch size: one graph for every batch of two or
    more crops and one for a single crop (torch specialises size 1), not one per number of
    people (~30 s each; torch falls back to the uncompiled model after 8). CUDA graphs record
    one replay per batch size: give it few sizes (``TorchNetwork`` pads batches to powers of
    two) and copy each output before the next call, which overwrites it.

    On a CPU the ``compile`` backend compiles ahead of time instead (:func:`aot_compile`).
    Refuses a model that still has BatchNorm: torch 2.14's frozen inductor graphs get a
    ConvTranspose2d followed by BatchNorm wrong (about 10% of outputs), folding avoids it.
    """
    _refuse_batchnorm(model, "compile_model")
    if torch.device(device).type == "cpu":
        raise ValueError("compile_model: for a GPU; on a CPU use aot_compile")
    return torch.compile(model, dynamic=True, mode="reduce-overhead")


def aot_compile(model: nn.Module, example: torch.Tensor, path: str | Path) -> Path:
    """Compile a prepared (BatchNorm-folded) model ahead of time with AOTInductor into the
    package ``path`` (``.pt2``: a shared library and the weights, as constants of the graph),
    for channels-last inputs shaped as ``example`` (N, 3, h, w) with any batch size N.
    :func:`load_compiled` loads it in a fraction of a second, where ``torch.compile`` traces
    and compiles in every process. The convolutions stay oneDNN's (the outputs equal the
    prepared model's, measured bit for bit in fp32 and bf16 on resnext50); inductor fuses and
    generates the code around them. Refuses a model that still has BatchNorm, as
    :func:`compile_model` does.
    """
    _refuse_batchnorm(model, "aot_compile")
    require_cpp_compiler()
    # Two crops: export would specialise a batch of one to exactly one.
    example = torch.zeros((2, *example.shape[1:]), dtype=example.dtype, device=example.device)
    example = example.contiguous(memory_format=torch.channels_last)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad(), _no_cuda_notice():
        program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return Path(path)


def require_cpp_compiler() -> None:
    """Raise :class:`~nextpose.errors.InputError` naming the fix if inductor finds no C++
    compiler (it compiles the CPU code it generates)."""
    from torch._inductor import cpp_builder, exc

    try:
        cpp_builder.get_cpp_compiler()
    except exc.InvalidCxxCompiler as e:
        raise InputError(
            f"the compile backend needs a C++ compiler on a CPU ({e}): install g++ (or name "
            "one in $CXX), or use the fast backend"
        ) from None


def load_compiled(path: str | Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model of an :func:`aot_compile` package, as a function of its input."""
    with _no_cuda_notice():
        return torch._inductor.aoti_load_package(str(path))


@contextlib.contextmanager
def _no_cuda_notice() -> Iterator[None]:
    # A CUDA build of torch on a machine without CUDA logs "No CUDA runtime is found" when the
    # C++ toolchain helpers load; on the CPU that is expected, not news for the user.
    log = logging.getLogger("torch.utils.cpp_extension")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def cpu_features() -> tuple[str, ...]:
    """The instruction sets PyTorch detects on this CPU that compiled code may use, e.g.
    ``("avx2", "avx512", "avx512_bf16", "vnni")``."""
    names = ("avx2", "avx512", "avx512_bf16", "vnni", "amx_tile", "amx_fp16")
    return tuple(n for n in names if getattr(torch.cpu, f"_is_{n}_supported", lambda: False)())


def emulate_autocast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A float32 copy of ``model`` whose numbers are rounded as autocast to ``dtype`` rounds
    them: every convolution's input, weight, bias and output, every BatchNorm output and every
    residual block's sum; products are accumulated in float32, as cuDNN and AMX do.

    It runs at float32 speed, so the effect of bf16 or fp16 on keypoints can be measured on a
    CPU without native support (where real autocast is ~25x slower than float32). It differs
    from hardware that accumulates in float32 (cuDNN, AMX) only in summation order; a CPU
    without native support emulates some layers (transposed convolutions) less exactly.
    """
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"emulate_autocast: dtype must be bfloat16 or float16, not {dtype}")
    model = copy.deepcopy(model).eval().float()

    def rounded(x: torch.Tensor) -> torch.Tensor:
        return x.to(dtype).float()

    def round_input(module: nn.Module, args: tuple) -> tuple:
        return (rounded(args[0]), *args[1:])

    def round_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return rounded(output)

    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            with torch.no_grad():
                module.weight.copy_(rounded(module.weight))
                if module.bias is not None:
                    module.bias.copy_(rounded(module.bias))
            module.register_forward_pre_hook(round_input)
        # A residual block's output is its sum (ReLU keeps values representable).
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | _BatchNorm | Bottleneck):
            module.register_forward_hook(round_output)
    return model
