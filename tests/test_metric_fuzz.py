"""Malformed COCO ground truth and results files: an AnnotationError naming the file, the entry
and the problem, never another exception (hypothesis fuzz over the JSON structures)."""

import copy
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextpose.data.coco import are_json_numbers, is_json_number
from nextpose.errors import AnnotationError
from nextpose.evaluation import score_results_file


def _valid() -> tuple[dict, list]:
    kpts = [v for k in range(17) for v in (100.0 + 7 * k, 80.0 + 9 * k, 2)]
    ann = {"id": 0, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 5000.0,
           "bbox": [90.0, 70.0, 130.0, 170.0], "keypoints": kpts, "num_keypoints": 17}  # fmt: skip
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 480}],
          "annotations": [ann, {**ann, "id": 1}],
          "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    res = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [90.0, 70.0, 130.0, 170.0],
            "keypoints": [v if i % 3 != 2 else 1.0 for i, v in enumerate(kpts)]}]  # fmt: skip
    return gt, res


def _score(tmp_path, gt, res):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    return score_results_file(tmp_path / "res.json", tmp_path / "gt.json")


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            ("annotations", 0, "area"),
            math.nan,
            r"annotations\[0\] \(id 0\): 'area' must be a finite",
        ),
        (("annotations", 1, "area"), [1.0, 2.0], r"annotations\[1\] \(id 1\): 'area' must be"),
        (("annotations", 0, "image_id"), [1], r"annotations\[0\].*'image_id' \[1\] is not"),
        (("annotations", 0, "keypoints", 4), math.inf, r"'keypoints' must be 51 finite numbers"),
        (("annotations", 0, "bbox"), "90 70 130 170", r"'bbox' must be 4 finite numbers"),
        (("annotations", 0, "iscrowd"), "no", r"'iscrowd' must be 0 or 1"),
        (("annotations", 1, "id"), 0, r"annotations\[1\] \(id 0\): duplicate annotation id"),
        (("annotations", 1, "id"), -3, r"negative annotation id"),
        (("images", 0, "id"), "1", r"images\[0\] needs an integer 'id'"),
        (("categories",), None, r"no 'categories' list"),
    ],
)
def test_bad_ground_truth_names_file_entry_and_problem(tmp_path, where, value, message):
    gt, res = _valid()
    target = gt
    for key in where[:-1]:
        target = target[key]
    if value is None:
        del target[where[-1]]
    else:
        target[where[-1]] = value
    with pytest.raises(AnnotationError, match=rf"gt\.json: .*{message}"):
        _score(tmp_path, gt, res)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": "90,70,130,170"}, r"result 0: 'bbox' must be \[x, y, w, h\]"),
        ({"bbox": [90.0, 70.0]}, r"result 0: 'bbox' must be \[x, y, w, h\]"),
        ({"category_id": None}, r"result 0 needs an integer 'category_id'"),
        ({"score": "high"}, r"result 0 must be \{'image_id': int"),
        ({"image_id": 99}, r"res\.json: result 0 is of image_id 99, not in .*gt\.json"),
    ],
)
def test_bad_results_name_file_entry_and_problem(tmp_path, change, message):
    gt, res = _valid()
    res[0].update(change)
    with pytest.raises(AnnotationError, match=message):
        _score(tmp_path, gt, res)


def test_a_later_result_without_bbox_is_refused(tmp_path):
    gt, res = _valid()
    res.append({k: v for k, v in res[0].items() if k != "bbox"})
    with pytest.raises(AnnotationError, match=r"res\.json: result 1: 'bbox'"):
        _score(tmp_path, gt, res)


_FIXTURE = [HealthCheck.function_scoped_fixture]
_JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=5), st.lists(st.integers(0, 3), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)  # fmt: skip


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node[:4]):
            yield from _paths(v, (*prefix, i))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fuzzed_files_give_numbers_or_an_annotation_error(tmp_path, data):
    gt, res = _valid()
    doc = {"gt": gt, "res": res}
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _paths(doc) if len(p) >= 2]))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()) and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = data.draw(_JUNK)
    try:
        metrics = _score(tmp_path, copy.deepcopy(doc["gt"]), copy.deepcopy(doc["res"]))
    except AnnotationError as e:
        assert "gt.json" in str(e) or "res.json" in str(e), str(e)
    else:
        assert all(v == -1.0 or 0.0 <= v <= 1.0 for v in metrics.values())


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**1100), 2**1100),
    st.sampled_from([3.4028234663852886e38, 3.402823466385289e38, -3.4028235e38, 2**128, True]),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
    st.floats(-1e6, 1e6).map(np.float64),
)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(_VALUES, max_size=60) | st.lists(st.floats(-3.5e38, 3.5e38), max_size=60))
def test_fast_number_check_agrees_with_the_per_value_check(values):
    assert are_json_numbers(values) == all(map(is_json_number, values))


def test_fast_number_check_sees_one_bad_value_among_many():
    good = [float(v) for v in range(51)]
    assert are_json_numbers(good)
    for bad in (math.nan, math.inf, -math.inf, 3.5e38, 2**1100, True, None, "1"):
        assert not are_json_numbers([*good[:20], bad, *good[20:]]), bad
    # each value within float32 range although their sum is not: still accepted
    assert are_json_numbers([3.0e38, 3.0e38, -3.0e38])


def test_a_crowd_given_as_a_float_is_a_crowd(tmp_path):
    """xtcocotools reads ``iscrowd`` by truth: 1.0 is a crowd, as 1 and True are."""
    gt, res = _valid()
    gt["annotations"][1]["bbox"] = [400.0, 300.0, 50.0, 50.0]  # the second person unmatched
    stats = {}
    for crowd in (0, 1, 1.0, True):
        gt["annotations"][1]["iscrowd"] = crowd
        stats[repr(crowd)] = _score(tmp_path, gt, res)
    assert stats["1"] == stats["1.0"] == stats["True"] != stats["0"]
