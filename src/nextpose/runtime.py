"""How the network runs: the backends behind one small interface.

A :class:`~nextpose.options.Network` turns uint8 crops into keypoints in crop pixels (and
normalised inputs into heatmaps), flip test included. :func:`build_network` makes one for a backend:

* ``eager``: the plain PyTorch model, exactly the reference's op sequence (two flip passes);
* ``fast``: BatchNorm folded into the convolutions, channels-last, optional reduced precision;
  on a CPU weights in oneDNN's layout with ReLUs and residual sums fused
  (:func:`~nextpose.optimize.prepack`) and the head's transposed convolutions as sub-pixel
  convolutions (:class:`~nextpose.optimize.SubpixelConvTranspose2d`);
* ``compile``: the fast graph compiled by inductor: ahead of time on a CPU, kept in the cache
  folder (:class:`PackagedModel`); ``torch.compile`` with CUDA graphs on a GPU;
* ``onnxruntime``: the exported crops graph (flip test and decoding inside) on ONNX Runtime,
  exported once per weights and kept in the cache folder (:mod:`nextpose.onnxgraph`);
* ``auto``: the fastest of these for the device and precision
  (:func:`~nextpose.options.auto_backend`).

:class:`~nextpose.options.RunOptions` says how a run goes (device, backend, precision, batch
size, threads); none of it is part of the model or saved with it.
"""

import contextlib
import hashlib
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .checkpoint import weights_digest
from .codec import decode_heatmaps
from .codec_torch import decode_heatmaps_torch
from .config import Config
from .errors import NumericsError, require
from .fileio import AtomicFile, cache_dir
from .geometry_torch import warp_crops
from .graphs import to_onnx
from .model.tta import flip_test, normalize
from .onnxgraph import GRAPH_EXPORT, GraphNetwork
from .optimize import (
    ReducedPrecision,
    aot_compile,
    compile_model,
    cpu_features,
    load_compiled,
    prepack,
    prepare_for_inference,
    require_cpp_compiler,
    subpixel_deconvolutions,
)
from .options import Network, RunOptions, keep_cpu_capability

REDUCED = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_CHUNK = 8  # crops per forward pass on a CPU (fast backends): measured fastest per crop
log = logging.getLogger(__name__)


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
        net: (N, 3, h, w) float32 -> (N, K, Hh, Wh) heatmaps (``model.heatmap_size``).
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

    def cut_crops(
        self, image: torch.Tensor, centers: np.ndarray, scales: np.ndarray
    ) -> torch.Tensor:
        """(N, h, w, 3) uint8 crops of an (H, W, 3) uint8 image on the device, one per box
        (centers, scales: (N, 2) image pixels): the spec's affine crop, equal to OpenCV 4's."""
        to = self.to_device
        return warp_crops(image, to(centers), to(scales), self.input_size).to(torch.uint8)

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
            keypoints = locations * self._config.model.heatmap_stride  # crop pixels
        return keypoints, scores


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


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
                with contextlib.suppress(OSError):  # a read-only cache keeps it
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


def _export(model: nn.Module, config: Config, flip: bool) -> bytes:
    """The crops graph of the onnxruntime backend; PyTorch's view of the CPU is kept beside it
    (``auto`` on the cached graph then needs no torch)."""
    keep_cpu_capability()
    return to_onnx(model, config, flip=flip, **GRAPH_EXPORT)


class OnnxNetwork(GraphNetwork):
    """The ``onnxruntime`` backend of a PyTorch model: :class:`~nextpose.onnxgraph.GraphNetwork`
    exporting the model's crops graph for a flip setting not in the cache yet (1-10 s for
    resnext50; later processes load the optimized graph, ~0.15 s); ``heatmaps`` runs the plain
    model.

    The graphs are keyed by the model's :func:`~nextpose.checkpoint.weights_digest`, taken on
    first use: a model changed before then gets its own graph.
    """

    def __init__(self, model: nn.Module, config: Config, options: RunOptions):
        require("onnx", "onnx", "the onnxruntime backend", load=False)  # imported to export
        self.model = model
        super().__init__(
            config,
            options,
            digest=lambda: weights_digest(model),
            export=lambda flip: _export(model, config, flip),
            plain=lambda: TorchNetwork(model, config, options),
        )


def check_weights(model: nn.Module) -> None:
    """Raise :class:`~nextpose.errors.NumericsError` naming the parameters and buffers of
    ``model`` that hold NaN or inf (set from Python: ``load`` refuses such a checkpoint)."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    broken = [k for k, v in tensors if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        more = f" ... ({len(broken)} in all)" if len(broken) > 5 else ""
        raise NumericsError(
            f"the model's weights hold NaN or inf in {', '.join(broken[:5])}{more}: its "
            "heatmaps would be NaN (or, where a fused ReLU zeroes them, meaningless)"
        )


def build_network(model: nn.Module, config: Config, options: RunOptions) -> Network:
    """The network of ``options.backend`` (resolved) for ``model`` (eval mode, on the device)."""
    options = options.resolve(config.inference.decode)
    device = options.torch_device
    check_weights(model)
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
        # oneDNN's fused ReLU turns NaN into 0: fp16, which overflows, keeps PyTorch's ReLUs
        # so that a NaN reaches the heatmaps and is reported, as on the other backends.
        net = prepack(fast, example, CPU_CHUNK, fuse=options.precision != "fp16")
    # CUDA: one 2N batch for the flip test keeps the GPU busier. A CPU (and MPS, not measured):
    # passes of at most CPU_CHUNK crops (larger ones spill a CPU's caches: 10% slower per crop
    # at 32 than at 8).
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
