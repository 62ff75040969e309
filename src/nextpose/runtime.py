"""How the network runs: backends behind one small interface, and the options of a run.

A :class:`Network` turns uint8 crops into keypoints in crop pixels (and normalised inputs into
heatmaps), flip test included. :func:`build_network` makes one for a backend:

* ``eager``: the plain PyTorch model, exactly the reference's op sequence (two flip passes);
* ``fast``: BatchNorm folded into the convolutions, channels-last, optional reduced precision;
  on a CPU weights in oneDNN's layout with ReLUs and residual sums fused
  (:func:`~nextpose.optimize.prepack`) and the head's transposed convolutions as sub-pixel
  convolutions (:class:`~nextpose.optimize.SubpixelConvTranspose2d`);
* ``compile``: the fast graph compiled by inductor: ahead of time on a CPU, kept in the cache
  folder (:class:`PackagedModel`); ``torch.compile`` with CUDA graphs on a GPU;
* ``onnxruntime``: the exported crops graph (flip test and decoding inside) on ONNX Runtime,
  exported once per weights and kept in the cache folder;
* ``auto``: the fastest of these for the device and precision (:func:`auto_backend`).

:class:`RunOptions` says how a run goes (device, backend, precision, batch size, threads); none of
it is part of the model or saved with it.
"""

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import cache_dir
from .codec import decode_heatmaps, decode_heatmaps_torch
from .config import Config
from .errors import InputError, require
from .export import export_onnx
from .fileio import AtomicFile
from .model.tta import flip_test, normalize
from .optimize import (
    KEEP_FP32,
    KeepFp32,
    ReducedPrecision,
    aot_compile,
    compile_model,
    cpu_capability,
    cpu_features,
    cpu_supports_bf16,
    cpu_supports_fp16,
    load_compiled,
    prepack,
    prepare_for_inference,
    require_cpp_compiler,
    subpixel_deconvolutions,
)

Backend = Literal["auto", "eager", "fast", "compile", "onnxruntime"]
Precision = Literal["fp32", "bf16", "fp16"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "fast", "compile", "onnxruntime")
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_CHUNK = 8  # crops per forward pass on a CPU (fast backends): measured fastest per crop
log = logging.getLogger(__name__)


