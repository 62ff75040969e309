"""Typed, frozen configuration. Sizes are (width, height) in pixels everywhere."""

import dataclasses
import difflib
import json
import math
import reprlib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .keypoints import COCO_KEYPOINTS, KeypointSet

# Bottleneck blocks per stage of the ResNeXt and ResNet trunks (the same counts for both).
RESNEXT_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

# How heatmaps become keypoints: "msra" (argmax + quarter-pixel step, §6.3) or "dark"
# (distribution-aware Taylor step on the blurred log-heatmap, §10.1).
DECODINGS: tuple[str, ...] = ("msra", "dark")

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


_TOO_DEEP = "values nested too deeply (a config holds tables and lists a few levels deep)"


def _short(value: Any) -> str:
    """``repr`` of a user's value, cut short: a 5,000-deep list must not break a message."""
    return _SHORT.repr(value)


def _interval(low: float, high: float | None, low_open: bool) -> str:
    def text(x: float) -> str:
        return str(x) if isinstance(x, int) else f"{x:g}"

    if high is None:
        return f"{'>' if low_open else '>='} {text(low)}"
    return f"in {'(' if low_open else '['}{text(low)}, {text(high)}]"


def _tuples(obj: Any) -> None:
    """Make the list values of ``obj``'s tuple fields tuples (a frozen config given
    ``blocks=[3, 4, 6, 3]`` must still be immutable, hashable and equal to its preset's)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, list):
            object.__setattr__(obj, f.name, tuple(value))


def _check_number(
    key: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    integer: bool = False,
) -> None:
    """Refuse ``value`` unless it is a number (an int where ``integer``), finite, and in
    ``[low, high]`` (``(low, high]`` where ``low_open``); the message names ``key``."""
    interval = _interval(low, high, low_open)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"{key}={_short(value)} must be {kind} {interval}")
    if not integer and not math.isfinite(value):
        raise ConfigError(f"{key}={value} must be a finite number {interval}")
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        kind = "" if integer else "a finite number "
        raise ConfigError(f"{key}={value} must be {kind}{interval}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: a ResNeXt trunk (``groups=1, width_per_group=64``: ResNet) and a
    SimpleBaseline deconvolution head."""

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
        _tuples(self)
        if any(isinstance(v, bool) or not isinstance(v, int) for v in self.input_size):
            raise ConfigError(f"model.input_size={_short(self.input_size)} must be 2 integers")
        w, h = self.input_size
        if not 0 < w <= 16384 or not 0 < h <= 16384 or w % 32 or h % 32:
            raise ConfigError(
                f"model.input_size={self.input_size}: width and height must be positive "
                "multiples of 32 (the trunk downsamples by 32), at most 16384"
            )
        if len(self.blocks) != 4 or any(
            isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1000 for b in self.blocks
        ):
            raise ConfigError(
                f"model.blocks={_short(self.blocks)}: need 4 stages of 1 to 1000 blocks"
            )
        for name in ("groups", "width_per_group", "deconv_channels", "num_deconv", "num_keypoints"):
            _check_number(f"model.{name}", getattr(self, name), 1, 1 << 16, integer=True)
        for name in ("pixel_mean", "pixel_std"):
            for i, value in enumerate(getattr(self, name)):
                low = 0 if name == "pixel_std" else -1e6
                _check_number(f"model.{name}[{i}]", value, low, 1e6, low_open=name == "pixel_std")
        if self.num_deconv > 5:
            raise ConfigError(
                f"model.num_deconv={self.num_deconv}: at most 5 (each doubles the resolution; "
                "5 gives heatmaps of the input size)"
            )

    @property
    def heatmap_stride(self) -> int:
        """Crop pixels per heatmap pixel: 32 / 2^num_deconv (4 for the published models), a
        power of two, so heatmap -> crop pixels is exact in any float type."""
        return 32 // 2**self.num_deconv

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(w, h) of the output heatmaps."""
        return self.input_size[0] // self.heatmap_stride, self.input_size[1] // self.heatmap_stride

    @property
    def depth(self) -> int | None:
        """50/101/152 for the published trunks, None for custom block counts."""
        return next((d for d, b in RESNEXT_BLOCKS.items() if b == tuple(self.blocks)), None)


@dataclass(frozen=True)
class CodecConfig:
    """Keypoints <-> heatmaps: MSRA Gaussian training targets (``unbiased``: DARK's sub-pixel
    centres, §10.1) and the blur of DARK decoding."""

    sigma: float = 2.0  # Gaussian std of training targets, heatmap pixels (3 at 384x288)
    unbiased: bool = False  # targets centred at the sub-pixel keypoint (DARK), not rounded
    blur_kernel_size: int = 11  # DARK decoding's Gaussian modulation, odd, heatmap pixels

    def __post_init__(self) -> None:
        # The target's Gaussian patch is (6 sigma + 1)^2: beyond 100 heatmap pixels it is no
        # keypoint target, and it grows to gigabytes.
        _check_number("codec.sigma", self.sigma, 0, 100, low_open=True)
        if not isinstance(self.unbiased, bool):
            raise ConfigError(f"codec.unbiased={_short(self.unbiased)} must be true or false")
        _check_number("codec.blur_kernel_size", self.blur_kernel_size, 1, 255, integer=True)
        if self.blur_kernel_size % 2 == 0:
            raise ConfigError(f"codec.blur_kernel_size={self.blur_kernel_size} must be odd")


@dataclass(frozen=True)
class InferenceConfig:
    """What a prediction is (test time); how it is run (batch size, device, backend) is a
    run-time option of :func:`nextpose.load`, not part of the model."""

    flip: bool = True  # average with the heatmaps of the mirrored crop
    padding: float = 1.25  # box -> crop enlargement
    decode: str = "msra"  # "msra" (argmax + quarter pixel) or "dark" (Taylor step, §10.1)

    def __post_init__(self) -> None:
        _check_number("inference.padding", self.padding, 0, 100, low_open=True)
        check_decode(self.decode, "inference.decode")


def check_decode(decode: object, name: str = "decode") -> str:
    """``decode`` if it is one of :data:`DECODINGS`; a :class:`ConfigError` naming ``name``."""
    if decode not in DECODINGS:
        raise ConfigError(f"{name}={_short(decode)} must be one of {', '.join(DECODINGS)}")
    return decode  # type: ignore[return-value]


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
        _tuples(self)
        for name in ("flip_prob", "half_body_prob", "half_body_upper_prob", "shift_prob",
                     "scale_prob", "rotate_prob"):  # fmt: skip
            _check_number(f"data.augment.{name}", getattr(self, name), 0, 1)
        for name in ("half_body_min_keypoints", "half_body_min_upper", "half_body_min_lower"):
            _check_number(f"data.augment.{name}", getattr(self, name), 0, integer=True)
        _check_number("data.augment.half_body_padding", self.half_body_padding, 0, 100,
                      low_open=True)  # fmt: skip
        _check_number("data.augment.shift_factor", self.shift_factor, 0, 10)
        _check_number("data.augment.rotate_factor", self.rotate_factor, 0, 360)
        for i, factor in enumerate(self.scale_factor):
            _check_number(f"data.augment.scale_factor[{i}]", factor, 0, 100, low_open=True)
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
    # How they start: forkserver or spawn start clean processes (fork copies a process that
    # runs threads: deadlocks possible, deprecated in Python 3.12+); fork starts fastest.
    start_method: str = "forkserver"

    def __post_init__(self) -> None:
        _check_number("data.workers", self.workers, 0, 1024, integer=True)
        if self.start_method not in ("forkserver", "spawn", "fork"):
            raise ConfigError(
                f"data.start_method={_short(self.start_method)} must be 'forkserver', 'spawn' "
                "or 'fork'"
            )
        _check_number("data.padding", self.padding, 0, 100, low_open=True)
        # numpy's generators take seeds >= 0; torch.manual_seed takes up to 2**64 - 1
        _check_number("data.seed", self.seed, 0, 2**63 - 1, integer=True)


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
        _tuples(self)
        for name in ("epochs", "batch_size", "base_batch_size", "val_interval", "log_interval"):
            _check_number(f"train.{name}", getattr(self, name), 1, integer=True)
        _check_number("train.lr", self.lr, 0, 1e3, low_open=True)
        _check_number("train.warmup_iters", self.warmup_iters, 0, integer=True)
        _check_number("train.warmup_ratio", self.warmup_ratio, 0, 1, low_open=True)
        _check_number("train.gamma", self.gamma, 0, 1, low_open=True)  # a decay: lr *= gamma
        for i, milestone in enumerate(self.milestones):
            _check_number(f"train.milestones[{i}]", milestone, 0, integer=True)
        if self.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp={_short(self.amp)} must be 'none', 'bf16' or 'fp16'")
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
        except RecursionError:
            raise ConfigError(f"{path}: {_TOO_DEEP}") from None
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
            except RecursionError:
                raise ConfigError(f"--set {key.strip()}=...: {_TOO_DEEP}") from None
            node = data
            for i, part in enumerate(path[:-1]):
                if not isinstance(node.get(part), dict):
                    return self._unknown(".".join(path[: i + 1]), node)
                node = node[part]
            if path[-1] not in node:
                return self._unknown(key.strip(), node)
            _assign(node, path[-1], value, key.strip())
        return Config.from_dict(data)

    @staticmethod
    def _unknown(key: str, node: dict) -> "Config":
        parent, _, name = key.rpartition(".")
        hint = difflib.get_close_matches(name, list(node), n=1)
        suggestion = f"; did you mean '{parent + '.' if parent else ''}{hint[0]}'?" if hint else ""
        raise ConfigError(f"unknown config key '{key}'{suggestion}")


def _assign(node: dict[str, Any], name: str, value: Any, key: str) -> None:
    """``node[name] = value``; a table given for a table (``model={groups=8}``) changes only
    the keys it names, as ``model.groups=8`` does, instead of dropping the others."""
    old = node[name]
    if not (isinstance(old, dict) and isinstance(value, dict)):
        node[name] = value
        return
    for sub, item in value.items():
        if sub not in old:
            Config._unknown(f"{key}.{sub}", old)
        _assign(old, sub, item, f"{key}.{sub}")


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
        raise ConfigError(f"{where or 'config'}: expected a table, got {_short(data)}")
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
            raise ConfigError(f"{path}: expected a list, got {_short(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, path) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {_short(value)}")
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
    raise ConfigError(f"{path}: expected {getattr(tp, '__name__', tp)}, got {_short(value)}")
