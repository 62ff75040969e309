"""Typed, frozen configuration. Sizes are (width, height) in pixels everywhere."""

import dataclasses
import difflib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .keypoints import COCO_KEYPOINTS, KeypointSet

# Bottleneck blocks per stage of the ResNeXt trunks (the same counts as ResNet-50/101/152).
RESNEXT_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}


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
    # The network sees (pixel - mean) / std per R, G, B channel: ImageNet statistics, 0-255.
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

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
        if not all(0 < s < math.inf for s in self.pixel_std) or not all(
            math.isfinite(m) for m in self.pixel_mean
        ):
            raise ConfigError(
                f"model.pixel_mean={self.pixel_mean}, model.pixel_std={self.pixel_std}: the mean "
                "must be finite and the std finite and > 0"
            )
        if self.num_deconv > 5:
            raise ConfigError(
                f"model.num_deconv={self.num_deconv}: at most 5 (each doubles the resolution; "
                "5 gives heatmaps of the input size)"
            )

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

    def __post_init__(self) -> None:
        if not 0 < self.sigma < math.inf:
            raise ConfigError(f"codec.sigma={self.sigma} must be a positive number")


@dataclass(frozen=True)
class InferenceConfig:
    """What a prediction is (test time); how it is run (batch size, device, backend) is a
    run-time option of :func:`nextpose.load`, not part of the model."""

    flip: bool = True  # average with the heatmaps of the mirrored crop
    padding: float = 1.25  # box -> crop enlargement

    def __post_init__(self) -> None:
        if not 0 < self.padding < math.inf:
            raise ConfigError(f"inference.padding={self.padding} must be > 0")


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation, applied in this order: flip, half body, box shift/scale/rotation."""

    flip_prob: float = 0.5  # horizontal flip (keypoints swap left/right)
    half_body_prob: float = 0.3  # crop to the upper or lower body
    half_body_min_keypoints: int = 9  # visible keypoints needed to consider a half-body crop
    half_body_min_upper: int = 2  # visible upper-body keypoints needed to choose the upper half
    half_body_min_lower: int = 3  # ... and lower-body keypoints for the lower half
    half_body_upper_prob: float = 0.7  # preference for the upper half when both qualify
    half_body_padding: float = 1.5  # half-body box = keypoint extent x this
    shift_factor: float = 0.16  # centre shift, fraction of the box size (truncated normal)
    shift_prob: float = 0.3
    scale_factor: tuple[float, float] = (0.5, 1.5)  # box scale range (truncated normal, mean 1)
    scale_prob: float = 1.0
    rotate_factor: float = 80.0  # rotation range, degrees (truncated normal)
    rotate_prob: float = 0.6

    def __post_init__(self) -> None:
        for name in ("flip_prob", "half_body_prob", "half_body_upper_prob", "shift_prob",
                     "scale_prob", "rotate_prob"):  # fmt: skip
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"data.augment.{name}={getattr(self, name)} must be in [0, 1]")
        lo, hi = self.scale_factor
        if not 0 < lo <= hi:
            raise ConfigError(f"data.augment.scale_factor={self.scale_factor}: need 0 < lo <= hi")


@dataclass(frozen=True)
class DataConfig:
    """How training samples are made."""

    padding: float = 1.25  # box -> crop enlargement
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0  # with the same seed, a run sees the same samples in the same order
    workers: int = 2  # data loading processes per device

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise ConfigError(f"data.workers={self.workers} must be >= 0")
        if self.padding <= 0:
            raise ConfigError(f"data.padding={self.padding} must be > 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam, linear warm-up, step decay (the published recipe by default)."""

    epochs: int = 210
    batch_size: int = 64  # per device
    lr: float = 5e-4  # Adam, for a total batch of base_batch_size when scale_lr is on
    warmup_iters: int = 500  # linear warm-up from lr * warmup_ratio, in iterations
    warmup_ratio: float = 0.001
    milestones: tuple[int, ...] = (170, 200)  # epochs after which lr *= gamma
    gamma: float = 0.1
    scale_lr: bool = False  # lr *= total batch / base_batch_size
    base_batch_size: int = 512
    val_interval: int = 10  # validate every N epochs (and after the last)
    log_interval: int = 50  # iterations between log lines
    amp: str = "none"  # "none", "bf16" or "fp16" (with loss scaling)
    channels_last: bool = False
    compile: bool = False  # torch.compile the network
    sync_bn: bool = False  # batch statistics across devices (DDP, CUDA only)
    freeze_bn: bool = False  # BatchNorm uses its running statistics (fine-tuning small batches)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "base_batch_size", "val_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"train.lr={self.lr} must be > 0")
        if self.warmup_iters < 0 or not 0 < self.warmup_ratio <= 1:
            raise ConfigError("train.warmup_iters must be >= 0 and warmup_ratio in (0, 1]")
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp='{self.amp}' must be 'none', 'bf16' or 'fp16'")
        if list(self.milestones) != sorted(self.milestones):
            raise ConfigError(f"train.milestones={self.milestones} must be increasing")


