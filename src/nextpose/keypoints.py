"""Keypoint sets: names, left/right mirror partners, OKS sigmas and skeleton (COCO-17 built in)."""

import difflib
import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError


@dataclass(frozen=True)
class KeypointSet:
    """What a model's K output channels mean.

    Attributes:
        names: one name per keypoint, in channel order.
        flip_indices: a horizontally mirrored person has keypoint k where the original had
            ``flip_indices[k]`` (left and right swap).
        sigmas: per-keypoint OKS falloff (COCO keypoint evaluation).
        skeleton: index pairs drawn as limbs.
        upper_body, lower_body: keypoint indices used by half-body augmentation.
    """

    names: tuple[str, ...]
    flip_indices: tuple[int, ...]
    sigmas: tuple[float, ...]
    skeleton: tuple[tuple[int, int], ...] = ()
    upper_body: tuple[int, ...] = ()
    lower_body: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Lists given from Python become tuples: the set stays immutable and hashable.
        for name in ("names", "flip_indices", "sigmas", "upper_body", "lower_body"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.skeleton, list | tuple):
            skeleton = tuple(tuple(p) if isinstance(p, list) else p for p in self.skeleton)
            object.__setattr__(self, "skeleton", skeleton)
        k = len(self.names)
        if len(self.flip_indices) != k or len(self.sigmas) != k:
            raise ConfigError(
                f"keypoint set: {k} names but {len(self.flip_indices)} flip indices and "
                f"{len(self.sigmas)} sigmas; all three must have one entry per keypoint"
            )
        if sorted(self.flip_indices) != list(range(k)):
            raise ConfigError(
                f"keypoint set: flip_indices {self.flip_indices} is not a permutation"
            )
        twice = [i for i, j in enumerate(self.flip_indices) if self.flip_indices[j] != i]
        if twice:  # a mirror image mirrored again is the original
            raise ConfigError(
                f"keypoint set: flip_indices {self.flip_indices} swap no left/right pairs: "
                f"keypoint {twice[0]} goes to {self.flip_indices[twice[0]]}, which does not "
                "go back"
            )
        seen = {n for n in self.names if self.names.count(n) > 1}
        if seen:
            raise ConfigError(f"keypoint set: names {sorted(seen)} occur more than once")
        if not all(0 < s < np.inf for s in self.sigmas):
            raise ConfigError(f"keypoint set: sigmas {self.sigmas} must all be positive numbers")
        for pair in self.skeleton:
            if not all(0 <= i < k for i in pair):
                raise ConfigError(f"keypoint set: skeleton link {pair} is out of range for {k}")

    @property
    def num_keypoints(self) -> int:
        return len(self.names)

    def sigmas_array(self) -> np.ndarray:
        """(K,) float32 sigmas: the reference computes (2 sigma)^2 in float32."""
        return np.asarray(self.sigmas, dtype=np.float32)


COCO_KEYPOINTS = KeypointSet(
    names=(
        "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
        "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
        "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    ),
    flip_indices=(0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15),
    sigmas=(
        0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
        0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
    ),
    skeleton=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
        (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6),
    ),
    upper_body=tuple(range(11)),
    lower_body=tuple(range(11, 17)),
)  # fmt: skip


METAINFO_KEYS = (
    "names", "sigmas", "flip_indices", "flip_pairs", "skeleton", "upper_body", "lower_body",
)  # fmt: skip


def load_keypoint_set(path: str | Path) -> KeypointSet:
    """A keypoint set from a JSON or TOML file (a custom dataset's metainfo).

    Keys: ``names`` (K strings), ``sigmas`` (K OKS sigmas), and either ``flip_indices`` (K ints)
    or ``flip_pairs`` (``[[left, right], ...]``, by index or by name); optional ``skeleton``
    (index or name pairs), ``upper_body`` and ``lower_body`` (indices or names).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such keypoint metainfo file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot parse ({e})") from None
    except RecursionError:
        raise ConfigError(f"{path}: cannot parse (it nests too deeply)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected an object with 'names', 'sigmas', 'flip_pairs', ...")
    unknown = sorted(set(data) - set(METAINFO_KEYS))
    if unknown:
        hint = difflib.get_close_matches(unknown[0], METAINFO_KEYS, n=1)
        also = f"; did you mean '{hint[0]}'?" if hint else ""
        raise ConfigError(
            f"{path}: unknown key '{unknown[0]}'{also} (keys: {', '.join(METAINFO_KEYS)})"
        )
    names, sigmas = data.get("names"), data.get("sigmas")
    numbers = isinstance(sigmas, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in sigmas
    )
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and numbers):
        raise ConfigError(f"{path}: needs 'names' (K strings) and 'sigmas' (K numbers)")
    names, sigmas = tuple(names), tuple(float(x) for x in sigmas)
    twice = sorted({n for n in names if names.count(n) > 1})  # names are also indices here
    if twice:
        raise ConfigError(f"{path}: names {twice} occur more than once")
    index = {n: i for i, n in enumerate(names)}

    def idx(v: int | str) -> int:
        if isinstance(v, str):
            if v not in index:
                raise ConfigError(f"unknown keypoint name '{v}'")
            return index[v]
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < len(names):
            raise ConfigError(f"keypoint index {v!r} is out of range for {len(names)} keypoints")
        return v

    def pairs(key: str) -> tuple[tuple[int, int], ...]:
        items = data.get(key, [])
        bad = not isinstance(items, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in items
        )
        if bad:
            raise ConfigError(f"'{key}' must be a list of [a, b] pairs, got {items!r:.60}")
        return tuple((idx(a), idx(b)) for a, b in items)

    try:
        if "flip_indices" in data:
            flip = tuple(idx(i) for i in data["flip_indices"])
        else:
            flip_list = list(range(len(names)))
            for a, b in pairs("flip_pairs"):
                flip_list[a], flip_list[b] = b, a
            flip = tuple(flip_list)
        return KeypointSet(
            names=names,
            flip_indices=flip,
            sigmas=sigmas,
            skeleton=pairs("skeleton"),
            upper_body=tuple(idx(i) for i in data.get("upper_body", [])),
            lower_body=tuple(idx(i) for i in data.get("lower_body", [])),
        )
    except (TypeError, ValueError) as e:  # ConfigError is a ValueError too
        raise ConfigError(f"{path}: {e}") from None
