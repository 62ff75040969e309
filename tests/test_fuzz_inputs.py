"""Fuzzed user files (boxes files, keypoint sets, configs): whatever structure they hold, the
result is a value or nextpose's own error naming the file, never another exception."""

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nextpose
from nextpose.boxes import BoxTable
from nextpose.config import Config
from nextpose.keypoints import load_keypoint_set

SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=6),
    st.floats(allow_nan=True, allow_infinity=True),
)  # fmt: skip
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=5),
    max_leaves=25,
)  # fmt: skip
NAMES = st.sampled_from(["a.jpg", "names", "sigmas", "flip_pairs", "skeleton", "model",
                         "inference", "train", "bbox", "image_id", "score"])  # fmt: skip
STRUCTURED = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(NAMES, inner, max_size=6),
    max_leaves=30,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                HealthCheck.function_scoped_fixture])  # fmt: skip


def _write(tmp_path, value, name):
    path = tmp_path / name
    path.write_text(json.dumps(value))  # NaN / Infinity as Python's json writes them
    return path


@FUZZ
@given(value=JSON | STRUCTURED)
def test_boxes_files(tmp_path, value):
    path = _write(tmp_path, value, "boxes.json")
    try:
        table = BoxTable.read(path)
    except nextpose.AnnotationError as e:
        assert str(path) in str(e)
        return
    for boxes in [*table.by_name.values(), *table.by_id.values()]:
        assert boxes.shape[1] == 5 and all(math.isfinite(v) for v in boxes.ravel())


@FUZZ
@given(value=JSON | STRUCTURED)
def test_keypoint_sets(tmp_path, value):
    path = _write(tmp_path, value, "keypoints.json")
    try:
        kset = load_keypoint_set(path)
    except nextpose.ConfigError as e:
        assert str(path) in str(e)
        return
    assert kset.num_keypoints == len(kset.sigmas) == len(kset.flip_indices)


@FUZZ
@given(value=JSON | STRUCTURED)
def test_configs(value):
    try:
        config = Config.from_dict(value)
    except nextpose.ConfigError:
        return
    assert Config.from_dict(config.to_dict()) == config


@FUZZ
@given(key=st.sampled_from(["train.lr", "model.input_size", "data.augment.scale_factor",
                            "keypoints.names", "train.milestones"]), value=JSON)  # fmt: skip
def test_set_overrides(key, value):
    text = json.dumps(value).replace("NaN", "nan").replace("Infinity", "inf")
    try:
        Config().override([f"{key}={text}"])
    except nextpose.ConfigError as e:
        assert key.split(".")[0].rstrip("s") in str(e) or "--set" in str(e)