@dataclass(frozen=True)
class Config:
    """Everything that defines a model, how it is trained and how it is run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    keypoints: KeypointSet = COCO_KEYPOINTS

    def __post_init__(self) -> None:
        if self.keypoints.num_keypoints != self.model.num_keypoints:
            raise ConfigError(
                f"model.num_keypoints={self.model.num_keypoints} but the keypoint set has "
                f"{self.keypoints.num_keypoints} keypoints"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        """From :meth:`to_dict`'s layout; keys written by older versions that are now run-time
        options (``inference.batch_size``) are ignored."""
        if isinstance(data, dict) and isinstance(data.get("inference"), dict):
            data = {**data, "inference": dict(data["inference"])}
            data["inference"].pop("batch_size", None)
        return _build(cls, data, "")

    def to_toml(self) -> str:
        """The full configuration as TOML, one table per section."""
        lines: list[str] = []
        _toml_table(self.to_dict(), "", lines)
        return "\n".join(lines).strip() + "\n"

    @classmethod
    def from_toml(cls, path: str | Path) -> "Config":
        """Read a TOML file; missing keys keep their defaults, unknown keys are errors."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config file ({e.strerror or e})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def override(self, assignments: list[str]) -> "Config":
        """A copy with ``section.key=value`` assignments applied (values in TOML syntax).

        Example: ``config.override(["train.lr=1e-3", "data.augment.flip_prob=0"])``.
        """
        data = self.to_dict()
        for item in assignments:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--set '{item}': expected section.key=value")
            path = key.strip().split(".")
            try:
                value = tomllib.loads(f"v = {text.strip()}")["v"]
            except tomllib.TOMLDecodeError:
                value = text.strip()  # a bare word: take it as a string
            node = data
            for i, part in enumerate(path[:-1]):
                if not isinstance(node.get(part), dict):
                    return self._unknown(".".join(path[: i + 1]), node)
                node = node[part]
            if path[-1] not in node:
                return self._unknown(key.strip(), node)
            node[path[-1]] = value
        return Config.from_dict(data)

    @staticmethod
    def _unknown(key: str, node: dict) -> "Config":
        parent, _, name = key.rpartition(".")
        hint = difflib.get_close_matches(name, list(node), n=1)
        suggestion = f"; did you mean '{parent + '.' if parent else ''}{hint[0]}'?" if hint else ""
        raise ConfigError(f"unknown config key '{key}'{suggestion}")


def _toml_table(data: dict[str, Any], prefix: str, lines: list[str]) -> None:
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    if scalars:
        if prefix:
            lines.append(f"\n[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in data.items():
        if isinstance(value, dict):
            _toml_table(value, f"{prefix}.{key}" if prefix else key, lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


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
            full = f"{where}.{hint[0]}" if hint and where else (hint[0] if hint else "")
            suggestion = f"; did you mean '{full}'?" if hint else ""
            raise ConfigError(f"unknown config key '{path}'{suggestion}")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:  # a nested dataclass's own validation
        raise ConfigError(f"{where or 'config'}: {e}") from None


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
