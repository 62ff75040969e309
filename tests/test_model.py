"""The networks: names and shapes equal the reference's manifests; output sizes; parameters."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import ORACLE

from nextpose import PRESETS, PoseNet

PUBLISHED = [name for name, p in PRESETS.items() if p.weights_url]
RESNEXT = [name for name in PUBLISHED if name.startswith("resnext")]
# Parameter counts of the reference models (§5.3; ResNet: summed from the manifests).
PARAMS = {
    "resnext": {50: 33_471_569, 101: 52_620_369, 152: 68_394_065},
    "resnet": {50: 33_999_697, 101: 52_991_825, 152: 68_635_473},
}


def _family(name: str) -> str:
    return "resnext" if name.startswith("resnext") else "resnet"


@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_equals_manifest(name):
    config = PRESETS[name].config.model
    with torch.device("meta"):
        model = PoseNet(config)
    family = _family(name)
    manifest = json.loads((ORACLE / f"manifest_{family}{config.depth}.json").read_text())
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == manifest
    assert sum(p.numel() for p in model.parameters()) == PARAMS[family][config.depth]
    shapes = dict(model.state_dict())
    groups = 32 if family == "resnext" else 1
    assert model.backbone.layer1[0].conv2.groups == groups
    assert list(shapes["backbone.layer1.0.conv2.weight"].shape) == (
        [128, 4, 3, 3] if family == "resnext" else [64, 64, 3, 3]
    )


def test_twelve_resnet_presets():
    names = sorted(n for n in PUBLISHED if _family(n) == "resnet")
    assert names == sorted(
        f"resnet{d}{dark}_coco_{s}"
        for d in (50, 101, 152)
        for s in ("256x192", "384x288")
        for dark in ("", "_dark")
    )
    for name in names:
        preset = PRESETS[name]
        h, w = (int(v) for v in name.rsplit("_", 1)[1].split("x"))
        dark = "_dark" in name
        assert preset.config.model.input_size == (w, h)
        assert preset.config.codec.sigma == (2.0 if h == 256 else 3.0)
        assert preset.config.codec.unbiased is dark
        assert preset.config.inference.decode == ("dark" if dark else "msra")
        assert set(preset.published) == {"AP", "AP50", "AP75", "AR", "AR50"}
        # The checkpoint is the one for this depth, input size and target kind.
        depth = name.split("_")[0].removeprefix("resnet")
        file = preset.weights_url.rsplit("/", 1)[1]
        assert file.startswith((f"td-hm_res{depth}{'_dark-' if dark else '_'}8xb",
                                f"res{depth}_coco_"))  # fmt: skip
        assert f"{h}x{w}" in file
    # ResNet-152 384x288 DARK's config sets a 17-pixel blur; the others keep OpenCV's 11.
    kernels = {n: PRESETS[n].config.codec.blur_kernel_size for n in names if "_dark" in n}
    assert kernels.pop("resnet152_dark_coco_384x288") == 17
    assert set(kernels.values()) == {11}
    assert PRESETS["resnet152_coco_384x288"].published["AP"] == 0.750
    assert PRESETS["resnet152_dark_coco_384x288"].published["AP"] == 0.755


def test_six_resnext_presets():
    assert sorted(RESNEXT) == sorted(
        f"resnext{d}_coco_{s}" for d in (50, 101, 152) for s in ("256x192", "384x288")
    )
    for name in RESNEXT:
        preset = PRESETS[name]
        h, w = (int(v) for v in name.rsplit("_", 1)[1].split("x"))
        assert preset.config.model.input_size == (w, h)
        assert preset.config.model.heatmap_size == (w // 4, h // 4)
        assert preset.config.codec.sigma == (2.0 if h == 256 else 3.0)
        assert preset.weights_url.startswith(
            "https://download.openmmlab.com/mmpose/top_down/resnext/"
        )
        assert set(preset.published) == {"AP", "AP50", "AP75", "AR", "AR50"}
    assert PRESETS["resnext101_coco_384x288"].published["AP"] == 0.744


@pytest.mark.parametrize("name", ["tiny_coco_96x64", "resnext50_coco_384x288"])
def test_output_is_quarter_resolution(name):
    config = PRESETS[name].config.model
    with torch.device("meta"):
        model = PoseNet(config).eval()
        out = model(torch.zeros(2, 3, config.input_size[1], config.input_size[0]))
    w, h = config.heatmap_size
    assert tuple(out.shape) == (2, config.num_keypoints, h, w)
    assert config.heatmap_stride == 4 == config.input_size[0] / w


@pytest.mark.parametrize("num_deconv", [1, 2, 4, 5])
def test_heatmap_size_and_stride_follow_the_deconvolutions(num_deconv):
    config = replace(PRESETS["tiny_coco_96x64"].config.model, num_deconv=num_deconv)
    with torch.device("meta"):
        out = PoseNet(config).eval()(torch.zeros(1, 3, config.input_size[1], config.input_size[0]))
    w, h = config.heatmap_size
    assert tuple(out.shape[2:]) == (h, w)
    assert config.heatmap_stride == 2 ** (5 - num_deconv) == config.input_size[1] / h


def test_head_init_is_small_normal():
    torch.manual_seed(0)
    model = PoseNet(PRESETS["tiny_coco_96x64"].config.model)
    w = model.head.final_layer.weight
    assert 0.0005 < w.std().item() < 0.002
    assert torch.all(model.head.final_layer.bias == 0)


@pytest.mark.parametrize("groups,width", [(32, 4), (1, 64)])
def test_trunk_computes_what_torchvisions_resnext_does(groups, width):
    """The trunk is written here (importing torchvision costs every process 2.4 s): with the same
    weights it gives torchvision's ResNet/ResNeXt stage-4 features bit for bit, in training
    mode too (batch statistics), and names its parameters as torchvision does."""
    from torchvision.models.resnet import Bottleneck, ResNet

    from nextpose.model import ResNeXt

    torch.manual_seed(0)
    ours = ResNeXt((2, 1, 2, 1), groups, width)
    theirs = ResNet(Bottleneck, [2, 1, 2, 1], groups=groups, width_per_group=width)
    for bn in (m for m in ours.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)  # not the identity: BatchNorm is used
        torch.nn.init.normal_(bn.bias)
        torch.nn.init.uniform_(bn.running_var, 0.5, 2.0)
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert ours.out_channels == theirs.fc.in_features
    features = torch.nn.Sequential(*list(theirs.children())[:-2])  # without avgpool and fc
    x = torch.randn(2, 3, 64, 48)
    for train in (False, True):
        ours.train(train)
        features.train(train)
        assert torch.equal(ours(x), features(x))
