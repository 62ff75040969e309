"""Configuration: round trip through plain data, unknown keys, wrong types, impossible values."""

import json
from dataclasses import replace

import pytest
import torch

from nextpose import PRESETS, Config, ConfigError, InferenceConfig, ModelConfig
from nextpose.cli import main
from nextpose.keypoints import load_keypoint_set
from nextpose.model import PoseNet


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip(name):
    config = PRESETS[name].config
    assert Config.from_dict(config.to_dict()) == config


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError,
        match=r"unknown config key 'model\.input_sise'; did you mean 'model\.input_size'",
    ):
        Config.from_dict({"model": {"input_sise": [192, 256]}})


def test_wrong_types_are_rejected():
    with pytest.raises(ConfigError, match=r"inference\.flip: expected bool"):
        Config.from_dict({"inference": {"flip": "yes"}})
    with pytest.raises(ConfigError, match=r"model\.input_size: expected 2 values"):
        Config.from_dict({"model": {"input_size": [192]}})


def test_impossible_values():
    with pytest.raises(ConfigError, match="multiples of 32"):
        ModelConfig(input_size=(190, 256))
    with pytest.raises(ConfigError, match="padding=0"):
        InferenceConfig(padding=0)


def test_run_time_options_are_not_part_of_the_model():
    """The batch size is an option of the run: not in the config, ignored in old checkpoints."""
    assert "batch_size" not in Config().to_dict()["inference"]
    old = Config().to_dict()
    old["inference"]["batch_size"] = 32  # as nextpose 0.1 saved it
    assert Config.from_dict(old) == Config()
    with pytest.raises(ConfigError, match=r"unknown config key 'inference\.batch_size'"):
        Config().override(["inference.batch_size=8"])


@pytest.mark.parametrize("name", ["resnext101_coco_384x288", "tiny_coco_96x64"])
def test_toml_round_trip(name, tmp_path):
    config = PRESETS[name].config
    path = tmp_path / "config.toml"
    path.write_text(config.to_toml())
    assert Config.from_toml(path) == config


def test_toml_keeps_defaults_and_names_the_file(tmp_path):
    path = tmp_path / "partial.toml"
    path.write_text("[train]\nlr = 1e-3\n")
    assert Config.from_toml(path) == replace(Config(), train=replace(Config().train, lr=1e-3))
    path.write_text("[train]\nlr = -1.0\n")
    with pytest.raises(ConfigError, match=r"partial\.toml: .*lr"):
        Config.from_toml(path)
    path.write_text("[train\n")
    with pytest.raises(ConfigError, match=r"partial\.toml: not valid TOML"):
        Config.from_toml(path)


