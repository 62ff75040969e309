"""Top-down inference: person boxes -> crops -> network (+ flip test) -> image keypoints.

The network runs on one of several backends (:class:`Runtime`): the plain PyTorch model
(``eager``, the reference's exact op sequence), a faster PyTorch graph (``fast``: BatchNorm folded
into the convolutions, channels-last, optional autocast), ``torch.compile`` of that graph, or ONNX
Runtime on the exported crops graph. While one batch runs, the next one's images are decoded and
cropped in background threads.
"""

import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch

from . import checkpoint
from .codec import decode_heatmaps, decode_heatmaps_torch
from .config import Config
from .data.images import read_image
from .geometry import crop, crop_region, crop_to_image, warp_crops
from .keypoints import KeypointSet
from .model import PoseNet
from .presets import PRESETS, get_preset

Backend = Literal["auto", "eager", "fast", "compile", "onnxruntime"]
Precision = Literal["fp32", "bf16", "fp16"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "fast", "compile", "onnxruntime")
CPU_CHUNK = 8  # crops per forward pass on a CPU (fast backends), measured fastest per crop
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")

log = logging.getLogger("nextpose")

# ImageNet statistics in R, G, B order; the network sees (pixel - mean) / std.
PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@lru_cache(maxsize=8)
def _pixel_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as (1, 3, 1, 1) float32 tensors, made once per device (making them per call
    would copy them to a GPU synchronously every batch)."""
    with torch.inference_mode(False):
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    return mean, std


def normalize(crops: torch.Tensor) -> torch.Tensor:
    """(N, h, w, 3) uint8 RGB crops -> (N, 3, h, w) float32 network input, (x - mean) / std.

    A true division by std, as the reference does (not a multiplication by 1 / std).
    """
    if torch.jit.is_tracing():  # constants of an exported graph
        mean = torch.tensor(PIXEL_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(PIXEL_STD, dtype=torch.float32).view(1, 3, 1, 1)
    else:
        mean, std = _pixel_stats(crops.device)
    return (crops.permute(0, 3, 1, 2).float() - mean) / std


def flip_test(
    forward: Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    flip_indices: Sequence[int] | torch.Tensor,
    joint: bool = False,
) -> torch.Tensor:
    """Heatmaps of ``inputs`` averaged with those of the mirrored inputs, as the reference does.

    The mirrored crops' heatmaps are mirrored back, left/right channels swapped
    (``flip_indices``, a list or a long tensor on the device) and shifted one column right (the
    first column kept). ``joint`` runs both as one batch of 2N (fewer, larger calls) instead of
    two forward passes of N.
    """
    if joint:
        both = forward(torch.cat([inputs, inputs.flip(3)]))
        out, mirrored = both[: inputs.shape[0]], both[inputs.shape[0] :]
    else:
        out, mirrored = forward(inputs), forward(inputs.flip(3))
    index = flip_indices
    if not isinstance(index, torch.Tensor):
        index = torch.tensor(list(index), dtype=torch.long, device=mirrored.device)
    mirrored = mirrored.flip(3).index_select(1, index)
    mirrored = torch.cat([mirrored[..., :1], mirrored[..., :-1]], dim=3)
    return (out + mirrored) * 0.5


@dataclass(frozen=True)
class Runtime:
    """How an estimator runs its network (not what it computes); chosen per machine, not stored
    with the model.

    Attributes:
        backend: ``eager`` the plain PyTorch model, exactly the reference's op sequence;
            ``fast`` BatchNorm folded into the convolutions + channels-last (+ autocast);
            ``compile`` ``torch.compile`` of the fast graph; ``onnxruntime`` the exported crops
            graph (CPU). ``auto`` resolves to ``fast``, whose keypoints equal eager's on the
            reference sample (see BENCHMARKS.md).
        precision: ``fp32``, or autocast to ``bf16`` / ``fp16`` (GPU; bf16 on CPUs with native
            bf16 only). On a GPU fp32 convolutions are IEEE float32, not TF32, and the fast
            backends also set ``cudnn.benchmark`` and run the flip test as one batch of 2N.
        device_crops: cut crops on the network's device (:func:`~nextpose.geometry.warp_crops`,
            OpenCV's arithmetic) instead of with OpenCV on the CPU; meant for GPUs.
        workers: threads that read and crop the next images while a batch is in the network
            (0: read in the calling thread, between batches).
    """

    backend: Backend = "auto"
    precision: Precision = "fp32"
    device_crops: bool = False
    workers: int = 2

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, not {self.workers}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )

    def resolve(self, device: torch.device) -> "Runtime":
        """This runtime with ``auto`` replaced by a concrete backend, checked against ``device``."""
        from .optimize import cpu_supports_bf16, cpu_supports_fp16

        backend = "fast" if self.backend == "auto" else self.backend
        if backend == "onnxruntime":
            if device.type != "cpu":
                raise ValueError("the onnxruntime backend runs on the CPU (device='cpu')")
            if self.precision != "fp32":
                raise ValueError("the onnxruntime backend runs in fp32 only")
        if device.type == "cpu" and self.precision != "fp32":
            native = cpu_supports_bf16() if self.precision == "bf16" else cpu_supports_fp16()
            if not native:
                raise ValueError(
                    f"this CPU has no native {self.precision} (AVX-512 BF16/FP16 or AMX); "
                    "it would run slower than fp32: use precision='fp32'"
                )
        return Runtime(backend, self.precision, self.device_crops, self.workers)


class _TorchNetwork:
    """A PyTorch network and how to call it: memory layout, autocast, flip-test batching, and
    on a GPU true float32 convolutions (cuDNN would use TF32: 10-bit mantissas) and CUDA graphs.
    """

    def __init__(
        self,
        net: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        channels_last: bool,
        precision: Precision,
        joint_flip: bool,
        chunk: int | None = None,
        cuda_graphs: bool = False,
    ):
        self.net = net
        self.device = device
        self.channels_last = channels_last
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.joint_flip = joint_flip
        self.chunk = chunk  # largest batch per forward pass; larger inputs run in pieces
        # ``net`` replays CUDA graphs (compile_model on a GPU): one is recorded per batch size,
        # so batches are padded to powers of two, and outputs are copied out of its buffers.
        self.cuda_graphs = cuda_graphs
        self._flip_list: list[int] = []
        self._flip_index = torch.zeros(0, dtype=torch.long)

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

    def heatmaps(self, inputs: torch.Tensor, flip_indices: Sequence[int] | None) -> torch.Tensor:
        autocast = (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype is not None
            else contextlib.nullcontext()
        )
        if flip_indices is not None and list(flip_indices) != self._flip_list:
            self._flip_list = list(flip_indices)  # its tensor is copied to the device once
            self._flip_index = torch.tensor(self._flip_list, dtype=torch.long).to(self.device)
        if self.chunk and len(inputs) > self.chunk:
            pieces = inputs.split(self.chunk)
            return torch.cat([self.heatmaps(piece, flip_indices) for piece in pieces])
        cuda = self.device.type == "cuda"
        exact = _ieee_fp32_convolutions if cuda else contextlib.nullcontext()
        with torch.inference_mode(), autocast, exact:
            if flip_indices is None:
                return self._forward(inputs)
            return flip_test(self._forward, inputs, self._flip_index, self.joint_flip)


class _IeeeFp32Convolutions:
    """cuDNN convolutions in true float32 while inside (PyTorch's default lets them round
    float32 inputs to TF32, whose 10-bit mantissa moves keypoints as fp16 does); autocast's
    bf16/fp16 convolutions are unaffected. The switch is global: the first of overlapping
    users (threads) sets it, the last one out restores the user's setting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._before: object = None

    @staticmethod
    def _switch() -> tuple[object, str, object]:
        if hasattr(torch.backends.cudnn, "conv"):
            return torch.backends.cudnn.conv, "fp32_precision", "ieee"
        return torch.backends.cudnn, "allow_tf32", False  # torch < 2.9

    def __enter__(self) -> None:
        switch, name, exact = self._switch()
        with self._lock:
            if self._inside == 0:
                self._before = getattr(switch, name)
                setattr(switch, name, exact)
            self._inside += 1

    def __exit__(self, *exc: object) -> None:
        switch, name, _ = self._switch()
        with self._lock:
            self._inside -= 1
            if self._inside == 0:
                setattr(switch, name, self._before)


