"""The networks: names and shapes equal the reference's manifests; output sizes; parameters."""

import json

import pytest
import torch
from conftest import ORACLE

from nextpose import PRESETS, PoseNet

PUBLISHED = [name for name, p in PRESETS.items() if p.weights_url]
# Parameter counts of the reference models (§5.3).
PARAMS = {50: 33_471_569, 101: 52_620_369, 152: 68_394_065}


@pytest.mark.parametrize("name", PUBLISHED)
def test_state_dict_equals_manifest(name):
    config = PRESETS[name].config.model
    with torch.device("meta"):
        model = PoseNet(config)
    manifest = json.loads((ORACLE / f"manifest_resnext{config.depth}.json").read_text())
    ours = [
        [k, list(v.shape), str(v.dtype).removeprefix("torch.")]
        for k, v in model.state_dict().items()
    ]
    assert ours == manifest
    assert sum(p.numel() for p in model.parameters()) == PARAMS[config.depth]


def test_six_published_presets():
    assert sorted(PUBLISHED) == sorted(
        f"resnext{d}_coco_{s}" for d in (50, 101, 152) for s in ("256x192", "384x288")
    )
    for name in PUBLISHED:
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


def test_head_init_is_small_normal():
    torch.manual_seed(0)
    model = PoseNet(PRESETS["tiny_coco_96x64"].config.model)
    w = model.head.final_layer.weight
    assert 0.0005 < w.std().item() < 0.002
    assert torch.all(model.head.final_layer.bias == 0)
