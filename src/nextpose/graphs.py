"""A pose model with the whole test-time pipeline inside, as one module and as an ONNX graph:
normalisation, the flip test (mirrored batch, left/right swap, one-column shift), decoding (argmax
+ quarter-pixel step, or DARK's blur and Taylor step) and, with image input, the affine crop and
the map back to image pixels. The ``onnxruntime`` backend runs the crops graph;
:func:`nextpose.export.export_onnx` writes either to a file.

Two graphs (see :func:`to_onnx`):

* ``crops``: ``crops`` (N, h, w, 3) uint8 RGB, each already cut as :func:`nextpose.geometry.crop`
  cuts it -> ``keypoints`` (N, K, 2) float32 crop pixels, ``scores`` (N, K) float32.
* ``image``: ``image`` (H, W, 3) uint8 RGB and ``boxes`` (N, 4) float32 xyxy image pixels ->
  ``keypoints`` (N, K, 2) float32 image pixels, ``scores`` (N, K) float32.

N (and H, W) are dynamic. Keypoints whose heatmap maximum is <= 0 sit where the reference puts
them (heatmap pixel (-1, -1): crop pixel (-4, -4) for the published models); their score is
kept.
"""

import io
import warnings
from typing import Literal

import torch
from torch import nn

from .codec_torch import decode_heatmaps_torch
from .config import Config, check_decode
from .errors import InputError, require
from .geometry_torch import WarpMethod, crop_region_torch, crop_to_image_torch, warp_crops
from .model.tta import flip_test, normalize
from .optimize import prepare_for_inference

GraphInput = Literal["crops", "image"]
OPSET = 17  # GridSample needs 16
OPSET_MAX = 20  # the newest opset the TorchScript exporter writes


class CropsGraph(nn.Module):
    """uint8 RGB crops (N, h, w, 3) -> keypoints (N, K, 2) crop pixels and scores (N, K), with
    the flip test and decoding (``msra`` or ``dark``) inside (``heatmaps``: also the averaged
    heatmaps)."""

    def __init__(
        self,
        net: nn.Module,
        config: Config,
        flip: bool = True,
        heatmaps: bool = False,
        decode: str = "msra",
    ):
        super().__init__()
        self.net = net
        self.decode = check_decode(decode)
        self.blur_kernel_size = config.codec.blur_kernel_size
        self.flip_indices = list(config.keypoints.flip_indices) if flip else None
        self.with_heatmaps = heatmaps
        self.pixel_mean, self.pixel_std = config.model.pixel_mean, config.model.pixel_std
        self.stride = config.model.heatmap_stride

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = normalize(crops, self.pixel_mean, self.pixel_std)
        if self.flip_indices is None:
            heatmaps = self.net(x)
        else:  # one batch of 2N: original and mirrored crops
            heatmaps = flip_test(self.net, x, self.flip_indices, joint=True)
        locations, scores = decode_heatmaps_torch(heatmaps, self.decode, self.blur_kernel_size)
        keypoints = locations * self.stride
        return (keypoints, scores, heatmaps) if self.with_heatmaps else (keypoints, scores)


class ImageGraph(nn.Module):
    """uint8 RGB image (H, W, 3) + xyxy boxes (N, 4) -> keypoints (N, K, 2) image pixels and
    scores (N, K): the crop (``warp``, see :func:`~nextpose.geometry_torch.warp_crops`), the crops
    graph, and the reference's map back to the image, all inside."""

    def __init__(
        self,
        net: nn.Module,
        config: Config,
        flip: bool = True,
        warp: WarpMethod = "fixed",
        decode: str = "msra",
    ):
        super().__init__()
        self.crops = CropsGraph(net, config, flip, decode=decode)
        self.input_size = config.model.input_size
        self.padding = config.inference.padding
        self.warp = warp

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        center, scale = crop_region_torch(boxes[:, :4], self.input_size, self.padding)
        crops = warp_crops(image, center, scale, self.input_size, self.warp)
        keypoints, scores = self.crops(crops)
        return crop_to_image_torch(keypoints, center, scale, self.input_size), scores