_ieee_fp32_convolutions = _IeeeFp32Convolutions()


class _OnnxNetwork:
    """ONNX Runtime sessions of the exported crops graph (uint8 crops in, crop-pixel keypoints
    and scores out, flip test and decoding inside), one per flip setting, made on first use."""

    def __init__(self, model: PoseNet, config: Config):
        self.model = model
        self.config = config
        self._sessions: dict[bool, Any] = {}

    def session(self, flip: bool) -> Any:
        if flip not in self._sessions:
            import onnxruntime

            from .export import export_onnx

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            # Idle threads sleep instead of spinning: the image-reading threads need the cores.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            graph = export_onnx(self.model, self.config, None, flip=flip, heatmaps=True)
            self._sessions[flip] = onnxruntime.InferenceSession(
                graph, options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[flip]

    def run(self, crops: np.ndarray, flip: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) crop pixels, scores (N, K) and heatmaps of (N, h, w, 3) uint8."""
        keypoints, scores, heatmaps = self.session(flip).run(None, {"crops": crops})
        return keypoints, scores, heatmaps


T = TypeVar("T")


def ordered_map(
    fn: Callable[..., T], items: Iterable[tuple], workers: int = 2, depth: int | None = None
) -> Iterator[T]:
    """``fn(*args)`` for each args tuple of ``items``, computed in ``workers`` threads at most
    ``depth`` (2 x workers) ahead and yielded in order; an exception is raised where its result
    would have been. ``items`` itself is consumed in the calling thread. Image decoding and
    OpenCV release the GIL, so this overlaps reading and cropping with the forward pass."""
    if workers < 1:
        yield from (fn(*args) for args in items)
        return
    depth = depth or 2 * workers
    pool = ThreadPoolExecutor(workers, thread_name_prefix="nextpose-read")
    pending: deque[Future] = deque()
    try:
        for args in items:
            pending.append(pool.submit(fn, *args))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Poses:
    """The people found in one image.

    Attributes:
        keypoints: (N, K, 2) float32, image pixels.
        scores: (N, K) float32, heatmap maxima (not normalised, not clipped).
        boxes: (N, 4) float32 xyxy image pixels, the person boxes used.
        box_scores: (N,) float32, detector scores (1 when unknown).
        centers, scales: (N, 2) float32, the crop regions in image pixels (aspect-fixed, padded).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)

    def to_coco(
        self, image_id: int, category_id: int = 1, score_threshold: float = 0.2
    ) -> list[dict]:
        """COCO keypoint results, one dict per person in box order: ``image_id, category_id,
        keypoints`` (K*3 floats x, y, score), ``score`` (the box score times the mean keypoint
        score above ``score_threshold``, as the reference rescores) and ``bbox`` (x, y, w, h)."""
        from .evaluation.oks_nms import rescore  # evaluation imports this module

        instance_scores = rescore(self.scores, self.box_scores, score_threshold)
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i][:4])
            kpts = np.concatenate([self.keypoints[i], self.scores[i][:, None]], axis=1)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "keypoints": kpts.astype(float).reshape(-1).tolist(),
                    "score": float(instance_scores[i]),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                }
            )
        return out

    def draw(
        self,
        image: np.ndarray,
        score_threshold: float = 0.3,
        keypoint_set: KeypointSet | None = None,
        boxes: bool = True,
        labels: Sequence[str] | None = None,
    ) -> np.ndarray:
        """A copy of ``image`` (H, W, 3) uint8 RGB with these poses drawn (see ``draw_poses``);
        keypoints scoring at or below ``score_threshold`` are hidden."""
        from .keypoints import COCO_KEYPOINTS
        from .visualize import draw_poses

        return draw_poses(
            image,
            self.keypoints,
            self.scores,
            self.boxes if boxes else None,
            keypoint_set or COCO_KEYPOINTS,
            score_threshold,
            labels=labels,
        )


