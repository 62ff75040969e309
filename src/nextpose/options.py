"""How a run goes: the backends, the run options, and the interface the engine calls a network
by. Nothing here is part of a model or saved with it.

This module imports no torch: a run on a cached ONNX graph (:mod:`nextpose.onnxgraph`) needs
none. PyTorch is asked about the CPU only where the answer is needed (``auto``, reduced
precision on a CPU, a device other than ``cpu``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, get_args

from .errors import InputError
from .fileio import atomic_write_text, cache_dir

if TYPE_CHECKING:
    import numpy as np
    import torch

Backend = Literal["auto", "eager", "fast", "compile", "onnxruntime"]
Precision = Literal["fp32", "bf16", "fp16"]
KeepFp32 = Literal["none", "final", "ends", "head"]
BACKENDS: tuple[str, ...] = get_args(Backend)
PRECISIONS: tuple[str, ...] = get_args(Precision)
KEEP_FP32: tuple[str, ...] = get_args(KeepFp32)
# The person detectors (torchvision's COCO models, best box AP first), named here so that a
# pipeline over given boxes and --help need not import torchvision (2.4 s).
DETECTOR_NAMES: tuple[str, ...] = (
    "keypointrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "ssdlite320_mobilenet_v3_large",
)
DEFAULT_DETECTOR = DETECTOR_NAMES[0]
# What torch.backends.cpu.get_cpu_capability() answers (a kept answer must be one of them)
CPU_CAPABILITIES = ("DEFAULT", "NO AVX", "AVX2", "AVX512", "VSX", "Z VECTOR", "SVE256", "SVE")


def device_type(device: str) -> str:
    """The kind of a device string: ``"cuda:1"`` -> ``"cuda"``."""
    return device.split(":", 1)[0]


def cpu_fingerprint() -> str:
    """The machine and its instruction sets, which an optimized graph is specific to (its
    blocked layouts follow the SIMD width): Linux's ``/proc/cpuinfo`` flags, elsewhere the
    processor's name."""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    flags = sorted(set(line.split(":", 1)[1].split()))
                    break
    except OSError:
        pass
    return repr((platform.machine(), flags or platform.processor()))


def _capability_record() -> Path:
    key = repr((cpu_fingerprint(), importlib.metadata.version("torch"),
                os.environ.get("ATEN_CPU_CAPABILITY")))  # fmt: skip
    return cache_dir() / "onnx" / f"cpu-{hashlib.sha256(key.encode()).hexdigest()[:32]}.txt"


def cpu_capability() -> str:
    """The SIMD level PyTorch's CPU kernels use here, e.g. "AVX2" or "AVX512". A process without
    torch reads it from the cache folder when it is kept there (:func:`keep_cpu_capability`,
    with every ONNX graph), so that ``auto`` on a cached graph need not import torch."""
    if "torch" not in sys.modules:
        with contextlib.suppress(OSError):
            kept = _capability_record().read_text().strip()
            if kept in CPU_CAPABILITIES:
                return kept
    import torch

    return str(torch.backends.cpu.get_cpu_capability())


