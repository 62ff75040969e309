"""The six published ResNeXt SimpleBaseline COCO models, plus a tiny model for tests.

Each preset is a full :class:`Config`, the published checkpoint (OpenMMLab model zoo, 2020-07-27,
mmpose 0.x key layout) and the COCO val2017 numbers published for it (detector boxes with human
AP 56.4, flip test on).
"""

from dataclasses import dataclass, field

from .config import RESNEXT_BLOCKS, CodecConfig, Config, ModelConfig, TrainConfig
from .errors import InputError

_ZOO = "https://download.openmmlab.com/mmpose/top_down/resnext/"


@dataclass(frozen=True)
class Preset:
    """A named model: its configuration, weights and published accuracy."""

    name: str
    config: Config
    weights_url: str | None  # None: no published weights (tests only)
    published: dict[str, float] = field(default_factory=dict)  # AP, AP50, AP75, AR, AR50


def _resnext(
    depth: int, input_size: tuple[int, int], sigma: float, batch: int, base_batch: int
) -> Config:
    """A published model; it was trained on 8 GPUs with ``batch`` crops each."""
    return Config(
        model=ModelConfig(blocks=RESNEXT_BLOCKS[depth], input_size=input_size),
        codec=CodecConfig(sigma=sigma),
        train=TrainConfig(batch_size=batch, base_batch_size=base_batch),
    )


def _published(ap: float, ap50: float, ap75: float, ar: float, ar50: float) -> dict[str, float]:
    return {"AP": ap, "AP50": ap50, "AP75": ap75, "AR": ar, "AR50": ar50}


_S256 = (192, 256)  # (w, h)
_S384 = (288, 384)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "resnext50_coco_256x192",
            _resnext(50, _S256, 2.0, 64, 512),
            _ZOO + "resnext50_coco_256x192-dcff15f6_20200727.pth",
            _published(0.715, 0.897, 0.791, 0.771, 0.935),
        ),
        Preset(
            "resnext50_coco_384x288",
            _resnext(50, _S384, 3.0, 64, 512),
            _ZOO + "resnext50_coco_384x288-412c848f_20200727.pth",
            _published(0.724, 0.899, 0.794, 0.777, 0.936),
        ),
        Preset(
            "resnext101_coco_256x192",
            _resnext(101, _S256, 2.0, 64, 512),
            _ZOO + "resnext101_coco_256x192-c7eba365_20200727.pth",
            _published(0.726, 0.900, 0.801, 0.781, 0.939),
        ),
        Preset(
            "resnext101_coco_384x288",
            _resnext(101, _S384, 3.0, 32, 256),
            _ZOO + "resnext101_coco_384x288-f5eabcd6_20200727.pth",
            _published(0.744, 0.903, 0.815, 0.794, 0.939),
        ),
        Preset(
            "resnext152_coco_256x192",
            _resnext(152, _S256, 2.0, 32, 512),
            _ZOO + "resnext152_coco_256x192-102449aa_20200727.pth",
            _published(0.730, 0.903, 0.808, 0.785, 0.940),
        ),
        Preset(
            "resnext152_coco_384x288",
            _resnext(152, _S384, 3.0, 48, 384),
            _ZOO + "resnext152_coco_384x288-806176df_20200727.pth",
            _published(0.742, 0.904, 0.810, 0.794, 0.940),
        ),
        # One block per stage, 8 groups, 32-channel deconvs, 64x96 input: milliseconds on a CPU.
        Preset(
            "tiny_coco_96x64",
            Config(
                model=ModelConfig(
                    blocks=(1, 1, 1, 1),
                    groups=8,
                    deconv_channels=32,
                    input_size=(64, 96),
                ),
                codec=CodecConfig(sigma=2.0),
            ),
            None,
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an :class:`InputError` lists the known names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(
            f"unknown model preset '{name}'; known presets: {', '.join(PRESETS)}"
        ) from None