@dataclass
class Crops:
    """Network inputs cut from images, and where they came from."""

    images: np.ndarray | torch.Tensor  # (N, h, w, 3) uint8 RGB
    centers: np.ndarray  # (N, 2) float32 image pixels
    scales: np.ndarray  # (N, 2) float32 (w, h) image pixels, aspect-fixed


def prepare_crops(
    image: np.ndarray, boxes: np.ndarray, input_size: tuple[int, int], padding: float = 1.25
) -> Crops:
    """Cut one crop per xyxy box out of an (H, W, 3) uint8 image."""
    center, scale = crop_region(boxes, input_size, padding)
    crops = np.empty((len(center), input_size[1], input_size[0], 3), np.uint8)
    for i in range(len(center)):
        crops[i] = crop(image, center[i], scale[i], input_size)
    return Crops(crops, center, scale)


def as_boxes(
    boxes: Sequence | np.ndarray | None, image_shape: tuple[int, ...], source: str = "the image"
) -> np.ndarray:
    """(N, 5) float32 xyxy + score; no boxes means the whole image; a missing score means 1.

    Boxes entirely outside the image are kept (the reference keeps them: their crop is black)
    but logged as a warning naming ``source``: their keypoints mean nothing.
    """
    if boxes is None:
        h, w = image_shape[:2]
        return np.array([[0, 0, w - 1, h - 1, 1]], np.float32)
    arr = np.asarray(boxes, dtype=np.float32)
    if arr.size == 0:
        return np.zeros((0, 5), np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise ValueError(f"boxes must be (N, 4) xyxy or (N, 5) xyxy+score, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes contain NaN or infinite values")
    inverted = np.flatnonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))
    if len(inverted):
        raise ValueError(
            f"box {inverted[0]} {arr[inverted[0], :4].tolist()} has x2 < x1 or y2 < y1 "
            "(boxes are x1, y1, x2, y2, not x, y, w, h)"
        )
    h, w = image_shape[:2]
    outside = np.flatnonzero((arr[:, 2] < 0) | (arr[:, 3] < 0) | (arr[:, 0] > w) | (arr[:, 1] > h))
    if len(outside):
        log.warning(
            f"{source}: {len(outside)} of {len(arr)} boxes lie entirely outside the {w} x {h} "
            f"image (box {outside[0]}: {arr[outside[0], :4].tolist()}); their crops are black "
            "and their keypoints mean nothing"
        )
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1), np.float32)], axis=1)
    return arr


