"""The learning-rate schedule and ImageNet initialisation of the trunk."""

from collections import OrderedDict

import pytest
import torch

from nextpose import checkpoint, get_preset
from nextpose.config import TrainConfig
from nextpose.model import PoseNet
from nextpose.model.backbone import Bottleneck
from nextpose.training import build_model
from nextpose.training.optim import base_lr, lr_at
from nextpose.training.pretrained import backbone_state, load_pretrained_backbone, resolve_source


def test_warmup_matches_the_reference_formula():
    cfg = TrainConfig()  # 5e-4, warm-up 500 from 0.001, milestones 170/200
    for i in (0, 1, 250, 499):
        assert lr_at(cfg, i, 0) == pytest.approx(5e-4 * (0.001 + 0.999 * i / 499), rel=1e-12)
    assert lr_at(cfg, 500, 0) == lr_at(cfg, 10_000, 5) == pytest.approx(5e-4)


def test_step_decay_at_milestones():
    cfg = TrainConfig()
    assert lr_at(cfg, 10**6, 169) == pytest.approx(5e-4)
    assert lr_at(cfg, 10**6, 170) == pytest.approx(5e-5)
    assert lr_at(cfg, 10**6, 199) == pytest.approx(5e-5)
    assert lr_at(cfg, 10**6, 200) == pytest.approx(5e-6)


def test_linear_scaling_to_the_total_batch():
    cfg = TrainConfig(batch_size=32, scale_lr=True, base_batch_size=512)
    assert base_lr(cfg, world_size=4) == pytest.approx(5e-4 * 128 / 512)
    assert base_lr(TrainConfig(batch_size=32), world_size=4) == 5e-4  # off by default


def _tiny_trunk_state(prefix: str, extra: dict) -> OrderedDict:
    model = PoseNet(get_preset("tiny_coco_96x64").config.model)
    state = OrderedDict((prefix + k, v.clone()) for k, v in model.backbone.state_dict().items())
    state.update(extra)
    return state


@pytest.mark.parametrize(
    "layout",
    [("backbone.", {"head.fc.weight": torch.zeros(1000, 2048)}),  # OpenMMLab classification
     ("", {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})],  # torchvision
)  # fmt: skip
def test_classification_checkpoints_fill_the_trunk(layout, tmp_path):
    state = _tiny_trunk_state(*layout)
    path = tmp_path / "imagenet.pth"
    checkpoint.save(path, {"state_dict": state} if layout[0] else state)
    config = get_preset("tiny_coco_96x64").config.model
    model = PoseNet(config)
    assert load_pretrained_backbone(model.backbone, str(path), config) == str(path)
    key = "layer4.0.conv2.weight"
    assert torch.equal(model.backbone.state_dict()[key], state[layout[0] + key])
    assert list(backbone_state({"state_dict": state})) == list(model.backbone.state_dict())


def test_a_trunk_from_scratch_starts_each_block_as_the_identity(tmp_path):
    """As the reference's ResNet without pretrained weights: the last BN of every residual branch
    starts at 0; a loaded trunk keeps its own values there."""
    config = get_preset("tiny_coco_96x64").config
    model, loaded = build_model(config, "cpu", "none")
    blocks = [m for m in model.backbone.modules() if isinstance(m, Bottleneck)]
    assert loaded is None and len(blocks) == 4
    assert all(torch.all(b.bn3.weight == 0) and torch.all(b.bn2.weight == 1) for b in blocks)
    state = _tiny_trunk_state("backbone.", {})
    path = tmp_path / "imagenet.pth"
    checkpoint.save(path, {"state_dict": state})
    model, loaded = build_model(config, "cpu", str(path))
    key = "layer1.0.bn3.weight"
    assert loaded == str(path) and torch.all(state["backbone." + key] == 1)
    assert torch.equal(model.backbone.state_dict()[key], state["backbone." + key])


def test_wrong_trunk_is_refused(tmp_path):
    state = _tiny_trunk_state("backbone.", {})
    del state["backbone.layer2.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    checkpoint.save(path, {"state_dict": state})
    config = get_preset("tiny_coco_96x64").config.model
    with pytest.raises(checkpoint.CheckpointError, match=r"missing keys: layer2\.0\.conv1\.weight"):
        load_pretrained_backbone(PoseNet(config).backbone, str(path), config)


def test_named_sources():
    r50 = get_preset("resnext50_coco_256x192").config.model
    r101 = get_preset("resnext101_coco_384x288").config.model
    assert resolve_source("imagenet", r101).endswith(
        "resnext101_32x4d_batch256_imagenet_20200708-87f2d1c9.pth"
    )
    assert resolve_source("imagenet-2021", r50).endswith("20210429-56066e27.pth")
    assert "resnext50_32x4d" in resolve_source("torchvision", r50)
    with pytest.raises(ValueError, match="torchvision ships ResNeXt-50 32x4d only"):
        resolve_source("torchvision", r101)
    tiny = get_preset("tiny_coco_96x64").config.model
    with pytest.raises(ValueError, match="custom"):
        resolve_source("imagenet", tiny)
    assert resolve_source("none", tiny) is None


def test_resnet_presets_start_from_torchvision_resnets():
    for depth in (50, 101, 152):
        model = get_preset(f"resnet{depth}_dark_coco_256x192").config.model
        for source in ("imagenet", "torchvision"):
            url = resolve_source(source, model)
            assert url.rsplit("/", 1)[1].startswith(f"resnet{depth}-"), url
    r50 = get_preset("resnet50_coco_256x192").config.model
    assert resolve_source("torchvision", r50).endswith("resnet50-0676ba61.pth")  # V1
    with pytest.raises(ValueError, match="ResNeXt-50/101/152 32x4d only"):
        resolve_source("imagenet-2021", r50)
