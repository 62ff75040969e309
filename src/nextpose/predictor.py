"""The pose estimator: a :class:`~nextpose.model.PoseNet`, its config and run options, in front
of the :class:`~nextpose.engine.Engine`; and :func:`load`, which makes one from a preset or a file.

>>> estimator = nextpose.load("resnext50_coco_256x192")
>>> poses = estimator.predict("street.jpg", boxes=[[48, 30, 210, 400, 0.98]])

With the ``onnxruntime`` backend and the graph of the weights in the cache, nothing here imports
torch: the weights are read (and the PyTorch backends loaded) only when something needs them.
"""

from __future__ import annotations

import copy
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import checkpoint as weights
from .boxes import BoxFormat
from .codec import decode_heatmaps
from .config import Config, ModelConfig, check_decode
from .engine import Detector, Engine, ImageSource, Task
from .errors import CheckpointError, ConfigError, InputError
from .geometry import crop_to_image
from .keypoints import KeypointSet
from .onnxgraph import GraphNetwork, is_cached
from .options import Backend, KeepFp32, Network, Precision, RunOptions, onnxruntime_available
from .presets import PRESETS, get_preset
from .structures import Poses

if TYPE_CHECKING:
    import torch

    from .model import PoseNet

_SHARED_NETWORK = (
    "device",
    "backend",
    "precision",
    "cudnn_benchmark",
    "keep_fp32",
)  # what builds a network


_ARCHITECTURE = ("blocks", "groups", "width_per_group", "deconv_channels", "num_deconv",
                 "num_keypoints")  # fmt: skip


def _check_fits(model: object, config: Config) -> None:
    """Refuse a :class:`PoseNet` built for another architecture than ``config`` describes (it
    would run with the other's keypoint set, input size and statistics)."""
    own = getattr(model, "config", None)  # a PoseNet's ModelConfig (torch not imported here)
    if isinstance(own, ModelConfig):
        other = [
            f"{k}={getattr(own, k)} (config: {getattr(config.model, k)})"
            for k in _ARCHITECTURE
            if getattr(own, k) != getattr(config.model, k)
        ]
        if other:
            raise ConfigError(f"the model is not the one the config describes: {', '.join(other)}")