class PoseEstimator:
    """A :class:`PoseNet` with the reference's pre- and post-processing around it.

    ``predict`` takes an image and person boxes and returns :class:`Poses` in image pixels; crops
    of many boxes and many images are batched through the network together. ``backend`` and the
    other :class:`Runtime` options choose how the network runs; ``self.model`` stays the plain
    network.
    """

    def __init__(
        self,
        model: PoseNet,
        config: Config,
        device: str | torch.device = "cpu",
        name: str = "custom",
        backend: Backend = "auto",
        precision: Precision = "fp32",
        device_crops: bool = False,
        workers: int = 2,
    ):
        self.config = config
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        self.name = name
        self.runtime = Runtime(backend, precision, device_crops, workers).resolve(self.device)
        self._network: _TorchNetwork | _OnnxNetwork | None = None
        self._build_lock = threading.Lock()

    @property
    def keypoint_set(self) -> KeypointSet:
        return self.config.keypoints

    @property
    def input_size(self) -> tuple[int, int]:
        return self.config.model.input_size

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self.runtime.backend

    def network(self) -> "_TorchNetwork | _OnnxNetwork":
        """The backend's network, built on first use (folding, compiling or exporting)."""
        with self._build_lock:
            if self._network is None:
                self._network = self._build_network()
            return self._network

    def _build_network(self) -> "_TorchNetwork | _OnnxNetwork":
        from .optimize import compile_model, prepare_for_inference

        backend, precision, cuda = self.backend, self.runtime.precision, self.device.type == "cuda"
        if backend == "eager":  # the reference's op sequence: two passes, default layout
            return _TorchNetwork(self.model, self.device, False, precision, joint_flip=False)
        if backend == "onnxruntime":  # the export folds BatchNorm itself
            return _OnnxNetwork(self.model, self.config)
        fast = prepare_for_inference(self.model, self.device, fold=True, channels_last=True)
        if cuda:
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: pick the fastest kernels
        net = compile_model(fast, self.device) if backend == "compile" else fast
        # A GPU: one 2N batch for the flip test keeps it busier. A CPU: passes of at most
        # CPU_CHUNK crops (larger ones spill the caches: 10% slower per crop at 32 than at 8).
        chunk = None if cuda else CPU_CHUNK
        graphs = cuda and backend == "compile"
        return _TorchNetwork(net, self.device, True, precision, cuda, chunk, cuda_graphs=graphs)

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB -> (N, 3, h, w) float32 on the device, (x - mean) / std; an
        inference tensor, as the network's inputs are (so a compiled graph is not made twice)."""
        with torch.inference_mode():
            return normalize(self._to_device(crops))

    def _to_device(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """An array or tensor on the device; to a GPU through pinned memory, asynchronously."""
        if isinstance(crops, np.ndarray):
            crops = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.type == "cuda" and crops.device.type == "cpu":
            if not crops.is_pinned():
                crops = crops.pin_memory()
            return crops.to(self.device, non_blocking=True)
        return crops.to(self.device)

    def _flip(self, flip: bool | None) -> bool:
        return self.config.inference.flip if flip is None else flip

    def heatmaps(self, inputs: torch.Tensor, flip: bool | None = None) -> torch.Tensor:
        """Heatmaps (N, K, h/4, w/4) of normalised crops, averaged with the mirrored crops' if flip
        (see :func:`flip_test`). Runs the backend's PyTorch network (the plain one for the
        onnxruntime backend, whose graph takes uint8 crops)."""
        net = self.network()
        if isinstance(net, _OnnxNetwork):
            net = _TorchNetwork(self.model, self.device, False, "fp32", joint_flip=False)
        indices = list(self.config.keypoints.flip_indices) if self._flip(flip) else None
        return net.heatmaps(inputs, indices)

    def _crop_keypoints(self, images: np.ndarray | torch.Tensor, flip: bool) -> tuple[Any, Any]:
        """Keypoints in crop pixels (N, K, 2) and scores (N, K) of one batch of uint8 crops;
        tensors left on the device (so a GPU is not waited for) or NumPy arrays."""
        net = self.network()
        if isinstance(net, _OnnxNetwork):
            if isinstance(images, torch.Tensor):
                images = images.cpu().numpy()
            keypoints, scores, _ = net.run(np.ascontiguousarray(images, dtype=np.uint8), flip)
            return keypoints, scores
        indices = list(self.config.keypoints.flip_indices) if flip else None
        with torch.inference_mode():
            heatmaps = net.heatmaps(self.normalize(images), indices)
            locations, scores = decode_heatmaps_torch(heatmaps)
            w, h = self.input_size  # stride: Python scalars, no copy to the device
            sx, sy = (
                float(np.float32(w / heatmaps.shape[3])),
                float(np.float32(h / heatmaps.shape[2])),
            )
            keypoints = torch.stack([locations[..., 0] * sx, locations[..., 1] * sy], dim=-1)
        return keypoints, scores

    def _run_batches(
        self, batches: Iterable[np.ndarray | torch.Tensor], flip: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop-pixel keypoints and scores of all batches, joined; one device sync at the end."""
        parts = [self._crop_keypoints(images, flip) for images in batches]
        k = self.config.model.num_keypoints
        if not parts:
            return np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        if isinstance(parts[0][0], torch.Tensor):
            keypoints = torch.cat([p[0] for p in parts]).cpu().numpy()
            scores = torch.cat([p[1] for p in parts]).cpu().numpy()
        else:
            keypoints = np.concatenate([p[0] for p in parts])
            scores = np.concatenate([p[1] for p in parts])
        self._check_finite(scores)
        return keypoints, scores

    def _check_finite(self, scores: np.ndarray) -> None:
        """Refuse heatmaps holding inf or NaN (a score is its heatmap's maximum, and NaN wins
        argmax), rather than return keypoints that mean nothing."""
        bad = int((~np.isfinite(scores)).any(axis=1).sum())
        if not bad:
            return
        precision = self.runtime.precision
        if precision == "fp16":
            why = (
                "the activations exceed float16's range (65504); use precision bf16 "
                "(same range as float32) or fp32"
            )
        else:
            why = "the checkpoint's weights hold inf/NaN or its activations overflow float32"
        raise ValueError(
            f"{self.name}: the heatmaps of {bad} of {len(scores)} people are not finite "
            f"(inf or NaN) with precision {precision} on the {self.backend} backend: {why}"
        )

    def predict_crops(
        self, crops: Crops, flip: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (N, K, 2) in image pixels and scores (N, K) for prepared crops, batched."""
        batch = self.config.inference.batch_size
        images = crops.images
        locations, scores = self._run_batches(
            (images[i : i + batch] for i in range(0, len(images), batch)), self._flip(flip)
        )
        return crop_to_image(locations, crops.centers, crops.scales, self.input_size), scores

    def decode(
        self, heatmaps: np.ndarray, centers: np.ndarray, scales: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps -> keypoints in image pixels (N, K, 2) and scores (N, K)."""
        locations, scores = decode_heatmaps(heatmaps)
        w, h = self.input_size
        stride = np.array([w / heatmaps.shape[3], h / heatmaps.shape[2]], np.float32)
        keypoints = crop_to_image(locations * stride, centers, scales, self.input_size)
        return keypoints, scores

    def predict(
        self,
        image: str | Path | np.ndarray,
        boxes: Sequence | np.ndarray | None = None,
        flip: bool | None = None,
    ) -> Poses:
        """Poses of the people in ``boxes`` (xyxy [+ score], image pixels) of one image.

        Args:
            image: a file path, or an (H, W, 3) uint8 RGB array.
            boxes: (N, 4) or (N, 5); None means one box covering the whole image.
            flip: flip test on/off; None uses the config (on by default).
        """
        return self.predict_many([image], [boxes], flip)[0]

    def _prepare(
        self, image: str | Path | np.ndarray, boxes: Sequence | np.ndarray | None
    ) -> tuple[np.ndarray, Crops]:
        """Read one image and cut the crops of its boxes: on the CPU with OpenCV, or on the
        device (``device_crops``), where only the image is copied over."""
        is_file = isinstance(image, str | Path)
        array = read_image(image) if is_file else _check_image(image)
        b = as_boxes(boxes, array.shape, str(image) if is_file else "the image")
        padding = self.config.inference.padding
        if not (self.runtime.device_crops and len(b)):
            return b, prepare_crops(array, b[:, :4], self.input_size, padding)
        center, scale = crop_region(b[:, :4], self.input_size, padding)
        on_device = warp_crops(
            self._to_device(np.ascontiguousarray(array)),
            self._to_device(center),
            self._to_device(scale),
            self.input_size,
        )
        return b, Crops(on_device.to(torch.uint8), center, scale)

    def predict_many(
        self,
        images: Iterable[str | Path | np.ndarray],
        boxes: Iterable[Sequence | np.ndarray | None],
        flip: bool | None = None,
    ) -> list[Poses]:
        """:meth:`predict` for many images, the crops of all of them batched together; the next
        images are read and cropped while a batch is in the network."""
        single = isinstance(images, Sequence) and len(images) <= 1
        workers = 0 if single else self.runtime.workers
        work = ordered_map(self._prepare, zip(images, boxes, strict=True), workers)
        people: list[tuple[np.ndarray, Crops]] = []

        def batches() -> Iterator[np.ndarray | torch.Tensor]:
            """Batches of exactly ``batch_size`` crops across images (the last one smaller)."""
            batch = self.config.inference.batch_size
            pending: list[np.ndarray | torch.Tensor] = []
            count = 0
            for b, crops in work:
                people.append((b, crops))
                if len(b):
                    pending.append(crops.images)
                    count += len(b)
                while count >= batch:
                    joined = _join(pending)
                    yield joined[:batch]
                    pending, count = [joined[batch:]], count - batch
            if count:
                yield _join(pending)

        locations, scores = self._run_batches(batches(), self._flip(flip))
        if not people:
            return []
        centers = np.concatenate([c.centers for _, c in people])
        scales = np.concatenate([c.scales for _, c in people])
        keypoints = crop_to_image(locations, centers, scales, self.input_size)
        out, start = [], 0
        for b, crops in people:
            end = start + len(b)
            out.append(
                Poses(
                    keypoints[start:end],
                    scores[start:end],
                    b[:, :4].copy(),
                    b[:, 4].copy(),
                    crops.centers,
                    crops.scales,
                )
            )
            start = end
        return out


def _join(parts: list[np.ndarray | torch.Tensor]) -> np.ndarray | torch.Tensor:
    """Concatenate crops held as NumPy arrays or as tensors (device crops)."""
    if len(parts) == 1:
        return parts[0]
    if isinstance(parts[0], torch.Tensor):
        return torch.cat(parts)
    return np.concatenate(parts)


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("an image array must be uint8 (H, W, 3) RGB")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"an image array must be (H, W, 3) RGB, got shape {image.shape}")
    return image[..., :3]


def load(
    model: str | Path,
    checkpoint_source: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    backend: Backend = "auto",
    precision: Precision = "fp32",
    device_crops: bool = False,
    workers: int = 2,
) -> PoseEstimator:
    """A ready-to-use estimator (eval mode) from a preset name or a nextpose checkpoint file.

    Args:
        model: a preset name (its published weights are downloaded unless ``checkpoint_source``
            is given), or the path/URL of a checkpoint written by nextpose (it carries its config).
        checkpoint_source: weights to use instead: a local path or a URL (``file://`` works).
        device: where to run, e.g. "cpu" or "cuda".
        progress: show a progress bar while downloading.
        backend, precision, device_crops, workers: how the network runs, see :class:`Runtime`.
    """
    model = str(model)
    if model in PRESETS:
        preset = get_preset(model)
        config, name = preset.config, preset.name
        source = checkpoint_source or preset.weights_url
        if source is None:
            raise checkpoint.CheckpointError(
                f"preset '{name}' has no published weights; pass a checkpoint file"
            )
        path = checkpoint.resolve(source, progress)
        obj = checkpoint.read(path)
    else:
        if not (checkpoint.is_url(model) or Path(model).exists()):
            raise ValueError(
                f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file"
            )
        source = checkpoint_source or model
        path = checkpoint.resolve(source, progress)
        obj = checkpoint.read(path)
        own = checkpoint.read(checkpoint.resolve(model, progress)) if checkpoint_source else obj
        if "config" not in own:
            raise checkpoint.CheckpointError(
                f"{model}: the file carries no nextpose config; name a preset as MODEL and pass "
                "this file as the checkpoint"
            )
        try:
            config, name = Config.from_dict(own["config"]), Path(model).stem
        except ValueError as e:
            raise checkpoint.CheckpointError(
                f"{model}: the config it carries is invalid: {e}"
            ) from None
    net = PoseNet(config.model)
    checkpoint.load_into(net, obj, str(path), name)
    return PoseEstimator(
        net,
        config,
        device=device,
        name=name,
        backend=backend,
        precision=precision,
        device_crops=device_crops,
        workers=workers,
    )