def keep_cpu_capability() -> None:
    """Keep PyTorch's :func:`cpu_capability` for this machine and torch version in the cache
    (once, or again over a damaged record; a cache that cannot be written is no error)."""
    record = _capability_record()
    try:
        kept = record.read_text().strip() if record.is_file() else None
    except (OSError, ValueError):  # unreadable, or not text
        kept = None
    if kept not in CPU_CAPABILITIES:
        with contextlib.suppress(OSError):
            atomic_write_text(record, cpu_capability())


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX-512 BF16 or AMX); without them
    oneDNN emulates bf16 and it is slower than float32."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_supports_fp16() -> bool:
    """Whether this CPU runs float16 convolutions natively (AVX-512 FP16 or AMX-FP16)."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())


def onnxruntime_available() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def auto_backend(
    device: str | torch.device,
    precision: str,
    onnxruntime: bool | None = None,
    capability: str | None = None,
    decode: str = "msra",
) -> str:
    """The backend ``auto`` runs, by measurement (BENCHMARKS.md, the same keypoints on all):
    on an AVX2-only CPU in fp32, ``onnxruntime`` when the ``onnx`` extra is installed (14 %
    ahead of ``fast`` there); ``fast`` everywhere else: on AVX-512 CPUs in fp32 (ahead of or
    tied with ONNX Runtime on an AVX-512 BF16 EPYC and an AMX Xeon), in bf16/fp16 (ONNX
    Runtime runs fp32 only) and on a GPU. A model that decodes with DARK runs ``eager`` on a
    CPU in fp32: the reference's heatmaps bit for bit, which DARK's Newton step needs (it turns
    the other backends' last-bit differences into moved keypoints on flat heatmaps).
    ``onnxruntime`` says whether the extra is installed, ``capability`` the CPU's SIMD level
    (:func:`cpu_capability`; None: look), ``decode`` the model's decoding.
    """
    if device_type(str(device)) != "cpu" or precision != "fp32":
        return "fast"
    if decode == "dark":
        return "eager"
    if (capability or cpu_capability()).upper().startswith("AVX512"):
        return "fast"
    if onnxruntime is None:
        onnxruntime = onnxruntime_available()
    return "onnxruntime" if onnxruntime else "fast"


def check_device(device: str, option: str = "device") -> None:
    """Refuse a device torch cannot run a network on here, naming ``option`` in the error."""
    if device == "cpu":  # no torch to import for the CPU
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"{option} {device}: {e}") from None
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no pixels come out
        raise InputError(f"{option} {device}: nextpose runs on cpu, cuda or mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{option} {device}: CUDA is not available on this machine")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise InputError(f"{option} {device}: this machine has {count} CUDA devices")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"{option} {device}: MPS is not available on this machine")


@dataclass(frozen=True)
class RunOptions:
    """How an estimator runs (not what it computes); chosen per machine, never saved.

    Attributes:
        device: where the network runs, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        backend: see :mod:`nextpose.runtime`; ``auto`` resolves by :func:`auto_backend` to a
            backend whose keypoints equal eager's on the reference sample (BENCHMARKS.md).
        precision: ``fp32``, or ``bf16`` / ``fp16`` (GPUs; CPUs with native bf16, AVX-512
            BF16 or AMX, or native fp16, AVX-512 FP16 or AMX-FP16, only). On a GPU, fp32
            convolutions run in IEEE float32, not TF32.
        keep_fp32: with bf16/fp16 on the ``fast`` and ``compile`` backends, the layers left in
            float32 (:class:`~nextpose.optimize.ReducedPrecision`): ``ends`` (the stem and the
            1x1 heatmap layer, ~2 % of the FLOPs), ``final``, ``head`` (25 %) or ``none``.
            ``eager`` autocasts everything.
        device_crops: cut the crops on the device (a GPU) with OpenCV's arithmetic, instead of
            with OpenCV on the CPU.
        batch_size: crops per network batch; on a CPU the ``fast`` and ``compile`` backends
            run it in passes of at most 8 crops (quicker per crop there than larger ones).
        read_threads: threads decoding and cropping images ahead of the network (0: none).
        cudnn_benchmark: on CUDA, let cuDNN time its convolution algorithms per input shape.
    """

    device: str = "cpu"
    backend: Backend = "auto"
    precision: Precision = "fp32"
    device_crops: bool = False
    batch_size: int = 32
    read_threads: int = 2
    cudnn_benchmark: bool = True
    keep_fp32: KeepFp32 = "ends"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise InputError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.keep_fp32 not in KEEP_FP32:
            raise InputError(
                f"keep_fp32 must be one of {', '.join(KEEP_FP32)}, not {self.keep_fp32!r}"
            )
        for name in ("device_crops", "cudnn_benchmark"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be True or False, not {getattr(self, name)!r}")
        for name in ("batch_size", "read_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, not {value!r}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.read_threads < 0:
            raise InputError(f"read_threads must be >= 0, not {self.read_threads}")
        if not isinstance(self.device, str):  # a torch.device, or a GPU's index
            import torch

            try:
                device = str(torch.device(self.device))
            except (RuntimeError, TypeError) as e:
                raise InputError(f"device {self.device!r}: {e}") from None
            object.__setattr__(self, "device", device)
        if self.device != "cpu":  # "cpu" needs no torch to check
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, TypeError) as e:
                raise InputError(f"device {self.device!r}: {e}") from None

    @property
    def device_type(self) -> str:
        """``cpu``, ``cuda``, ``mps``: the device without its index."""
        return device_type(self.device)

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device)

    def resolve(self, decode: str = "msra") -> RunOptions:
        """These options with ``auto`` replaced by a backend (for a model decoding by
        ``decode``), checked against the device."""
        kind = self.device_type
        backend = self.backend
        if backend == "auto":
            backend = auto_backend(self.device, self.precision, decode=decode)
        if backend == "onnxruntime":
            if kind != "cpu":
                raise InputError(
                    f"backend onnxruntime runs on the CPU, not on device {self.device!r}: use "
                    "device 'cpu', or another backend (fast, compile, eager) on this device"
                )
            if self.precision != "fp32":
                raise InputError(
                    f"backend onnxruntime runs in fp32 only, not precision {self.precision}: use "
                    f"precision fp32, or backend fast or compile for {self.precision}"
                )
        if kind == "cpu" and self.precision != "fp32":
            bf16 = self.precision == "bf16"
            if not (cpu_supports_bf16() if bf16 else cpu_supports_fp16()):
                needs = "AVX-512 BF16 or AMX" if bf16 else "AVX-512 FP16 or AMX-FP16"
                raise InputError(
                    f"this CPU has no native {self.precision} (that needs {needs}); "
                    "it would run slower than fp32: use precision='fp32'"
                )
        check_device(self.device)
        return replace(self, backend=backend)


class Network(Protocol):
    """A pose network as the engine calls it: tensors in, tensors (or arrays) out."""

    device: torch.device

    def keypoints(
        self, crops: np.ndarray | torch.Tensor, flip: bool, decode: str = "msra"
    ) -> tuple[Any, Any]:
        """Keypoints (N, K, 2) in crop pixels and scores (N, K) of uint8 RGB crops
        (N, h, w, 3), averaged with the mirrored crops' when ``flip``, decoded by ``decode``
        (``msra`` or ``dark``); tensors left on the device (a GPU is not waited for) or NumPy
        arrays."""
        ...

    def heatmaps(self, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
        """Heatmaps (N, K, Hh, Wh) float32 (``model.heatmap_size``) of normalised inputs
        (N, 3, h, w)."""
        ...

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An array or tensor on the network's device."""
        ...

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 crops -> (N, 3, h, w) float32 network input on the device."""
        ...

    def cut_crops(
        self, image: torch.Tensor, centers: np.ndarray, scales: np.ndarray
    ) -> torch.Tensor:
        """uint8 RGB crops (N, h, w, 3) of an (H, W, 3) uint8 image on the device, for crop
        regions (N, 2) in image pixels, cut there (``device_crops``) with OpenCV's pixels."""
        ...