class PoseEstimator:
    """Poses of people in images: crops of their boxes through the network, flip test,
    decoding, and back to image pixels, exactly as the reference computes them.

    Args:
        model: the network (put in eval mode on the device), or a function that returns it,
            called when the weights are first needed (:func:`load` passes one when the
            ``onnxruntime`` backend finds their graph in the cache).
        config: what the model is (input size, keypoint set, pixel statistics, padding).
        device, backend, precision, device_crops, batch_size, read_threads, keep_fp32: how it
            runs, see :class:`~nextpose.options.RunOptions` (or pass ``options=`` whole).
        name: how messages and ``repr`` name it (the preset or file).
        digest: with ``model`` a function, the :func:`~nextpose.checkpoint.weights_digest` of
            the model it returns, so that the ``onnxruntime`` backend can run a cached graph of
            those weights without reading them (``load`` knows it from the cache).
    """

    def __init__(
        self,
        model: PoseNet | Callable[[], PoseNet],
        config: Config,
        device: str | torch.device = "cpu",
        *,
        name: str = "custom",
        backend: Backend = "auto",
        precision: Precision = "fp32",
        device_crops: bool = False,
        batch_size: int = 32,
        read_threads: int = 2,
        keep_fp32: KeepFp32 = "ends",
        options: RunOptions | None = None,
        workers: int | None = None,
        digest: str | None = None,
    ):
        if workers is not None:
            warnings.warn(
                "PoseEstimator(workers=...) is now read_threads=...", DeprecationWarning, 2
            )
            read_threads = workers
        if options is None:
            options = RunOptions(
                device,  # type: ignore[arg-type]  # RunOptions makes a str of a device or index
                backend,
                precision,
                device_crops,
                batch_size,
                read_threads,
                keep_fp32=keep_fp32,
            )
        self._asked = options  # as given: with_options resolves ``auto`` again from these
        self.options = options.resolve(config.inference.decode)
        self.config = config
        self.name = name
        self.digest = digest
        self._model: PoseNet | None = None
        self._read: Callable[[], PoseNet] | None = None
        if callable(model) and not hasattr(model, "state_dict"):
            self._read = model
        else:
            _check_fits(model, config)
            self._model = model.eval().to(self.options.torch_device)
        self._network: Network | None = None
        self._siblings: dict[str, PoseEstimator] = {}  # for_decode's, by decoding
        self._lock = threading.Lock()
        self._model_lock = threading.Lock()

    def __repr__(self) -> str:
        w, h = self.input_size
        o = self.options
        return (
            f"PoseEstimator({self.name}: {h}x{w} (h x w) input, {self.keypoint_set.num_keypoints} "
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
    def model(self) -> PoseNet:
        """The PyTorch network (eval mode, on the device); read now if it was not yet."""
        with self._model_lock:
            if self._model is None:
                assert self._read is not None
                self._model = self._read().eval().to(self.options.torch_device)
                self._read = None
            return self._model

    @model.setter
    def model(self, model: PoseNet) -> None:
        """Other weights: the network is built again from them on next use."""
        _check_fits(model, self.config)
        with self._model_lock:
            self._model, self._read = model.eval().to(self.options.torch_device), None
        with self._lock:
            self._network = None
            self._siblings.clear()

    @property
    def backend(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self.options.backend

    @property
    def network(self) -> Network:
        """The backend's network, built on first use (folding, compiling or exporting)."""
        with self._lock:
            if self._network is None:
                unread = self._model is None and self.digest is not None
                if unread and self.options.backend == "onnxruntime":
                    self._network = self._graph_network()
                else:
                    from .runtime import build_network

                    self._network = build_network(self.model, self.config, self.options)
            return self._network

    def _graph_network(self) -> Network:
        """The ``onnxruntime`` network before the weights are read: the cached graph, and the
        PyTorch side (the export, ``heatmaps``) made from the weights only if asked for."""
        torch_side: list[Network] = []
        made = threading.Lock()  # two threads' first calls make it once

        def backed() -> Any:
            with made:
                if not torch_side:
                    from .runtime import OnnxNetwork

                    torch_side.append(OnnxNetwork(self.model, self.config, self.options))
                return torch_side[0]

        assert self.digest is not None
        digest = self.digest
        return GraphNetwork(
            self.config,
            self.options,
            digest=lambda: digest,
            export=lambda flip: backed().export(flip),
            plain=lambda: backed().plain,
        )

    def warm_up(self, flips: bool | tuple[bool, ...] = (True, False)) -> float:
        """Build the network and run a blank crop through it once per flip setting, so that
        compiling, exporting or loading from the cache happens now rather than in the first
        real call (a service does this before it answers). Returns the seconds it took."""
        if isinstance(flips, bool):
            flips = (flips,)
        if not all(isinstance(f, bool) for f in flips):
            raise InputError(f"flips must be True/False settings, not {flips!r}")
        start = time.perf_counter()
        w, h = self.input_size
        blank = np.zeros((1, h, w, 3), np.uint8)
        for flip in flips:
            self.network.keypoints(blank, flip, self.config.inference.decode)
        return time.perf_counter() - start

    def with_options(self, **changes: Any) -> PoseEstimator:
        """This estimator with other run options (``batch_size=8``, ``backend="eager"``...;
        ``auto`` is chosen again for the new device and precision); the weights are shared
        (copied for another device, so this one keeps its own), and so is the built network
        when it would be the same."""
        names = {f.name for f in fields(RunOptions)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise InputError(f"unknown run options {unknown}; choose from {sorted(names)}")
        options = replace(self._asked, **changes)
        same_device = options.device == self.options.device
        model: PoseNet | Callable[[], PoseNet]
        if same_device:  # the same weights, read once for both if not read yet
            model = self._model if self._model is not None else lambda: self.model
        else:
            model = copy.deepcopy(self.model)
        other = PoseEstimator(
            model, self.config, name=self.name, options=options, digest=self.digest
        )
        if all(getattr(other.options, k) == getattr(self.options, k) for k in _SHARED_NETWORK):
            other._network = self._network
        return other

    def engine(
        self,
        detector: Detector | None = None,
        *,
        batch_size: int | None = None,
        read_threads: int | None = None,
    ) -> Engine:
        """The engine that runs this estimator (with ``detector`` for tasks without boxes);
        ``batch_size`` and ``read_threads`` other than the run options' share this network."""
        changes = {"batch_size": batch_size, "read_threads": read_threads}
        options = replace(self.options, **{k: v for k, v in changes.items() if v is not None})
        return Engine(self.network, self.config, options, detector)

    def for_decode(self, decode: str | None) -> PoseEstimator:
        """The estimator that runs ``decode`` (None: the config's) as one loaded for it would:
        this one, or where ``auto`` picks another backend for that decoding (DARK runs eager on
        a CPU) a sibling sharing the weights, made once."""
        decode = check_decode(self.config.inference.decode if decode is None else decode)
        if decode == self.config.inference.decode:
            return self
        options = self._asked.resolve(decode)
        if options == self.options:
            return self
        with self._lock:
            other = self._siblings.get(decode)
            if other is None:
                inference = replace(self.config.inference, decode=decode)
                config = replace(self.config, inference=inference)
                other = PoseEstimator(
                    lambda: self.model, config, name=self.name, options=self._asked,
                    digest=self.digest,
                )  # fmt: skip
                self._siblings[decode] = other
        return other

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, h, w, 3) uint8 RGB crops -> (N, 3, h, w) float32 network input on the device,
        ``(x - pixel_mean) / pixel_std``."""
        return self.network.normalize(crops)

    def heatmaps(self, inputs: torch.Tensor, flip: bool | None = None) -> torch.Tensor:
        """Heatmaps (N, K, Hh, Wh) (``model.heatmap_size``) of normalised inputs, averaged with
        the mirrored inputs' if ``flip`` (None: the config's, on); the backend's PyTorch
        network."""
        return self.network.heatmaps(inputs, self.config.inference.flip if flip is None else flip)

    def decode(
        self,
        heatmaps: np.ndarray | torch.Tensor,
        centers: np.ndarray,
        scales: np.ndarray,
        decode: str | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, Hh, Wh; an array, or :meth:`heatmaps`' tensor) -> keypoints
        (N, K, 2) in image pixels and scores (N, K), decoded by ``decode`` (``msra`` or ``dark``;
        None: the config's) on the CPU; ``centers``, ``scales``: (N, 2) crop regions, image
        pixels."""
        if not isinstance(heatmaps, np.ndarray):  # a tensor: the reference decodes on the CPU
            heatmaps = heatmaps.detach().float().cpu().numpy()
        decode = self.config.inference.decode if decode is None else decode
        kernel = self.config.codec.blur_kernel_size
        wh, hh = self.config.model.heatmap_size
        k = self.config.model.num_keypoints
        if heatmaps.ndim != 4 or heatmaps.shape[1:] != (k, hh, wh):
            raise InputError(
                f"heatmaps of shape {heatmaps.shape}: this model's are (N, {k}, {hh}, {wh})"
            )
        locations, scores = decode_heatmaps(heatmaps, decode, kernel)
        pixels = locations * self.config.model.heatmap_stride
        return crop_to_image(pixels, centers, scales, self.input_size), scores

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
        est = self.for_decode(decode)
        task = Task(image, boxes, bbox_format=bbox_format)
        (result,) = est.engine(read_threads=0).run([task], flip, decode=decode)
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
        if isinstance(images, str | bytes | os.PathLike) or (
            isinstance(images, np.ndarray) and images.ndim != 4
        ):
            raise InputError(
                f"predict_many takes a list of images, not one {type(images).__name__} (one "
                "image: predict)"
            )
        images = list(images)
        boxes = [None] * len(images) if boxes is None else list(boxes)
        if len(boxes) != len(images):
            raise InputError(f"predict_many: {len(images)} images but {len(boxes)} box lists")
        tasks = [Task(i, b, bbox_format=bbox_format) for i, b in zip(images, boxes, strict=True)]
        out = []
        for result in self.for_decode(decode).engine().run(tasks, flip, decode=decode):
            if result.error is not None:
                raise result.error
            assert result.poses is not None
            out.append(result.poses)
        return out


def load(
    model: str | Path,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    *,
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
            runs, see :class:`~nextpose.options.RunOptions`.
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
        device,  # type: ignore[arg-type]  # RunOptions makes a str of a torch.device or index
        backend, precision, device_crops, batch_size, read_threads, keep_fp32=keep_fp32,
    )  # fmt: skip
    if decode is not None:
        check_decode(decode)
    own_decode = decode or (
        PRESETS[str(model)].config.inference.decode if model in PRESETS else None
    )
    resolved = options.resolve(own_decode or "msra")  # a bad option fails before any download
    files = _files(str(model), checkpoint, decode, progress)
    # A file's sha256 leads to what the cache knows of it (the weights' digest, the config it
    # carries): when a graph of those weights is cached, the file is not read (nor torch
    # imported) until something needs the model.
    digests: tuple[str | None, str | None] = (None, None)
    if resolved.backend == "onnxruntime" and not resolved.device_crops and onnxruntime_available():
        digest, own = _sha256(files.weights), files.config_file
        digests = (digest, digest if own == files.weights else _sha256(own) if own else None)
        cached = _from_cache(files, digests, decode, options)
        if cached is not None:
            return cached
    return _read(files, digests, decode, options, str(model))


@dataclass(frozen=True)
class _Files:
    """The files :func:`load` reads: the weights, and the one that carries the config."""

    name: str  # the estimator's: the preset's, or the file's stem
    weights: Path
    config_file: Path | None  # None for a preset, whose config is known
    config: Config | None  # a preset's; a file's is read from it


def _files(model: str, checkpoint: str | Path | None, decode: str | None, progress: bool) -> _Files:
    """Where ``model`` and ``checkpoint`` lead (URLs downloaded to the cache)."""
    if model in PRESETS:
        preset = get_preset(model)
        source = checkpoint or preset.weights_url
        if source is None:
            raise CheckpointError(
                f"preset '{preset.name}' has no published weights; pass a checkpoint"
            )
        path = weights.resolve(source, progress)
        return _Files(preset.name, path, None, _decoding(preset.config, decode))
    if not (weights.is_url(model) or Path(model).exists()):
        if Path(model).suffix.lower() in weights.WEIGHT_SUFFIXES:
            raise InputError(f"{model}: no such checkpoint file")
        raise InputError(
            f"'{model}' is neither a preset ({', '.join(PRESETS)}) nor a checkpoint file"
        )
    path = weights.resolve(checkpoint or model, progress)
    own = weights.resolve(model, progress) if checkpoint else path
    return _Files(Path(model).stem, path, own, None)


def _from_cache(
    files: _Files, digests: tuple[str | None, str | None], decode: str | None, options: RunOptions
) -> PoseEstimator | None:
    """An estimator on the cached ONNX graph of these weights, the files left unread; None
    when the cache has no graph of them. ``digests``: the sha256 of the weights file and of
    the file carrying the config."""
    digest, own_digest = digests
    if digest is None:
        return None
    known = weights.recalled_file(digest) or {}
    config = files.config
    if files.config_file is not None:
        same = files.config_file == files.weights
        carried = known if same else weights.recalled_file(own_digest or "") or {}
        config = _decoding(_recorded_config(carried.get("config")), decode)
    state = known.get("weights")
    if not isinstance(state, str) or config is None:
        return None
    if not any(is_cached(state, config, flip) for flip in (True, False)):
        return None
    notes = known.get("warnings")  # what reading the file warned about
    for note in notes if isinstance(notes, list) else []:
        warnings.warn(f"{files.weights}: {note}", UserWarning, stacklevel=3)
    return PoseEstimator(
        _reader(files.weights, config, files.name, state), config, name=files.name,
        options=options, digest=state,
    )  # fmt: skip


def _read(
    files: _Files,
    digests: tuple[str | None, str | None],
    decode: str | None,
    options: RunOptions,
    model: str,
) -> PoseEstimator:
    """An estimator on the model read from the files; what was read is remembered in the cache
    under ``digests`` (the sha256 of the weights file and of the file carrying the config)."""
    digest, own_digest = digests
    path = files.weights
    obj = weights.read(path)
    config = files.config
    if files.config_file is not None:
        carried = weights.read(files.config_file) if files.config_file != path else obj
        if "config" not in carried:
            raise CheckpointError(
                f"{model}: the file carries no nextpose config; name a preset as MODEL and pass "
                "this file as the checkpoint"
            )
        config = _decoding(_config_of(carried["config"], model), decode)
        if own_digest is not None:
            weights.remember_file(own_digest, config=carried["config"])
    assert config is not None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = _read_model(obj, config, str(path), files.name)
    for w in caught:  # shown as they would have been, and kept for runs that skip the file
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    if digest is not None and _sha256(path) == digest:  # the bytes read are those hashed
        prefix = f"{path}: "
        notes = [str(w.message)[len(prefix) :] for w in caught if str(w.message).startswith(prefix)]
        weights.remember_file(digest, weights=weights.weights_digest(net), warnings=notes)
    return PoseEstimator(net, config, name=files.name, options=options)


def _decoding(config: Config | None, decode: str | None) -> Config | None:
    """``config`` decoding by ``decode`` instead of its own, when given."""
    if config is None or decode is None:
        return config
    return replace(config, inference=replace(config.inference, decode=decode))


def _reader(path: Path, config: Config, name: str, digest: str) -> Callable[[], PoseNet]:
    """Reads the model of the weights file ``path`` when called, checking that its weights are
    still those of ``digest`` (:func:`~nextpose.checkpoint.weights_digest`), as when
    :func:`load` found them in the cache."""

    def read() -> PoseNet:
        net = _read_model(weights.read(path), config, str(path), name)
        if weights.weights_digest(net) != digest:
            raise CheckpointError(
                f"{path}: the file changed since nextpose.load found its weights; load it again"
            )
        return net

    return read


def _sha256(path: Path) -> str | None:
    """The file's sha256; None if it cannot be read (:func:`~nextpose.checkpoint.read` then
    says why)."""
    try:
        return weights.sha256_of(path)
    except OSError:
        return None


def _recorded_config(recorded: Any) -> Config | None:
    """A config as the cache recorded it; None if there is none (or it is not valid): the file
    is read then."""
    try:
        return Config.from_dict(recorded) if isinstance(recorded, dict) else None
    except ValueError:
        return None


def _config_of(carried: Any, model: str) -> Config:
    """The config a checkpoint file carries, checked."""
    try:
        return Config.from_dict(carried)
    except ValueError as e:
        raise CheckpointError(f"{model}: the config it carries is invalid: {e}") from None


def _read_model(obj: dict[str, Any], config: Config, source: str, name: str) -> PoseNet:
    """The network of ``config`` with the weights of checkpoint ``obj``."""
    import torch

    from .model import PoseNet

    with torch.device("meta"):  # no random initialisation of weights about to be replaced
        net = PoseNet(config.model)
    weights.load_into(net, obj, source, name)
    return net