def test_override_sets_nested_values_in_toml_syntax():
    config = Config().override(
        ["train.lr=2e-4", "train.milestones=[5, 8]", "data.augment.flip_prob=0", "train.amp=bf16"]
    )
    assert config.train.lr == 2e-4 and config.train.milestones == (5, 8)
    assert config.data.augment.flip_prob == 0.0 and config.train.amp == "bf16"
    unknown = r"unknown config key 'train\.lrr'; did you mean 'train\.lr'"
    with pytest.raises(ConfigError, match=unknown):
        Config().override(["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        Config().override(["train.lr"])


def test_custom_keypoint_set_by_name(tmp_path):
    meta = {
        "names": ["head", "left_paw", "right_paw", "tail"],
        "sigmas": [0.05, 0.08, 0.08, 0.1],
        "flip_pairs": [["left_paw", "right_paw"]],
        "skeleton": [["head", "tail"], [1, 2]],
        "upper_body": ["head", "left_paw", "right_paw"],
    }
    path = tmp_path / "animal.json"
    path.write_text(json.dumps(meta))
    kset = load_keypoint_set(path)
    assert kset.num_keypoints == 4 and kset.flip_indices == (0, 2, 1, 3)
    assert kset.skeleton == ((0, 3), (1, 2)) and kset.upper_body == (0, 1, 2)
    meta["flip_pairs"] = [["left_paw", "right_wing"]]
    path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"animal\.json: .*unknown keypoint name 'right_wing'"):
        load_keypoint_set(path)


def test_config_command_prints_a_readable_config_with_the_custom_head(tmp_path, capsys):
    path = tmp_path / "three.toml"
    path.write_text('names = ["a", "b", "c"]\nsigmas = [0.1, 0.1, 0.1]\nflip_pairs = [[0, 2]]\n')
    assert (
        main(["config", "tiny_coco_96x64", "--keypoints", str(path), "--set", "train.lr=3e-4"]) == 0
    )
    out = tmp_path / "resolved.toml"
    out.write_text(capsys.readouterr().out)
    config = Config.from_toml(out)
    assert config.model.num_keypoints == 3 and config.keypoints.flip_indices == (2, 1, 0)
    assert config.train.lr == 3e-4
    assert PoseNet(config.model)(torch.zeros(1, 3, 96, 64)).shape == (1, 3, 24, 16)


def test_a_table_set_on_a_section_changes_only_its_keys():
    tiny = PRESETS["tiny_coco_96x64"].config
    merged = tiny.override(["model={groups=8}", "data={augment={flip_prob=0.0}}"])
    assert merged == tiny.override(["model.groups=8", "data.augment.flip_prob=0.0"])
    assert merged.model.blocks == tiny.model.blocks and merged.model.input_size == (64, 96)
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.grups'"):
        tiny.override(["model={grups=8}"])


# Per-GPU batch and auto_scale_lr base of each reference config (mmpose 1.3.2's
# td-hm_{resnext,res}*-210e_coco-*.py): the learning rate train.scale_lr gives follows them.
REFERENCE_BATCHES = {
    "resnext50_coco_256x192": (64, 512), "resnext50_coco_384x288": (64, 512),
    "resnext101_coco_256x192": (64, 512), "resnext101_coco_384x288": (32, 256),
    "resnext152_coco_256x192": (32, 512), "resnext152_coco_384x288": (48, 384),
    "resnet50_coco_256x192": (64, 512), "resnet50_coco_384x288": (64, 512),
    "resnet101_coco_256x192": (64, 512), "resnet101_coco_384x288": (32, 256),
    "resnet152_coco_256x192": (32, 512), "resnet152_coco_384x288": (32, 512),
    "resnet50_dark_coco_256x192": (64, 512), "resnet50_dark_coco_384x288": (64, 512),
    "resnet101_dark_coco_256x192": (64, 512), "resnet101_dark_coco_384x288": (64, 512),
    "resnet152_dark_coco_256x192": (32, 256), "resnet152_dark_coco_384x288": (32, 256),
}  # fmt: skip


def test_presets_train_with_the_reference_batches():
    got = {
        name: (p.config.train.batch_size, p.config.train.base_batch_size)
        for name, p in PRESETS.items()
        if name != "tiny_coco_96x64"  # no reference config
    }
    assert got == REFERENCE_BATCHES


def test_lists_given_from_python_become_tuples():
    """A frozen config built with lists is immutable, hashable and equal to the same config
    built with tuples; so is a keypoint set (a model of it fits its config)."""
    from dataclasses import asdict, fields

    from nextpose import PoseEstimator, get_preset
    from nextpose.config import AugmentConfig, TrainConfig
    from nextpose.keypoints import COCO_KEYPOINTS, KeypointSet

    model = ModelConfig(blocks=[1, 1, 1, 1], input_size=[64, 96], width_per_group=1, groups=2,
                        deconv_channels=8, pixel_mean=[1.0, 2.0, 3.0])  # fmt: skip
    tuples = ModelConfig(blocks=(1, 1, 1, 1), input_size=(64, 96), width_per_group=1, groups=2,
                         deconv_channels=8, pixel_mean=(1.0, 2.0, 3.0))  # fmt: skip
    assert model == tuples and hash(model) == hash(tuples)
    assert all(type(getattr(model, f.name)) is type(getattr(tuples, f.name)) for f in fields(model))
    assert TrainConfig(milestones=[1, 2]).milestones == (1, 2)
    assert AugmentConfig(scale_factor=[0.7, 1.3]).scale_factor == (0.7, 1.3)

    lists = {k: [list(v) if isinstance(v, tuple) else v for v in vs] for k, vs in
             asdict(COCO_KEYPOINTS).items()}  # fmt: skip
    keypoints = KeypointSet(**lists)
    assert keypoints == COCO_KEYPOINTS and hash(keypoints) == hash(COCO_KEYPOINTS)
    assert isinstance(keypoints.skeleton[0], tuple)

    config = replace(get_preset("tiny_coco_96x64").config, model=tuples)
    listed = replace(config, model=model)
    PoseEstimator(PoseNet(model), config)  # fits: (1, 1, 1, 1) == [1, 1, 1, 1]
    PoseEstimator(PoseNet(tuples), listed)
