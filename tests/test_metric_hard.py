"""The COCO metric on hard inputs: equal to the reference (xtcocotools) where pycocotools is not,
both evaluators equal, and invariants on synthetic hard sets (benchmarks/hard_coco.py)."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nextpose.errors import InputError
from nextpose.evaluation import (
    METRIC_NAMES,
    build_results,
    evaluate_predictions,
    evaluate_results,
    oks_nms,
    score_results_file,
    soft_oks_nms,
    write_results,
)
from nextpose.evaluation.coco_eval import (
    _dumps_results,
    _keypoint_oks,
    _quiet,
    fast_evaluator_available,
    prepare_ground_truth,
)
from nextpose.evaluation.oks_nms import pairwise_prefix_sums
from nextpose.keypoints import COCO_KEYPOINTS

ROOT = Path(__file__).parents[1]
_spec = importlib.util.spec_from_file_location("hard_coco", ROOT / "benchmarks" / "hard_coco.py")
hard = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hard)
SIGMAS = COCO_KEYPOINTS.sigmas_array()
EVALUATORS = ["pycocotools"] + (["faster_coco_eval"] if fast_evaluator_available() else [])
_FIXTURE = [HealthCheck.function_scoped_fixture]
FAST = pytest.mark.skipif(not fast_evaluator_available(), reason="faster-coco-eval not installed")


def _write(tmp_path: Path, gt: dict, name: str = "gt.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(gt))
    return path


def _one_person(ann_id: int, **fields) -> tuple[dict, list[dict]]:
    kpts = [v for k in range(17) for v in (100.0 + 7 * k, 80.0 + 9 * k, 2)]
    ann = {"id": ann_id, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 5000.0,
           "bbox": [90.0, 70.0, 130.0, 170.0], "keypoints": kpts, "num_keypoints": 17}  # fmt: skip
    ann.update(fields)
    ann = {k: v for k, v in ann.items() if v is not None}
    gt = {"images": [{"id": 1, "file_name": "1.jpg", "width": 640, "height": 480}],
          "annotations": [ann], "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    res = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [90.0, 70.0, 130.0, 170.0],
            "keypoints": [v if i % 3 != 2 else 1.0 for i, v in enumerate(kpts)]}]  # fmt: skip
    return gt, res


# What xtcocotools 1.14.3 reports (AP 1 - 2^-53-ish: its precision divides by tp + fp + 2^-52).
PERFECT_MEDIUM = [0.9999999999999998, 0.9999999999999999, 0.9999999999999999,
                  0.9999999999999998, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0]  # fmt: skip


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_annotation_id_zero_is_matched_like_the_reference(tmp_path, evaluator):
    """pycocotools alone scores the match to annotation id 0 as a false positive (AP 0)."""
    gt, res = _one_person(0)
    metrics = evaluate_results(res, _write(tmp_path, gt), evaluator=evaluator)
    assert list(metrics.values()) == PERFECT_MEDIUM


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_missing_iscrowd_is_zero(tmp_path, evaluator):
    gt, res = _one_person(1, iscrowd=None)
    metrics = evaluate_results(res, _write(tmp_path, gt), evaluator=evaluator)
    assert list(metrics.values()) == PERFECT_MEDIUM


def test_empty_area_ranges_report_minus_one_even_without_detections(tmp_path):
    gt, res = _one_person(1)
    res[0]["keypoints"][2::3] = [0.0] * 17  # dropped by COCOeval: no detection left
    with pytest.warns(UserWarning, match="keypoint score > 0"):
        metrics = evaluate_results(res, _write(tmp_path, gt))
    assert metrics == {**dict.fromkeys(METRIC_NAMES, 0.0), "APl": -1.0, "ARl": -1.0}
    gt["annotations"] = []
    with pytest.warns(UserWarning, match="no predictions"):
        assert set(evaluate_results([], _write(tmp_path, gt)).values()) == {-1.0}


# xtcocotools 1.14.3 (NumPy 1.26) on hard_coco(30, seed=3, id_start=0, no_large=True): ids from 0,
# missing iscrowd / num_keypoints, crowds, tied scores, zero-area boxes, no large person.
REFERENCE_HARD_3 = [0.12918715741501957, 0.18689605920617167, 0.12042977578061788,
                    0.2054311397057286, -1.0, 0.40181818181818185, 0.4909090909090909,
                    0.39090909090909093, 0.39595959595959596, -1.0]  # fmt: skip


@pytest.mark.parametrize("evaluator", EVALUATORS)
def test_hard_set_equals_the_reference(tmp_path, evaluator):
    gt, res = hard.hard_coco(30, 3, id_start=0, no_large=True)
    assert any(a["id"] == 0 for a in gt["annotations"])
    assert any("iscrowd" not in a for a in gt["annotations"])
    write_results(res, tmp_path / "r.json")
    metrics = score_results_file(tmp_path / "r.json", _write(tmp_path, gt), evaluator=evaluator)
    assert list(metrics.values()) == REFERENCE_HARD_3


@pytest.mark.skipif(
    not os.environ.get("NEXTPOSE_REFERENCE_PYTHON"),
    reason="set NEXTPOSE_REFERENCE_PYTHON to a Python with xtcocotools (NumPy 1.x)",
)
@pytest.mark.parametrize("seed", range(6))
def test_hard_sets_equal_xtcocotools(tmp_path, seed):
    gt, res = hard.hard_coco(60, seed, id_start=seed % 2, no_large=seed % 3 == 0)
    gt_file = _write(tmp_path, gt)
    write_results(res, tmp_path / "r.json")
    out = subprocess.run(
        [os.environ["NEXTPOSE_REFERENCE_PYTHON"], str(ROOT / "benchmarks" / "reference_metric.py"),
         str(gt_file), str(tmp_path / "r.json")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    ref = json.loads(out.stdout)["stats"]
    for evaluator in EVALUATORS:
        ours = score_results_file(tmp_path / "r.json", gt_file, evaluator=evaluator)
        assert list(ours.values()) == ref, evaluator


# ---- invariants on hard sets -------------------------------------------------------------------

_SETS = st.builds(
    dict,
    seed=st.integers(0, 10_000),
    n_images=st.integers(1, 12),
    id_start=st.sampled_from([0, 1, 1000]),
    no_large=st.booleans(),
    tie_fraction=st.sampled_from([0.0, 0.5]),
)


def _score(tmp_path, gt, res, evaluator="auto", name="gt.json"):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_results(res, _write(tmp_path, gt, name), evaluator=evaluator)


@FAST
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kw=_SETS)
def test_evaluators_agree_bit_for_bit(tmp_path, kw):
    gt, res = hard.hard_coco(**kw)
    fast = _score(tmp_path, gt, res, "faster_coco_eval")
    assert fast == _score(tmp_path, gt, res, "pycocotools")


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kw=_SETS, data=st.data())
def test_metric_invariants(tmp_path, kw, data):
    gt, res = hard.hard_coco(**kw)
    base = _score(tmp_path, gt, res)
    for name, v in base.items():
        assert v == -1.0 or 0.0 <= v <= 1.0, (name, v)
    # Empty ranges are -1 and only those: a range has a GT that is neither crowd nor unlabelled.
    labelled = [
        a for a in gt["annotations"] if not a.get("iscrowd") and max(a["keypoints"][2::3]) > 0
    ]
    assert (base["APl"] == -1.0) == (not any(a["area"] >= 96**2 for a in labelled))
    assert (base["AP"] == -1.0) == (not labelled)
    # Annotation ids: any other unique non-negative numbering gives the same numbers.
    shift = data.draw(st.sampled_from([0, 1, 7, 10**9]))
    renumbered = json.loads(json.dumps(gt))
    for j, a in enumerate(reversed(renumbered["annotations"])):
        a["id"] = shift + 3 * j
    assert _score(tmp_path, renumbered, res) == base
    # iscrowd 0 written or not; the order of the images list; num_keypoints fields.
    dropped = json.loads(json.dumps(gt))
    for a in dropped["annotations"]:
        if a.get("iscrowd") == 0:
            del a["iscrowd"]
        a.pop("num_keypoints", None)
    dropped["images"].reverse()
    assert _score(tmp_path, dropped, res) == base
    # Detections whose keypoint scores are all <= 0 are not evaluated.
    extra = [{**r, "keypoints": [v if i % 3 != 2 else 0.0 for i, v in enumerate(r["keypoints"])],
              "score": 2.0} for r in res[:5]]  # fmt: skip
    if res:
        assert _score(tmp_path, gt, res + extra) == base


def test_perfect_results_on_a_hard_set_have_full_recall(tmp_path):
    gt, _ = hard.hard_coco(20, 5, id_start=0)
    res = [{"image_id": a["image_id"], "category_id": 1, "score": 1.0, "bbox": a["bbox"],
            "keypoints": [v if i % 3 != 2 else 1.0 for i, v in enumerate(a["keypoints"])]}
           for a in gt["annotations"]]  # fmt: skip
    metrics = _score(tmp_path, gt, res)
    assert metrics["AR"] == 1.0 and metrics["AR50"] == 1.0


# ---- results file bytes ------------------------------------------------------------------------


@given(kw=_SETS)
@settings(max_examples=15, deadline=None)
def test_results_json_is_json_dumps_byte_for_byte(kw):
    _, res = hard.hard_coco(**kw)
    assert _dumps_results(res) == json.dumps(res, sort_keys=True, indent=4)


def test_results_json_falls_back_for_other_content(tmp_path):
    odd = [{"image_id": 1, "category_id": 1, "keypoints": [1, 2.5, float("nan")], "score": 1,
            "bbox": [0.0, 0.0, 1.0, 1.0]}, {"extra": True}]  # fmt: skip
    assert _dumps_results(odd) is None
    write_results(odd, tmp_path / "r.json")
    assert (tmp_path / "r.json").read_text() == json.dumps(odd, sort_keys=True, indent=4)
    assert _dumps_results([]) == "[]"


# ---- tie order in OKS-NMS ----------------------------------------------------------------------


def _tied_poses(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    kpts = rng.uniform(0, 2000, (n, 17, 2)).astype(np.float32)  # far apart: nothing suppressed
    return kpts, np.zeros(n), np.full(n, 1e4, np.float32)  # all scores tie at 0


def test_tie_order_stable_is_highest_index_first():
    kpts, scores, areas = _tied_poses(40)
    keep = oks_nms(kpts, scores, areas, SIGMAS)
    assert keep.tolist() == list(range(39, -1, -1))
    soft = soft_oks_nms(kpts, scores, areas, SIGMAS)  # re-sorted by position each round
    assert soft[:3].tolist() == [39, 0, 38]


def test_tie_order_numpy_is_numpy_default_argsort():
    kpts, scores, areas = _tied_poses(40)
    keep = oks_nms(kpts, scores, areas, SIGMAS, tie_order="numpy")
    assert keep.tolist() == np.argsort(scores)[::-1].tolist()
    assert sorted(keep.tolist()) == list(range(40))
    with pytest.raises(InputError, match="tie_order"):
        oks_nms(kpts, scores, areas, SIGMAS, tie_order="random")
    with pytest.raises(InputError, match="tie_order"):
        build_results([], tie_order="unstable")


def test_tie_order_only_reorders_ties():
    """Without ties both orders give the same results; with ties the same set of instances
    survives when nothing overlaps."""
    from nextpose.evaluation import PosePrediction

    rng = np.random.default_rng(1)
    preds = [
        PosePrediction(id=i, img_id=i % 3, keypoints=rng.uniform(0, 3000, (17, 2)),
                       keypoint_scores=rng.uniform(0, 1, 17) * (i % 4 != 0), bbox_xyxy=[0, 0, 9, 9],
                       bbox_score=1.0, area=1e4)
        for i in range(60)
    ]  # fmt: skip
    a, b = build_results(preds), build_results(preds, tie_order="numpy")
    key = lambda r: (r["image_id"], r["keypoints"][0])  # noqa: E731
    assert sorted(a, key=key) == sorted(b, key=key)
    untied = [p for p in preds if p.id % 4 != 0]
    assert build_results(untied) == build_results(untied, tie_order="numpy")


def test_reference_metric_script_is_importable_without_xtcocotools():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import reference_metric  # noqa: F401
    finally:
        sys.path.pop(0)


def test_reference_pipeline_script_is_importable_without_xtcocotools():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import reference_pipeline  # noqa: F401
    finally:
        sys.path.pop(0)


@pytest.mark.skipif(
    not os.environ.get("NEXTPOSE_REFERENCE_PYTHON"),
    reason="set NEXTPOSE_REFERENCE_PYTHON to a Python with xtcocotools (NumPy 1.x)",
)
@pytest.mark.parametrize("ties", [False, True])
def test_whole_metric_equals_the_reference_pipeline(tmp_path, ties):
    """Rescoring, OKS-NMS, results file and COCOeval against the reference's pipeline
    (benchmarks/reference_pipeline.py under NumPy 1 + xtcocotools): same ten numbers, same
    results bytes. With ties (a third of the instances scored 0) the reference sorts stably."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_metric
    finally:
        sys.path.pop(0)
    gt, preds = bench_metric.synthetic_dataset(6, 60, seed=int(ties), people_range=(20, 40))
    if ties:
        for p in preds[::3]:
            p.keypoint_scores = np.minimum(p.keypoint_scores, np.float32(0.15))
    gt_file = _write(tmp_path, gt)
    np.savez(tmp_path / "p.npz", **bench_metric.prediction_arrays(preds))
    script = ROOT / "benchmarks" / "reference_pipeline.py"
    cmd = [os.environ["NEXTPOSE_REFERENCE_PYTHON"], str(script),
           str(gt_file), str(tmp_path / "p.npz"), str(tmp_path / "ref.json")]  # fmt: skip
    out = subprocess.run(cmd + ["--stable-sort"] * ties, capture_output=True, text=True, check=True)
    ref = json.loads(out.stdout)
    for evaluator in EVALUATORS:
        ours = evaluate_predictions(
            preds, gt_file, out_dir=tmp_path / evaluator, evaluator=evaluator
        )
        assert list(ours.values()) == ref["stats"], evaluator
        ours_file = (tmp_path / evaluator / "keypoints.json").read_bytes()
        assert ours_file == (tmp_path / "ref.json").read_bytes()
    scores = [r["score"] for r in json.loads((tmp_path / "ref.json").read_text())]
    assert (len(set(scores)) < len(scores)) == ties


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 128),
    rows=st.integers(1, 6),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_pairwise_prefix_sums_round_as_numpy_sums_each_row(k, rows, seed, dtype):
    rng = np.random.default_rng(seed)
    t = (rng.exponential(1.0, (rows, k)) * 10.0 ** rng.integers(-8, 8)).astype(dtype)
    counts = rng.integers(0, k + 1, rows)
    t[np.arange(k)[None, :] >= counts[:, None]] = 0
    got = pairwise_prefix_sums(t, counts)
    want = np.array([np.sum(np.ascontiguousarray(t[i, : counts[i]])) for i in range(rows)])
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want.astype(dtype))