def onnxruntime_available() -> bool:
    """Whether the ``onnx`` extra (onnx and onnxruntime) is installed."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def auto_backend(
    device: torch.device,
    precision: str,
    onnxruntime: bool | None = None,
    capability: str | None = None,
) -> str:
    """The backend ``auto`` runs, by measurement (BENCHMARKS.md, the same keypoints on all):
    on an AVX2-only CPU in fp32, ``onnxruntime`` when the ``onnx`` extra is installed (14 %
    ahead of ``fast`` there); ``fast`` everywhere else: on AVX-512 CPUs in fp32 (ahead of or
    tied with ONNX Runtime on an AVX-512 BF16 EPYC and an AMX Xeon), in bf16/fp16 (ONNX
    Runtime runs fp32 only) and on a GPU. ``onnxruntime`` says whether the extra is installed,
    ``capability`` the CPU's SIMD level (:func:`~nextpose.optimize.cpu_capability`; None: look).
    """
    if device.type != "cpu" or precision != "fp32":
        return "fast"
    if (capability or cpu_capability()).upper().startswith("AVX512"):
        return "fast"
    if onnxruntime is None:
        onnxruntime = onnxruntime_available()
    return "onnxruntime" if onnxruntime else "fast"


@dataclass(frozen=True)
class RunOptions:
    """How an estimator runs (not what it computes); chosen per machine, never saved.

    Attributes:
        device: where the network runs, e.g. ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        backend: see the module docstring; ``auto`` resolves by :func:`auto_backend` to a
            backend whose keypoints equal eager's on the reference sample (BENCHMARKS.md).
        precision: ``fp32``, or ``bf16`` / ``fp16`` (GPUs; CPUs with native bf16 or fp16
            only). On a GPU, fp32 convolutions run in IEEE float32, not TF32.
        keep_fp32: with bf16/fp16 on the ``fast`` and ``compile`` backends, the layers left in
            float32 (:class:`~nextpose.optimize.ReducedPrecision`): ``ends`` (the stem and the
            1x1 heatmap layer, ~2 % of the FLOPs), ``final``, ``head`` (25 %) or ``none``.
            ``eager`` autocasts everything.
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
        for name in ("batch_size", "read_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InputError(f"{name} must be an integer, not {value!r}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.read_threads < 0:
            raise InputError(f"read_threads must be >= 0, not {self.read_threads}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise InputError(f"device {self.device!r}: {e}") from None

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def resolve(self) -> "RunOptions":
        """These options with ``auto`` replaced by a backend, checked against the device."""
        device = self.torch_device
        backend = self.backend
        if backend == "auto":
            backend = auto_backend(device, self.precision)
        if backend == "onnxruntime":
            if device.type != "cpu":
                raise InputError("the onnxruntime backend runs on the CPU (device='cpu')")
            if self.precision != "fp32":
                raise InputError("the onnxruntime backend runs in fp32 only")
        if device.type == "cpu" and self.precision != "fp32":
            native = cpu_supports_bf16() if self.precision == "bf16" else cpu_supports_fp16()
            if not native:
                raise InputError(
                    f"this CPU has no native {self.precision} (AVX-512 BF16/FP16 or AMX); "
                    "it would run slower than fp32: use precision='fp32'"
                )
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
        """Heatmaps (N, K, h/4, w/4) float32 of normalised inputs (N, 3, h, w)."""
        ...

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An array or tensor on the network's device."""
        ...

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 crops -> (N, 3, h, w) float32 network input on the device."""
        ...


class _CudaSwitches:
    """cuDNN settings for the network while inside: true float32 convolutions (PyTorch's default
    lets cuDNN round float32 inputs to TF32, whose 10-bit mantissa moves keypoints as fp16 does)
    and, if asked, ``cudnn.benchmark``. The switches are process-wide: the first of overlapping
    users (threads) sets them, the last one out restores the user's settings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._before: tuple[object, object] = (None, None)

    @staticmethod
    def _precision() -> tuple[object, str, object]:
        if hasattr(torch.backends.cudnn, "conv"):
            return torch.backends.cudnn.conv, "fp32_precision", "ieee"
        return torch.backends.cudnn, "allow_tf32", False  # torch < 2.9

    @contextlib.contextmanager
    def __call__(self, benchmark: bool) -> Iterator[None]:
        switch, name, exact = self._precision()
        with self._lock:
            if self._inside == 0:
                self._before = (getattr(switch, name), torch.backends.cudnn.benchmark)
                setattr(switch, name, exact)
                torch.backends.cudnn.benchmark = benchmark or self._before[1]
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    setattr(switch, name, self._before[0])
                    torch.backends.cudnn.benchmark = self._before[1]


cuda_switches = _CudaSwitches()


class TorchNetwork:
    """A PyTorch pose network and how to call it: memory layout, autocast, flip-test batching,
    chunking, CUDA graphs, and decoding on the device.

    Args:
        net: (N, 3, h, w) float32 -> (N, K, h/4, w/4) heatmaps.
        config: the model's config (input size, pixel statistics, flip partners).
        options: resolved run options (device, precision, cuDNN benchmark).
        channels_last: feed the network channels-last tensors.
        joint_flip: run the flip test as one batch of 2N instead of two passes of N.
        chunk: largest batch per forward pass; larger inputs run in pieces.
        cuda_graphs: ``net`` replays CUDA graphs (one recorded per batch size): batches are padded
            to powers of two and outputs copied out of its buffers.
        autocast: run ``net`` under autocast to ``options.precision`` (False: ``net`` is in
            that precision already, e.g. :class:`~nextpose.optimize.ReducedPrecision`).
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor], torch.Tensor],
        config: Config,
        options: RunOptions,
        *,
        channels_last: bool = False,
        joint_flip: bool = False,
        chunk: int | None = None,
        cuda_graphs: bool = False,
        autocast: bool = True,
    ):
        self.net = net
        self.device = options.torch_device
        self.options = options
        self.input_size = config.model.input_size
        self.channels_last = channels_last
        self.dtype = REDUCED.get(options.precision) if autocast else None
        self.joint_flip = joint_flip
        self.chunk = chunk
        self.cuda_graphs = cuda_graphs
        self._config = config
        self._constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    @property
    def constants(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pixel mean and std (1, 3, 1, 1) and the flip partners (K,) on the device, made once
        (making them per call would copy them to a GPU and wait, every batch)."""
        if self._constants is None:
            model, flip = self._config.model, self._config.keypoints.flip_indices
            with torch.inference_mode(False):
                self._constants = (
                    torch.tensor(model.pixel_mean).view(1, 3, 1, 1).to(self.device),
                    torch.tensor(model.pixel_std).view(1, 3, 1, 1).to(self.device),
                    torch.tensor(flip, dtype=torch.long).to(self.device),
                )
        return self._constants

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """On the device; to a GPU through pinned memory, without waiting."""
        if isinstance(array, np.ndarray):
            array = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type == "cuda" and array.device.type == "cpu":
            if not array.is_pinned():
                array = array.pin_memory()
            return array.to(self.device, non_blocking=True)
        return array.to(self.device)

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB -> (N, 3, h, w) float32 network input on the device; an
        inference tensor, as the network's inputs are (so a compiled graph is not made twice)."""
        with torch.inference_mode():
            mean, std, _ = self.constants
            return normalize(self.to_device(crops), mean, std)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            # Copied here, in inference mode, when not already an inference tensor: a normal
            # tensor among a compiled graph's inputs would make it compile a second time.
            x = (
                x.contiguous(memory_format=torch.channels_last)
                if x.is_inference()
                else x.clone(memory_format=torch.channels_last)
            )
        if not self.cuda_graphs:
            return self.net(x).float().contiguous()
        n = len(x)
        padded = 1 << max(n - 1, 0).bit_length()  # the next power of two
        if padded > n:
            x = torch.cat([x, x.new_zeros((padded - n, *x.shape[1:]))])
        torch.compiler.cudagraph_mark_step_begin()
        return self.net(x)[:n].float().clone()

    def heatmaps(self, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
        if self.chunk and len(inputs) > self.chunk:
            return torch.cat([self.heatmaps(piece, flip) for piece in inputs.split(self.chunk)])
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        cuda = (
            cuda_switches(self.options.cudnn_benchmark)
            if self.device.type == "cuda"
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast, cuda:
            if not flip:
                return self._forward(inputs)
            return flip_test(self._forward, inputs, self.constants[2], self.joint_flip)

    def keypoints(
        self, crops: np.ndarray | torch.Tensor, flip: bool, decode: str = "msra"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        kernel = self._config.codec.blur_kernel_size
        with torch.inference_mode():
            heatmaps = self.heatmaps(self.normalize(crops), flip)
            if decode == "dark" and self.device.type == "cpu":
                # The reference's own DARK arithmetic (OpenCV's blur, float64 Taylor step):
                # the tensor version's blur differs in the last bits, which near-flat peaks
                # amplify. MSRA's tensor decoding is bit-identical, and stays on the device.
                found = decode_heatmaps(heatmaps.numpy(), decode, kernel)
                locations, scores = (torch.from_numpy(a) for a in found)
            else:
                locations, scores = decode_heatmaps_torch(heatmaps, decode, kernel)
            keypoints = crop_pixels(locations, heatmaps.shape, self._config)
        return keypoints, scores


def crop_pixels(locations: torch.Tensor, shape: tuple[int, ...], config: Config) -> torch.Tensor:
    """Heatmap-pixel locations (N, K, 2) -> crop pixels, for heatmaps of ``shape`` (N, K, h, w)."""
    w, h = config.model.input_size  # the stride as Python scalars: no copy to the device
    sx = float(np.float32(w / shape[3]))
    sy = float(np.float32(h / shape[2]))
    return torch.stack([locations[..., 0] * sx, locations[..., 1] * sy], dim=-1)


def weights_digest(model: nn.Module) -> str:
    """sha256 of ``model``'s state dict: names, dtypes, shapes and bytes."""
    key = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        key.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        key.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return key.hexdigest()


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


def onnx_cache_path(digest: str, config: Config, **export: Any) -> Path:
    """Where the onnxruntime backend keeps the graph of the weights with ``digest``
    (:func:`weights_digest`) exported with ``export`` (keywords of
    :func:`~nextpose.export.export_onnx`), as ONNX Runtime optimized it for this CPU:
    ``<cache>/onnx/<key>.onnx``, the key a sha256 of the digest, the config, the export options,
    the versions that make and run the graph and the CPU's instruction sets (the optimized
    graph has kernels for them)."""
    import onnxruntime

    # onnx's version from its metadata: importing it (0.6 s) is needed only to export
    onnx = importlib.metadata.version("onnx")
    versions = (__version__, torch.__version__, onnx, onnxruntime.__version__)
    key = _cache_key(digest, versions, config.to_dict(), sorted(export.items()), cpu_features())
    return cache_dir() / "onnx" / f"{key}.onnx"


def compiled_cache_path(digest: str, config: Config, options: RunOptions) -> Path:
    """Where the ``compile`` backend keeps the AOTInductor package of the weights with
    ``digest`` for a CPU: ``<cache>/inductor/<key>.pt2``, the key a sha256 of the digest, the
    model's config (the network only: decoding runs outside the package), the precision and
    layers kept in fp32, the versions, and the CPU's instruction sets (the library runs only
    where it was compiled for)."""
    versions = (__version__, torch.__version__)
    keep = options.keep_fp32 if options.precision != "fp32" else None
    run = (options.precision, keep, "subpixel head")  # the graph build_network compiles
    key = _cache_key(digest, versions, config.to_dict()["model"], run, cpu_features())
    return cache_dir() / "inductor" / f"{key}.pt2"


class PackagedModel:
    """The ``compile`` backend's model on a CPU: a prepared model compiled ahead of time by
    AOTInductor (:func:`~nextpose.optimize.aot_compile`) on its first call and kept in the
    cache folder (:func:`compiled_cache_path`), so later processes load the compiled library
    (~0.2 s for resnext50) instead of compiling again (~15-25 s).

    Args:
        model: the prepared model (BatchNorm folded, channels-last; reduced precision or not).
        path: the package's place in the cache, made on first call (it hashes the weights).
    """

    def __init__(self, model: nn.Module, path: Callable[[], Path]):
        self.model: nn.Module | None = model
        self._path = path
        self._compiled: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._lock = threading.Lock()
        self._scratch: tempfile.TemporaryDirectory | None = None  # a read-only cache's stand-in

    def _load(self, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        assert self.model is not None
        path = self._path()
        if path.is_file():
            try:
                return load_compiled(path)
            except Exception:  # a damaged or foreign file: compile it again
                path.unlink(missing_ok=True)
        require_cpp_compiler()
        log.info(
            "compiling the model for this CPU (once per weights and precision, ~20 s for "
            "resnext50; kept in %s)",
            path.parent,
        )
        try:
            out = AtomicFile(path, "wb", suffix=".pt2")  # AOTInductor wants the suffix
        except OSError as e:  # a read-only cache: compile again next time
            warnings.warn(f"could not keep the compiled model in {path.parent}: {e}", stacklevel=4)
            self._scratch = tempfile.TemporaryDirectory(prefix="nextpose-compile-")
            scratch = Path(self._scratch.name) / "model.pt2"
            return load_compiled(aot_compile(self.model, example, scratch))
        try:
            aot_compile(self.model, example, out.tmp)
        except BaseException:
            out.discard()
            raise
        return load_compiled(out.commit())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is None:
            with self._lock:
                if self._compiled is None:
                    self._compiled = self._load(x)
                    self.model = None  # the package holds its own copy of the weights
        return self._compiled(x)


class OnnxNetwork:
    """ONNX Runtime sessions of the exported crops graph (uint8 crops in, crop-pixel keypoints and
    scores out, flip test and MSRA decoding inside), one per flip setting, made on first use.
    DARK decodes the graph's heatmaps with the reference's NumPy/OpenCV arithmetic, as the
    PyTorch CPU backends do. ``heatmaps`` runs the plain PyTorch model (the graph takes uint8
    crops, not inputs).

    The export (1-10 s for resnext50) and ONNX Runtime's optimization of the graph are done once
    per weights and CPU: the optimized graph is kept in the cache folder
    (:func:`onnx_cache_path`) and later processes load it from there (~0.15 s).
    """

    def __init__(self, model: nn.Module, config: Config, options: RunOptions):
        self.onnxruntime = require("onnxruntime", "onnx", "the onnxruntime backend")
        require("onnx", "onnx", "the onnxruntime backend", load=False)  # imported to export
        self.model = model
        self.config = config
        self.device = options.torch_device
        self.plain = TorchNetwork(model, config, options)
        self._sessions: dict[bool, Any] = {}
        self._lock = threading.Lock()
        self._digest: str | None = None  # of the weights, hashed once

    def _session(self, graph: str | bytes, keep: Path | None = None) -> Any:
        """A session of ``graph`` (a file already optimized, or exported bytes, which ONNX Runtime
        optimizes for this CPU and, with ``keep``, saves there)."""
        ort = self.onnxruntime
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        # Idle threads sleep instead of spinning: the image-reading threads need the cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # not the notice that a saved graph fits this CPU only
        if isinstance(graph, str):
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        out = None
        if keep is not None:
            try:
                out = AtomicFile(keep, "wb", suffix=".onnx")
                options.optimized_model_filepath = str(out.tmp)
            except OSError as e:  # a read-only cache: export again next time
                warnings.warn(f"could not keep the ONNX graph in {keep.parent}: {e}", stacklevel=4)
        try:
            session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        except BaseException:
            if out is not None:
                out.discard()
            raise
        if out is not None:
            out.commit()
        return session

    def session(self, flip: bool) -> Any:
        with self._lock:
            if flip not in self._sessions:
                if self._digest is None:
                    self._digest = weights_digest(self.model)
                export = {"flip": flip, "heatmaps": True}
                path = onnx_cache_path(self._digest, self.config, **export)
                session = None
                if path.is_file():
                    try:
                        session = self._session(str(path))
                    except Exception:  # a damaged file: export again
                        path.unlink(missing_ok=True)
                if session is None:
                    graph = export_onnx(self.model, self.config, None, **export)
                    session = self._session(graph, keep=path)
                self._sessions[flip] = session
            return self._sessions[flip]

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.plain.to_device(array)

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.plain.normalize(crops)

    def heatmaps(self, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
        return self.plain.heatmaps(inputs, flip)

    def keypoints(
        self, crops: np.ndarray | torch.Tensor, flip: bool, decode: str = "msra"
    ) -> tuple[Any, Any]:
        if isinstance(crops, torch.Tensor):
            crops = crops.cpu().numpy()
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        keypoints, scores, heatmaps = self.session(flip).run(None, {"crops": crops})
        if decode == "dark":
            kernel = self.config.codec.blur_kernel_size
            locations, scores = decode_heatmaps(heatmaps, decode, kernel)
            keypoints = crop_pixels(torch.from_numpy(locations), heatmaps.shape, self.config)
            return keypoints.numpy(), scores
        return keypoints, scores


def build_network(model: nn.Module, config: Config, options: RunOptions) -> Network:
    """The network of ``options.backend`` (resolved) for ``model`` (eval mode, on the device)."""
    options = options.resolve()
    device = options.torch_device
    if options.backend == "eager":  # the reference's op sequence: two passes, default layout
        return TorchNetwork(model, config, options)
    if options.backend == "onnxruntime":  # the export folds BatchNorm itself
        return OnnxNetwork(model, config, options)
    fast: nn.Module = prepare_for_inference(model, device, fold=True, channels_last=True)
    dtype = REDUCED.get(options.precision)
    cuda = device.type == "cuda"
    if not cuda:
        # oneDNN's transposed convolutions are slow on a CPU (the head's first layer: 5x in
        # bf16 on AMX) and sum a single crop in another order than a batch; as convolutions
        # they are neither.
        subpixel_deconvolutions(fast)
    if dtype is not None:
        fast = ReducedPrecision(fast, dtype, options.keep_fp32)
    net: Callable[[torch.Tensor], torch.Tensor] = fast
    if options.backend == "compile" and cuda:
        net = compile_model(fast, device)
    elif options.backend == "compile":
        net = PackagedModel(
            fast, lambda: compiled_cache_path(weights_digest(model), config, options)
        )
    elif device.type == "cpu":  # weights in oneDNN's layout once, not per call: same outputs
        w, h = config.model.input_size
        example = torch.zeros(1, 3, h, w).contiguous(memory_format=torch.channels_last)
        net = prepack(fast, example, CPU_CHUNK)
    # A GPU: one 2N batch for the flip test keeps it busier. A CPU: passes of at most
    # CPU_CHUNK crops (larger ones spill the caches: 10% slower per crop at 32 than at 8).
    return TorchNetwork(
        net,
        config,
        options,
        channels_last=True,
        joint_flip=cuda,
        chunk=None if cuda else CPU_CHUNK,
        cuda_graphs=cuda and options.backend == "compile",
        autocast=False,
    )
