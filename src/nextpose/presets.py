"""The published SimpleBaseline COCO models (ResNeXt, ResNet, ResNet + DARK), plus a tiny model
for tests.

Each preset is a full :class:`Config`, the published checkpoint and the COCO val2017 numbers
published for it (detector boxes with human AP 56.4, flip test on):

* ResNeXt 32x4d: OpenMMLab model zoo, 2020-07-27 checkpoints (mmpose 0.x key layout).
* ResNet (``td-hm_res{50,101,152}_8xb{64,32}-210e_coco-*`` in mmpose 1.x): the table of
  mmpose's ``configs/body_2d_keypoint/topdown_heatmap/coco/resnet_coco.md`` (2022 checkpoints,
  1.x key layout). Its ResNet-101 384x288 row links the 256x192 file, so that preset takes the
  2020 checkpoint of the mmpose 0.x table ``configs/top_down/resnet/coco/resnet_coco.md``
  (``res101_coco_384x288-8c71bdc9``) and the numbers published for that file.
* ResNet + DARK (``td-hm_res*_dark-8xb*-210e_coco-*``): the table of
  ``configs/body_2d_keypoint/topdown_heatmap/coco/resnet_dark_coco.md``; unbiased targets and
  DARK decoding, blur kernel 11 except ResNet-152 384x288, whose config sets 17.
"""

from dataclasses import dataclass, field

from .config import (
    RESNEXT_BLOCKS,
    CodecConfig,
    Config,
    InferenceConfig,
    ModelConfig,
    TrainConfig,
)
from .errors import InputError

_ZOO = "https://download.openmmlab.com/mmpose/top_down/resnext/"
_ZOO_RESNET_2020 = "https://download.openmmlab.com/mmpose/top_down/resnet/"
_ZOO_V1 = "https://download.openmmlab.com/mmpose/v1/body_2d_keypoint/topdown_heatmap/coco/"


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


def _resnet(
    depth: int,
    input_size: tuple[int, int],
    sigma: float,
    batch: int,
    base_batch: int,
    dark: bool = False,
    blur_kernel_size: int = 11,
) -> Config:
    """A published ResNet model (groups 1, width 64), trained on 8 GPUs with ``batch`` crops
    each; ``dark``: unbiased targets and DARK decoding."""
    return Config(
        model=ModelConfig(
            blocks=RESNEXT_BLOCKS[depth], groups=1, width_per_group=64, input_size=input_size
        ),
        codec=CodecConfig(sigma=sigma, unbiased=dark, blur_kernel_size=blur_kernel_size),
        inference=InferenceConfig(decode="dark" if dark else "msra"),
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
        Preset(
            "resnet50_coco_256x192",
            _resnet(50, _S256, 2.0, 64, 512),
            _ZOO_V1 + "td-hm_res50_8xb64-210e_coco-256x192-04af38ce_20220923.pth",
            _published(0.718, 0.898, 0.796, 0.774, 0.934),
        ),
        Preset(
            "resnet50_coco_384x288",
            _resnet(50, _S384, 3.0, 64, 512),
            _ZOO_V1 + "td-hm_res50_8xb64-210e_coco-384x288-7b8db90e_20220923.pth",
            _published(0.731, 0.900, 0.799, 0.782, 0.937),
        ),
        Preset(
            "resnet101_coco_256x192",
            _resnet(101, _S256, 2.0, 64, 512),
            _ZOO_V1 + "td-hm_res101_8xb64-210e_coco-256x192-065d3625_20220926.pth",
            _published(0.728, 0.904, 0.809, 0.783, 0.942),
        ),
        Preset(
            "resnet101_coco_384x288",
            _resnet(101, _S384, 3.0, 32, 256),
            _ZOO_RESNET_2020 + "res101_coco_384x288-8c71bdc9_20200709.pth",
            _published(0.748, 0.905, 0.817, 0.798, 0.940),
        ),
        Preset(
            "resnet152_coco_256x192",
            _resnet(152, _S256, 2.0, 32, 512),
            _ZOO_V1 + "td-hm_res152_8xb32-210e_coco-256x192-0345f330_20220928.pth",
            _published(0.736, 0.904, 0.818, 0.791, 0.942),
        ),
        Preset(
            "resnet152_coco_384x288",
            _resnet(152, _S384, 3.0, 32, 512),
            _ZOO_V1 + "td-hm_res152_8xb32-210e_coco-384x288-7fbb906f_20220927.pth",
            _published(0.750, 0.908, 0.821, 0.800, 0.942),
        ),
        Preset(
            "resnet50_dark_coco_256x192",
            _resnet(50, _S256, 2.0, 64, 512, dark=True),
            _ZOO_V1 + "td-hm_res50_dark-8xb64-210e_coco-256x192-c129dcb6_20220926.pth",
            _published(0.724, 0.897, 0.797, 0.777, 0.934),
        ),
        Preset(
            "resnet50_dark_coco_384x288",
            _resnet(50, _S384, 3.0, 64, 512, dark=True),
            _ZOO_V1 + "td-hm_res50_dark-8xb64-210e_coco-384x288-8b90b538_20220926.pth",
            _published(0.735, 0.902, 0.801, 0.786, 0.938),
        ),
        Preset(
            "resnet101_dark_coco_256x192",
            _resnet(101, _S256, 2.0, 64, 512, dark=True),
            _ZOO_V1 + "td-hm_res101_dark-8xb64-210e_coco-256x192-528ec248_20220926.pth",
            _published(0.733, 0.900, 0.810, 0.786, 0.938),
        ),
        Preset(
            "resnet101_dark_coco_384x288",
            _resnet(101, _S384, 3.0, 64, 512, dark=True),
            _ZOO_V1 + "td-hm_res101_dark-8xb64-210e_coco-384x288-487d40a4_20220926.pth",
            _published(0.749, 0.905, 0.818, 0.799, 0.940),
        ),
        Preset(
            "resnet152_dark_coco_256x192",
            _resnet(152, _S256, 2.0, 32, 256, dark=True),
            _ZOO_V1 + "td-hm_res152_dark-8xb32-210e_coco-256x192-f754df5f_20221031.pth",
            _published(0.743, 0.906, 0.819, 0.796, 0.943),
        ),
        Preset(
            "resnet152_dark_coco_384x288",
            _resnet(152, _S384, 3.0, 32, 256, dark=True, blur_kernel_size=17),
            _ZOO_V1 + "td-hm_res152_dark-8xb32-210e_coco-384x288-329f8454_20221031.pth",
            _published(0.755, 0.907, 0.825, 0.805, 0.943),
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