@FAST
@pytest.mark.parametrize("use_area", [True, False])
def test_vectorised_oks_equals_faster_coco_eval_bit_for_bit(use_area):
    """The OKS nextpose hands to faster-coco-eval's matching equals its own computeOks on hard
    sets (crowds, people without labelled keypoints, zero-area boxes, 0-30 people per image)."""
    from faster_coco_eval import COCO, COCOeval_faster

    pairs = 0
    for seed in range(3):
        gt, res = hard.hard_coco(25, seed, people=(0, 30))
        gt = prepare_ground_truth(gt, "gt")
        assert any(a["num_keypoints"] == 0 for a in gt["annotations"])
        res = [r for r in res if any(v > 0 for v in r["keypoints"][2::3])]
        coco_gt = COCO(gt, print_function=_quiet)
        ev = COCOeval_faster(
            coco_gt, coco_gt.loadRes(res), iouType="keypoints", kpt_oks_sigmas=SIGMAS,
            use_area=use_area, print_function=_quiet, separate_eval=True,
        )  # fmt: skip
        ev.params.maxDets = [20]
        ev._prepare()
        for img_id in ev.params.imgIds:
            theirs, ours = ev.computeOks(img_id, 1), _keypoint_oks(ev, img_id, 1)
            if isinstance(theirs, list):
                assert ours == theirs == []
            else:
                assert ours.dtype == theirs.dtype
                np.testing.assert_array_equal(ours, theirs)
                pairs += theirs.size
    assert pairs > 10_000
