"""Write a pose model's ONNX graph (:mod:`nextpose.graphs`: the test-time pipeline inside) to a
file."""

from pathlib import Path

from torch import nn

from .config import Config
from .fileio import atomic_write_bytes
from .geometry_torch import WarpMethod
from .graphs import OPSET, OPSET_MAX, GraphInput, to_onnx

__all__ = ["OPSET", "OPSET_MAX", "export_onnx"]


def export_onnx(
    model: nn.Module,
    config: Config,
    path: str | Path | None,
    input: GraphInput = "crops",
    flip: bool = True,
    warp: WarpMethod = "fixed",
    heatmaps: bool = False,
    opset: int = OPSET,
    decode: str | None = None,
) -> Path | bytes:
    """Write the ONNX graph of ``model`` (a :class:`~nextpose.model.PoseNet`) to ``path``
    atomically, making its folder; return the graph as bytes when ``path`` is None. The options
    are :func:`~nextpose.graphs.to_onnx`'s."""
    data = to_onnx(model, config, input, flip, warp, heatmaps, opset, decode)
    if path is None:
        return data
    return atomic_write_bytes(path, data)  # its folders made, a refusal naming the file
