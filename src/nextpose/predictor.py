"""The pose estimator: a :class:`~nextpose.model.PoseNet`, its config and run options, in front
of the :class:`~nextpose.engine.Engine`; and :func:`load`, which makes one from a preset or a file.

>>> estimator = nextpose.load("resnext50_coco_256x192")
>>> poses = estimator.predict("street.jpg", boxes=[[48, 30, 210, 400, 0.98]])
"""

import copy
import threading
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as weights
from .boxes import BoxFormat
from .codec import decode_heatmaps
from .config import Config, check_decode
from .engine import Detector, Engine, ImageSource, Task
from .errors import CheckpointError, InputError
from .geometry import crop_to_image
from .keypoints import KeypointSet
from .model import PoseNet
from .optimize import KeepFp32
from .presets import PRESETS, get_preset
from .runtime import Backend, Network, Precision, RunOptions, build_network
from .structures import Poses

_SHARED_NETWORK = (
    "device",
    "backend",
    "precision",
    "cudnn_benchmark",
    "keep_fp32",
)  # what builds a network


class PoseEstimator:
    """Poses of people in images: crops of their boxes through the network, flip test,
    decoding, and back to image pixels, exactly as the reference computes them.

    Args:
        model: the network (put in eval mode on the device).
        config: what the model is (input size, keypoint set, pixel statistics, padding).
        device, backend, precision, device_crops, batch_size, read_threads, keep_fp32: how it
            runs, see :class:`~nextpose.runtime.RunOptions` (or pass ``options=`` whole).
        name: how messages and ``repr`` name it (the preset or file).
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
        batch_size: int = 32,
        read_threads: int = 2,
        *,
        keep_fp32: KeepFp32 = "ends",
        options: RunOptions | None = None,
        workers: int | None = None,
    ):
        if workers is not None:
            warnings.warn(
                "PoseEstimator(workers=...) is now read_threads=...", DeprecationWarning, 2
            )
            read_threads = workers
        if options is None:
            options = RunOptions(
                str(device),
                backend,
                precision,
                device_crops,
                batch_size,
                read_threads,
                keep_fp32=keep_fp32,
            )
        self._asked = options  # as given: with_options resolves ``auto`` again from these
        self.options = options.resolve()
        self.config = config
        self.name = name
        self.model = model.eval().to(self.options.torch_device)
        self._network: Network | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        w, h = self.input_size
        o = self.options
        return (
            f"PoseEstimator({self.name}: {w}x{h} input, {self.keypoint_set.num_keypoints} "
            f"keypoints, {o.backend} backend, {o.precision} on {o.device}, batch {o.batch_size})"
        )

    @property
    def keypoint_set(self) -> KeypointSet:
        return self.config.keypoints

    @property
    def input_size(self) -> tuple[int, int]:
        """(w, h) of the network's input crops."""
        return self.config.model.input_size

    @property
    def device(self) -> torch.device:
        return self.options.torch_device

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self.options.backend

    @property
    def network(self) -> Network:
        """The backend's network, built on first use (folding, compiling or exporting)."""
        with self._lock:
            if self._network is None:
                self._network = build_network(self.model, self.config, self.options)
            return self._network

    def warm_up(self, flips: tuple[bool, ...] = (True, False)) -> float:
        """Build the network and run a blank crop through it once per flip setting, so that
        compiling, exporting or loading from the cache happens now rather than in the first
        real call (a service does this before it answers). Returns the seconds it took."""
        start = time.perf_counter()
        w, h = self.input_size
        blank = np.zeros((1, h, w, 3), np.uint8)
        for flip in flips:
            self.network.keypoints(blank, flip, self.config.inference.decode)
        return time.perf_counter() - start

    def with_options(self, **changes: Any) -> "PoseEstimator":
        """This estimator with other run options (``batch_size=8``, ``backend="eager"``...;
        ``auto`` is chosen again for the new device and precision); the weights are shared
        (copied for another device, so this one keeps its own), and so is the built network
        when it would be the same."""
        names = {f.name for f in fields(RunOptions)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown run options {unknown}; choose from {sorted(names)}")
        options = replace(self._asked, **changes)
        same_device = options.torch_device == self.device
        model = self.model if same_device else copy.deepcopy(self.model)
        other = PoseEstimator(model, self.config, name=self.name, options=options)
        if all(getattr(other.options, k) == getattr(self.options, k) for k in _SHARED_NETWORK):
            other._network = self._network
        return other

    def engine(self, detector: Detector | None = None) -> Engine:
        """The engine that runs this estimator (with ``detector`` for tasks without boxes)."""
        return Engine(self.network, self.config, self.options, detector)

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB crops -> (N, 3, h, w) float32 network input on the device,
        ``(x - pixel_mean) / pixel_std``."""
        return self.network.normalize(crops)

    def heatmaps(self, inputs: torch.Tensor, flip: bool | None = None) -> torch.Tensor:
        """Heatmaps (N, K, h/4, w/4) of normalised inputs, averaged with the mirrored inputs'
        if ``flip`` (None: the config's, on); the backend's PyTorch network."""
        return self.network.heatmaps(inputs, self.config.inference.flip if flip is None else flip)

    def decode(
        self,
        heatmaps: np.ndarray,
        centers: np.ndarray,
        scales: np.ndarray,
        decode: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, h/4, w/4) -> keypoints (N, K, 2) in image pixels and scores (N, K),
        decoded by ``decode`` (``msra`` or ``dark``; None: the config's)."""
        decode = self.config.inference.decode if decode is None else decode
        kernel = self.config.codec.blur_kernel_size
        locations, scores = decode_heatmaps(heatmaps, decode, kernel)
        w, h = self.input_size
        stride = np.array([w / heatmaps.shape[3], h / heatmaps.shape[2]], np.float32)
        return crop_to_image(locations * stride, centers, scales, self.input_size), scores

    def predict(
        self,
        image: ImageSource,
        boxes: Sequence | np.ndarray | None = None,
        flip: bool | None = None,
        bbox_format: BoxFormat = "xyxy",
        decode: str | None = None,
    ) -> Poses:
        """Poses of the people in ``boxes`` of one image, in box order.

        Args:
            image: a file path, or an (H, W, 3) uint8 RGB array.
            boxes: (N, 4) or (N, 5) with scores, image pixels; None: one box ``[0, 0, w, h]``
                covering the whole image, as the reference does.
            flip: flip test on/off; None uses the config (on).
            bbox_format: ``xyxy`` (x1, y1, x2, y2) or ``xywh`` (COCO's x, y, w, h).
            decode: ``msra`` (argmax + quarter pixel) or ``dark`` (DARK's Taylor step); None
                uses the config's (the preset's own).
        """
        engine = Engine(self.network, self.config, replace(self.options, read_threads=0))
        task = Task(image, boxes, bbox_format=bbox_format)
        (result,) = engine.run([task], flip, decode=decode)
        if result.error is not None:
            raise result.error
        assert result.poses is not None
        return result.poses

    def predict_many(
        self,
        images: Iterable[ImageSource],
        boxes: Iterable[Sequence | np.ndarray | None] | None = None,
        flip: bool | None = None,
        bbox_format: BoxFormat = "xyxy",
        decode: str | None = None,
    ) -> list[Poses]:
        """:meth:`predict` for many images, the crops of all of them batched together; the next
        images are read and cropped while a batch is in the network. ``boxes``: one entry per
        image (None: all whole-image boxes). Raises the first unreadable image's error."""
        images = list(images)
        boxes = [None] * len(images) if boxes is None else list(boxes)
        if len(boxes) != len(images):
            raise InputError(f"predict_many: {len(images)} images but {len(boxes)} box lists")
        tasks = [Task(i, b, bbox_format=bbox_format) for i, b in zip(images, boxes, strict=True)]
        out = []
        for result in self.engine().run(tasks, flip, decode=decode):
            if result.error is not None:
                raise result.error
            assert result.poses is not None
            out.append(result.poses)
        return out


def load(
    model: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    backend: Backend = "auto",
    precision: Precision = "fp32",
    device_crops: bool = False,
    batch_size: int = 32,
    read_threads: int = 2,
    keep_fp32: KeepFp32 = "ends",
    decode: str | None = None,
    **deprecated: Any,
) -> PoseEstimator:
    """A ready-to-use estimator (eval mode) from a preset name or a nextpose checkpoint file.

    Args:
        model: a preset name (its published weights are downloaded unless ``checkpoint`` is
            given), or the path/URL of a checkpoint written by nextpose (it carries its config).
        checkpoint: weights to use instead: a local path or a URL (``file://`` works).
        device: where to run, e.g. "cpu" or "cuda".
        progress: show a progress bar while downloading.
        backend, precision, device_crops, batch_size, read_threads, keep_fp32: how the network
            runs, see :class:`~nextpose.runtime.RunOptions`.
        decode: ``msra`` or ``dark``, instead of the model's own decoding (its config's
            ``inference.decode``: ``msra`` for the ResNeXt and ResNet presets, ``dark`` for the
            DARK ones).
    """
    renamed = {"checkpoint_source": "checkpoint", "workers": "read_threads"}
    for old, value in deprecated.items():
        if old not in renamed:
            raise TypeError(f"load() got an unexpected keyword argument '{old}'")
        warnings.warn(f"load({old}=...) is now {renamed[old]}=...", DeprecationWarning, 2)
        if old == "checkpoint_source":
            checkpoint = checkpoint or value
        else:
            read_threads = value
    options = RunOptions(
        str(device), backend, precision, device_crops, batch_size, read_threads, keep_fp32=keep_fp32
    )
    options.resolve()  # a bad option fails before any download
    if decode is not None:
        check_decode(decode)
    model = str(model)
    if model in PRESETS:
        preset = get_preset(model)
        config, name = preset.config, preset.name
        source = checkpoint or preset.weights_url
        if source is None:
            raise CheckpointError(f"preset '{name}' has no published weights; pass a checkpoint")
        path = weights.resolve(source, progress)
        obj = weights.read(path)
    else:
        if not (weights.is_url(model) or Path(model).exists()):
            raise InputError(
                f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file"
            )
        path = weights.resolve(checkpoint or model, progress)
        obj = weights.read(path)
        own = weights.read(weights.resolve(model, progress)) if checkpoint else obj
        if "config" not in own:
            raise CheckpointError(
                f"{model}: the file carries no nextpose config; name a preset as MODEL and pass "
                "this file as the checkpoint"
            )
        try:
            config, name = Config.from_dict(own["config"]), Path(model).stem
        except ValueError as e:
            raise CheckpointError(f"{model}: the config it carries is invalid: {e}") from None
    if decode is not None:
        config = replace(config, inference=replace(config.inference, decode=decode))
    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        net = PoseNet(config.model)
    weights.load_into(net, obj, str(path), name)
    return PoseEstimator(net, config, name=name, options=options)
