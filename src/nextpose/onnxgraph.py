"""The ``onnxruntime`` backend's network: ONNX Runtime sessions of the exported crops graph (uint8
crops in; crop-pixel keypoints, scores and heatmaps out; flip test and MSRA decoding inside),
kept in the cache folder once ONNX Runtime has optimized them for this CPU.

This module imports no torch, so a process whose graph is in the cache runs without it
(``nextpose predict --backend onnxruntime`` starts in ~1 s instead of ~4 s). What needs the
PyTorch model (exporting a graph that is not cached, ``heatmaps`` of normalised inputs) is
handed in by :mod:`nextpose.runtime` or the predictor, which read the weights only then.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._version import __version__
from .codec import decode_heatmaps
from .config import Config
from .errors import require
from .fileio import AtomicFile, cache_dir
from .options import Network, RunOptions, cpu_fingerprint

if TYPE_CHECKING:
    import torch

# The backend's graphs, but for the flip: MSRA inside (DARK decodes their heatmaps outside),
# whatever the config's decoding (a DARK config's graph was cached as the MSRA one).
GRAPH_EXPORT = {"heatmaps": True, "decode": "msra"}


def onnx_cache_path(digest: str, config: Config, **export: Any) -> Path:
    """Where the onnxruntime backend keeps the graph of the weights ``digest`` names
    (:func:`~nextpose.checkpoint.weights_digest`) exported with ``export`` (keywords of
    :func:`~nextpose.graphs.to_onnx`), as ONNX Runtime optimized it for this CPU:
    ``<cache>/onnx/<key>.onnx``, the key a sha256 of the digest, the config (but for the flip
    and decoding defaults: the graph has the flip of ``export`` and decodes MSRA, DARK decodes
    its heatmaps outside), the export options, the versions that make and run the graph, and
    the CPU (:func:`~nextpose.options.cpu_fingerprint`)."""
    import onnxruntime

    # torch's and onnx's versions from their metadata: importing them is needed only to export
    versions = tuple(importlib.metadata.version(m) for m in ("torch", "onnx"))
    described = config.to_dict()
    described["inference"] = {
        k: v for k, v in described["inference"].items() if k not in ("flip", "decode")
    }
    parts = (digest, (__version__, *versions, onnxruntime.__version__), described)
    key = repr((*parts, sorted(export.items()), cpu_fingerprint()))
    return cache_dir() / "onnx" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.onnx"


def is_cached(digest: str, config: Config, flip: bool) -> bool:
    """Whether the graph of these weights and flip setting is in the cache."""
    return onnx_cache_path(digest, config, flip=flip, **GRAPH_EXPORT).is_file()


def _threads() -> int:
    """ONNX Runtime's threads, as PyTorch would take them: its count when torch is in use (the
    user may have set it), else ``OMP_NUM_THREADS`` if set, else 0: ONNX Runtime's own choice,
    one per physical core as PyTorch's default."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return torch.get_num_threads()
    given = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(given) if given.isdigit() and int(given) > 0 else 0


def ort_session(graph: str | bytes, keep: Path | None = None) -> Any:
    """A CPU session of ``graph`` (a file already optimized, or exported bytes, which ONNX Runtime
    optimizes for this CPU and, with ``keep``, saves there)."""
    ort = require("onnxruntime", "onnx", "the onnxruntime backend")
    options = ort.SessionOptions()
    options.intra_op_num_threads = _threads()
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


class GraphNetwork:
    """The crops graph on ONNX Runtime, one session per flip setting, each made on first use:
    from the cache when it holds the graph, else from ``export`` (then kept there). DARK decodes
    the graph's heatmaps with the reference's NumPy/OpenCV arithmetic, as the PyTorch CPU
    backends do.

    Args:
        config, options: the model's config; resolved run options (on the CPU).
        digest: names the weights in the cache (:func:`onnx_cache_path`); called once.
        export: the serialised crops graph for a flip setting (the PyTorch model's export).
        plain: the PyTorch network that :meth:`heatmaps`, :meth:`normalize` and
            :meth:`to_device` run (the graph takes uint8 crops); made on first use.
    """

    def __init__(
        self,
        config: Config,
        options: RunOptions,
        digest: Callable[[], str],
        export: Callable[[bool], bytes],
        plain: Callable[[], Network],
    ):
        require("onnxruntime", "onnx", "the onnxruntime backend", load=False)
        self.config = config
        self.options = options
        self._digest_of = digest
        self._digest: str | None = None
        self._export = export
        self._make_plain = plain
        self._plain: Network | None = None
        self._sessions: dict[bool, Any] = {}
        self._lock = threading.Lock()
        self._plain_lock = threading.Lock()  # apart: a session's export may need the plain one

    @property
    def device(self) -> torch.device:
        return self.options.torch_device

    @property
    def plain(self) -> Network:
        """The PyTorch network of the same weights (eager)."""
        with self._plain_lock:
            if self._plain is None:
                self._plain = self._make_plain()
            return self._plain

    def export(self, flip: bool) -> bytes:
        """The serialised crops graph for ``flip``, exported from the PyTorch model."""
        return self._export(flip)

    def session(self, flip: bool) -> Any:
        with self._lock:
            if flip not in self._sessions:
                if self._digest is None:
                    self._digest = self._digest_of()
                path = onnx_cache_path(self._digest, self.config, flip=flip, **GRAPH_EXPORT)
                session = None
                if path.is_file():
                    try:
                        session = ort_session(str(path))
                    except Exception:  # a damaged file: export again
                        with contextlib.suppress(OSError):  # a read-only cache: not kept
                            path.unlink(missing_ok=True)
                if session is None:
                    session = ort_session(self.export(flip), keep=path)
                self._sessions[flip] = session
            return self._sessions[flip]

    def to_device(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.plain.to_device(array)

    def normalize(self, crops: np.ndarray | torch.Tensor) -> torch.Tensor:
        return self.plain.normalize(crops)

    def heatmaps(self, inputs: torch.Tensor, flip: bool) -> torch.Tensor:
        return self.plain.heatmaps(inputs, flip)

    def cut_crops(
        self, image: torch.Tensor, centers: np.ndarray, scales: np.ndarray
    ) -> torch.Tensor:
        return self.plain.cut_crops(image, centers, scales)

    def keypoints(
        self, crops: np.ndarray | torch.Tensor, flip: bool, decode: str = "msra"
    ) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(crops, np.ndarray):  # a tensor (device crops)
            crops = crops.cpu().numpy()
        crops = np.ascontiguousarray(crops, dtype=np.uint8)
        keypoints, scores, heatmaps = self.session(flip).run(None, {"crops": crops})
        if decode == "dark":
            kernel = self.config.codec.blur_kernel_size
            locations, scores = decode_heatmaps(heatmaps, decode, kernel)
            return locations * self.config.model.heatmap_stride, scores
        return keypoints, scores