def to_onnx(
    model: nn.Module,
    config: Config,
    input: GraphInput = "crops",
    flip: bool = True,
    warp: WarpMethod = "fixed",
    heatmaps: bool = False,
    opset: int = OPSET,
    decode: str | None = None,
) -> bytes:
    """The serialised ONNX graph of ``model`` (a :class:`~nextpose.model.PoseNet`), with what a
    user needs to feed it as metadata properties.

    Args:
        input: ``crops`` (uint8 crops in, crop pixels out) or ``image`` (an image and boxes in,
            image pixels out); see the module docstring for names and shapes.
        flip: include the flip test (the network runs on a batch of 2N).
        warp: how the ``image`` graph crops: ``fixed`` (OpenCV's arithmetic, exact) or
            ``grid_sample`` (ONNX GridSample; ~0.001 grey levels mean difference).
        heatmaps: the crops graph also returns the averaged heatmaps (N, K, Hh, Wh), of
            ``config.model.heatmap_size``.
        opset: ONNX opset (>= 16).
        decode: ``msra`` or ``dark`` (the blur, log and Taylor step inside the graph, partly in
            float64); None: the config's ``inference.decode``.

    BatchNorm is folded into the convolutions first; the graph runs in float32.
    """
    require("onnx", "onnx", "ONNX export")
    if not 16 <= opset <= OPSET_MAX:
        raise InputError(f"opset {opset}: ONNX export needs an opset from 16 to {OPSET_MAX}")
    decode = check_decode(config.inference.decode if decode is None else decode)
    net = prepare_for_inference(model, "cpu", fold=True, channels_last=False)
    w, h = config.model.input_size
    if input == "crops":
        graph: nn.Module = CropsGraph(net, config, flip, heatmaps, decode)
        args: tuple[torch.Tensor, ...] = (torch.zeros(2, h, w, 3, dtype=torch.uint8),)
        names = ["crops"]
        outputs = ["keypoints", "scores"] + (["heatmaps"] if heatmaps else [])
        axes = {name: {0: "batch"} for name in names + outputs}
    elif input == "image":
        if heatmaps:
            raise InputError("heatmaps=True needs input='crops'")
        graph = ImageGraph(net, config, flip, warp, decode)
        image = torch.zeros(2 * h, 2 * w, 3, dtype=torch.uint8)
        boxes = torch.tensor([[10.0, 10.0, w, h], [0.0, 0.0, 2 * w - 1, 2 * h - 1]])
        args, names, outputs = (image, boxes), ["image", "boxes"], ["keypoints", "scores"]
        axes = {"image": {0: "height", 1: "width"}, "boxes": {0: "people"}}
        axes |= {name: {0: "people"} for name in outputs}
    else:
        raise InputError(f"input must be 'crops' or 'image', not {input!r}")
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            graph.eval(),
            args,
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            do_constant_folding=True,
        )
    return _with_metadata(buffer.getvalue(), config, input, flip, warp, decode)


def _with_metadata(
    data: bytes, config: Config, input: str, flip: bool, warp: str, decode: str
) -> bytes:
    """The serialised graph with what a user needs to feed it, as ONNX metadata properties."""
    import onnx

    proto = onnx.load_from_string(data)
    w, h = config.model.input_size
    meta = {
        "nextpose.input": input,
        "nextpose.input_format": (
            "uint8 RGB crops (N, h, w, 3)"
            if input == "crops"
            else "uint8 RGB image (H, W, 3) + float32 xyxy boxes (N, 4)"
        ),
        "nextpose.input_size": f"{w}x{h} (w x h)",
        "nextpose.padding": str(config.inference.padding),
        "nextpose.flip_test": str(flip).lower(),
        "nextpose.decode": decode,
        "nextpose.warp": warp if input == "image" else "",
        "nextpose.keypoints": ",".join(config.keypoints.names),
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    what = "crops -> crop pixels" if input == "crops" else "image + boxes -> image pixels"
    proto.doc_string = f"nextpose pose graph: {what} keypoints and scores, decoding inside"
    return proto.SerializeToString()
