"""Configuration: round trip through plain data, unknown keys, wrong types, impossible values."""

import pytest

from nextpose import PRESETS, Config, ConfigError, InferenceConfig, ModelConfig


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip(name):
    config = PRESETS[name].config
    assert Config.from_dict(config.to_dict()) == config


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model\.input_sise'; did you mean 'input_size'"
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
    with pytest.raises(ConfigError, match="batch_size=0"):
        InferenceConfig(batch_size=0)
