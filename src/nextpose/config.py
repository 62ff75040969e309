"""Typed, frozen configuration. Sizes are (width, height) in pixels everywhere."""

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any

# Bottleneck blocks per stage of the ResNeXt trunks (the same counts as ResNet-50/101/152).
RESNEXT_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or impossible."""


@dataclass(frozen=True)
class ModelConfig:
    """The network: a ResNeXt trunk and a SimpleBaseline deconvolution head."""

    blocks: tuple[int, int, int, int] = RESNEXT_BLOCKS[50]  # bottlenecks per stage
    groups: int = 32  # cardinality of the grouped 3x3 convolutions
    width_per_group: int = 4  # channels per group in the first stage ("32x4d")
    deconv_channels: int = 256  # width of each of the 3 transposed convolutions
    num_deconv: int = 3  # each doubles the resolution: heatmap = input / 32 * 2^3
    num_keypoints: int = 17
    input_size: tuple[int, int] = (192, 256)  # (w, h) of the network input crop, pixels

    def __post_init__(self) -> None:
        w, h = self.input_size
        if w <= 0 or h <= 0 or w % 32 or h % 32:
            raise ConfigError(
                f"model.input_size={self.input_size}: width and height must be positive "
                "multiples of 32 (the trunk downsamples by 32)"
            )
        if any(b < 1 for b in self.blocks) or len(self.blocks) != 4:
            raise ConfigError(f"model.blocks={self.blocks}: need 4 stages of at least 1 block")
        for name in ("groups", "width_per_group", "deconv_channels", "num_deconv", "num_keypoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}={getattr(self, name)} must be >= 1")

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(w, h) of the output heatmaps."""
        stride = 32 // 2**self.num_deconv
        return self.input_size[0] // stride, self.input_size[1] // stride

    @property
    def depth(self) -> int | None:
        """50/101/152 for the published trunks, None for custom block counts."""
        return next((d for d, b in RESNEXT_BLOCKS.items() if b == tuple(self.blocks)), None)


@dataclass(frozen=True)
class CodecConfig:
    """Keypoints <-> heatmaps (MSRA Gaussian targets, argmax + quarter-pixel decoding)."""

    sigma: float = 2.0  # Gaussian std of training targets, heatmap pixels (3 at 384x288)


@dataclass(frozen=True)
class InferenceConfig:
    """How predictions are made (test time)."""

    flip: bool = True  # average with the heatmaps of the mirrored crop
    padding: float = 1.25  # box -> crop enlargement
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"inference.batch_size={self.batch_size} must be >= 1")
        if self.padding <= 0:
            raise ConfigError(f"inference.padding={self.padding} must be > 0")


@dataclass(frozen=True)
class Config:
    """Everything that defines a model and how it is run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return _build(cls, data, "")


def _build(cls: type, data: Any, where: str) -> Any:
    """Recursively build dataclass ``cls`` from plain data, rejecting unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a table, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            hint = difflib.get_close_matches(key, fields, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown config key '{path}'{suggestion}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    origin = typing.get_origin(tp)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, path) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, path) for a, v in zip(args, value, strict=True))
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
        return _coerce(tp, value, path)
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {value!r}")
