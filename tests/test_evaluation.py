"""COCO keypoint metric (§7): equality with the reference's CocoMetric and unit behaviour.

The reference (mmpose 1.3.2 + xtcocotools, NumPy 1.26) wrote ``metric_check/``: per-instance metric
inputs, the results file after rescoring + OKS-NMS, and the ten metrics. We feed the same inputs
through nextpose and require the same results (entries, order, values) and metrics within 1e-9.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nextpose.evaluation import (
    METRIC_NAMES,
    MMPOSE_METRIC_NAMES,
    PosePrediction,
    build_results,
    evaluate_predictions,
    evaluate_results,
    group_by_image,
    oks_iou,
    oks_nms,
    predictions_from_arrays,
    rescore,
    scale_area,
    score_results_file,
    soft_oks_nms,
    write_results,
)
from nextpose.keypoints import COCO_KEYPOINTS

DATA = Path(__file__).parent / "data"
ANN_FILE = DATA / "coco-mini" / "test_coco.json"
METRIC_CHECK = DATA / "oracle" / "metric_check"
ORACLE_RUNS = DATA / "oracle" / "td-hm_resnext50_8xb64-210e_coco-256x192"
SIGMAS = COCO_KEYPOINTS.sigmas_array()
TOL = 1e-9


def _load_predictions(run: str) -> list[PosePrediction]:
    data = json.loads((METRIC_CHECK / f"predictions_noisy_gt_{run}.json").read_text())
    assert data["n"] == len(data["predictions"])
    return [
        PosePrediction(
            id=p["id"],
            img_id=p["img_id"],
            keypoints=p["keypoints"],
            keypoint_scores=p["keypoint_scores"],
            bbox_xyxy=p["bbox_xyxy"],
            bbox_score=p["bbox_score"],
            area=scale_area(p["bbox_scale"]),
        )
        for p in data["predictions"]
    ]


def _reference_metrics(path: Path) -> dict[str, float]:
    ref = json.loads(path.read_text())
    return {name: ref[MMPOSE_METRIC_NAMES[name]] for name in METRIC_NAMES}


def _assert_same_results(actual: list[dict], expected: list[dict]) -> None:
    """Same entries in the same order: ids and bbox exactly, keypoints and score within TOL."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert set(a) == set(e) == {"bbox", "category_id", "image_id", "keypoints", "score"}
        assert (a["image_id"], a["category_id"]) == (e["image_id"], e["category_id"])
        assert a["bbox"] == e["bbox"]
        np.testing.assert_allclose(a["keypoints"], e["keypoints"], rtol=0, atol=TOL)
        assert abs(a["score"] - e["score"]) <= TOL


def _assert_metrics(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(METRIC_NAMES)
    assert all(isinstance(v, float) for v in actual.values())
    for name in METRIC_NAMES:
        assert abs(actual[name] - expected[name]) <= TOL, (name, actual[name], expected[name])


# ---- acceptance: the reference's results file and metrics -------------------------------------


@pytest.mark.parametrize("run", ["det", "gt"])
def test_noisy_predictions_match_reference(run, tmp_path):
    """Rescoring + OKS-NMS + results file + COCOeval reproduce the reference (§7.1-7.6)."""
    expected = json.loads((METRIC_CHECK / f"noisy_gt_{run}.keypoints.json").read_text())
    metrics = evaluate_predictions(_load_predictions(run), ANN_FILE, out_dir=tmp_path)
    _assert_same_results(json.loads((tmp_path / "keypoints.json").read_text()), expected)
    _assert_metrics(metrics, _reference_metrics(METRIC_CHECK / f"metrics_noisy_gt_{run}.json"))
    # The metrics are not trivial: the det run has a non-maximal AP and M/L differ.
    assert metrics["AP"] < 1.0 and metrics["APm"] != metrics["APl"]


@pytest.mark.parametrize("run", ["det", "gt"])
def test_reference_results_file_scores_to_reference_metrics(run):
    """Scoring the reference's own results file (no model) gives the reference's metrics."""
    metrics = score_results_file(METRIC_CHECK / f"noisy_gt_{run}.keypoints.json", ANN_FILE)
    _assert_metrics(metrics, _reference_metrics(METRIC_CHECK / f"metrics_noisy_gt_{run}.json"))


def test_det_run_suppresses_with_oks_nms():
    """118 detection-box instances -> 78 results after OKS-NMS, as the reference wrote."""
    results = build_results(_load_predictions("det"))
    assert len(results) == 78
    assert len(build_results(_load_predictions("det"), nms="none")) == 118


@pytest.mark.parametrize("run", ["gt_flip", "gt_noflip", "det_flip", "det_noflip"])
def test_oracle_model_runs_results_file(run, tmp_path):
    """The random-weight oracle runs: per-instance arrays -> the reference's results file."""
    z = np.load(ORACLE_RUNS / f"oracle_{run}.npz")
    predictions = predictions_from_arrays(
        z["id"], z["img_id"], z["kpts_img"], z["kpt_scores"], z["bbox_xyxy"], z["bbox_score"],
        z["input_scale"],
    )  # fmt: skip
    expected = json.loads((ORACLE_RUNS / f"results_{run}.keypoints.json").read_text())
    metrics = evaluate_predictions(predictions, ANN_FILE, out_dir=tmp_path)
    _assert_same_results(json.loads((tmp_path / "keypoints.json").read_text()), expected)
    _assert_metrics(metrics, _reference_metrics(ORACLE_RUNS / f"metrics_{run}.json"))


# ---- perfect and empty predictions ---------------------------------------------------------------


def _fixed_scale(xyxy: np.ndarray) -> np.ndarray:
    """Padded (1.25), aspect-fixed (w/h = 0.75) float32 crop scale of a box (§2.1-2.2)."""
    w, h = (xyxy[2] - xyxy[0]) * np.float32(1.25), (xyxy[3] - xyxy[1]) * np.float32(1.25)
    if w > h * np.float32(0.75):
        return np.array([w, w / np.float32(0.75)], np.float32)
    return np.array([h * np.float32(0.75), h], np.float32)


def _perfect_predictions(ann_file: Path = ANN_FILE) -> list[PosePrediction]:
    """GT keypoints with score 1 and GT boxes, one per labelled person."""
    anns = json.loads(ann_file.read_text())["annotations"]
    predictions = []
    for ann in anns:
        kpts = np.asarray(ann["keypoints"], np.float64).reshape(-1, 3)
        if ann["iscrowd"] or not np.any(kpts[:, 2] > 0):
            continue
        x, y, w, h = np.asarray(ann["bbox"], np.float32)
        box = np.array([x, y, x + w, y + h], np.float32)
        predictions.append(
            PosePrediction(
                id=ann["id"],
                img_id=ann["image_id"],
                keypoints=kpts[:, :2],
                keypoint_scores=np.ones(len(kpts)),
                bbox_xyxy=box,
                bbox_score=1.0,
                area=scale_area(_fixed_scale(box)),
            )
        )
    return predictions


def test_perfect_predictions_score_one(tmp_path):
    predictions = _perfect_predictions()
    assert len(predictions) == 12
    metrics = evaluate_predictions(predictions, ANN_FILE, out_dir=tmp_path)
    assert metrics == dict.fromkeys(METRIC_NAMES, 1.0)
    assert score_results_file(tmp_path / "keypoints.json", ANN_FILE) == metrics


def test_perfect_predictions_lose_ap_when_shifted():
    """Sanity check that the perfect score is earned: moving every keypoint 20 px lowers AP."""
    predictions = _perfect_predictions()
    for p in predictions:
        p.keypoints = p.keypoints + np.float32(20)
    metrics = evaluate_predictions(predictions, ANN_FILE)
    assert metrics["AP"] < 0.9 and metrics["AR"] < 0.9


def test_empty_predictions_give_zeros_and_warn(tmp_path):
    with pytest.warns(UserWarning, match="no predictions"):
        metrics = evaluate_predictions([], ANN_FILE, out_dir=tmp_path)
    assert metrics == dict.fromkeys(METRIC_NAMES, 0.0)
    assert json.loads((tmp_path / "keypoints.json").read_text()) == []
    with pytest.warns(UserWarning):
        assert score_results_file(tmp_path / "keypoints.json", ANN_FILE) == metrics


def test_all_zero_keypoint_scores_give_zeros_and_warn():
    predictions = _perfect_predictions()
    for p in predictions:
        p.keypoint_scores = np.zeros_like(p.keypoint_scores)
    with pytest.warns(UserWarning, match="keypoint score > 0"):
        metrics = evaluate_predictions(predictions, ANN_FILE)
    assert metrics == dict.fromkeys(METRIC_NAMES, 0.0)


# ---- COCOeval set up like xtcocotools (§7.6) -------------------------------------------------


def _perfect_results() -> list[dict]:
    return build_results(_perfect_predictions())


def test_detections_without_positive_keypoint_score_are_dropped():
    """A top-scored false positive whose keypoint scores are all <= 0 does not count."""
    fp = {
        "image_id": 785,
        "category_id": 1,
        "keypoints": [5.0, 5.0, 0.0] * 17,
        "score": 10.0,
        "bbox": [0.0, 0.0, 200.0, 200.0],
    }
    assert evaluate_results([*_perfect_results(), fp], ANN_FILE)["AP"] == 1.0
    fp["keypoints"][2] = 0.01  # one positive score: now it is a false positive at rank 1
    assert evaluate_results([*_perfect_results(), fp], ANN_FILE)["AP"] < 1.0


def test_detection_area_is_the_bbox_area():
    """Unmatched detections fall in the M/L ranges by their box area (results carry ``bbox``)."""
    fp = {
        "image_id": 785,
        "category_id": 1,
        "keypoints": [v for k in range(17) for v in (5.0 + 30 * k, 5.0 + 20 * k, 1.0)],
        "score": 10.0,
        "bbox": [0.0, 0.0, 10.0, 10.0],  # 100 px^2: outside both medium and large
    }
    metrics = evaluate_results([*_perfect_results(), fp], ANN_FILE)
    assert metrics["AP"] < 1.0  # a false positive in the "all" range
    # Keypoint extent is ~480 x 320 px (large): with that area APl would drop too.
    assert metrics["APm"] == 1.0 and metrics["APl"] == 1.0


def test_ground_truth_ignore_counts_labelled_keypoints(tmp_path):
    """A GT is ignored when no keypoint has v > 0, whatever its ``num_keypoints`` field says."""
    data = json.loads(ANN_FILE.read_text())
    unlabelled = [a for a in data["annotations"] if not any(a["keypoints"][2::3])]
    assert unlabelled
    for ann in unlabelled:
        ann["num_keypoints"] = 5  # inconsistent on purpose; pycocotools alone would trust it
    ann_file = tmp_path / "gt.json"
    ann_file.write_text(json.dumps(data))
    assert evaluate_predictions(_perfect_predictions(ann_file), ann_file)["AR"] == 1.0


def _pycocotools_oks(xd: np.ndarray, xg: np.ndarray, var: np.ndarray, area: float) -> float:
    """COCOeval's OKS expression for one detection and one fully labelled GT (dy = 0)."""
    dx = xd - xg
    e = (dx**2 + np.zeros_like(dx) ** 2) / var / (area + np.spacing(1)) / 2
    return float(np.sum(np.exp(-e)) / e.shape[0])


def test_cocoeval_uses_float32_sigmas():
    """A detection placed where OKS crosses 0.95 only with the float32 variances is a match."""
    results = _perfect_results()
    (entry,) = [r for r in results if r["image_id"] == 785]
    (gt,) = [a for a in json.loads(ANN_FILE.read_text())["annotations"] if a["image_id"] == 785]
    xg = np.asarray(gt["keypoints"][0::3], np.float64)
    var32 = (SIGMAS * 2) ** 2
    var64 = (np.asarray(COCO_KEYPOINTS.sigmas, np.float64) * 2) ** 2
    k = 5  # left shoulder: float32 variance larger by ~1.2e-7 relative

    def oks(t: float, var: np.ndarray) -> float:
        xd = xg.copy()
        xd[k] += t
        return _pycocotools_oks(xd, xg, var, gt["area"])

    lo, hi = 0.0, 200.0  # first shift at which the float64-variance OKS drops below 0.95
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if oks(mid, var64) >= 0.95 else (lo, mid)
    assert oks(hi, var64) < 0.95 <= oks(hi, var32)
    entry["keypoints"][3 * k] = float(xg[k] + hi)
    assert evaluate_results(results, ANN_FILE)["AR"] == 1.0  # matched at every threshold
    entry["keypoints"][3 * k] += 1e-3
    assert evaluate_results(results, ANN_FILE)["AR"] < 1.0


def test_results_outside_the_annotation_file_are_rejected():
    bad = {**_perfect_results()[0], "image_id": 123456789}
    with pytest.raises(ValueError, match="not in"):
        evaluate_results([bad], ANN_FILE)


# ---- rescoring (§7.3) ------------------------------------------------------------------------


def test_rescore_threshold_is_strict():
    scores = np.full((1, 17), 0.1, np.float32)
    scores[0, :3] = [0.5, 0.9, 0.7]
    out = rescore(scores, [1.0], threshold=0.5)  # 0.5 itself does not count
    assert out[0] == (float(np.float32(0.9)) + float(np.float32(0.7))) / 2


def test_rescore_compares_in_float64():
    """float32(0.2) is slightly above 0.2, so it counts (NumPy-1 float64 comparison)."""
    scores = np.zeros((1, 17), np.float32)
    scores[0, 0] = 0.2
    assert rescore(scores, [1.0])[0] == float(np.float32(0.2))


def test_rescore_without_passing_keypoint_is_zero():
    scores = np.full((2, 17), 0.15, np.float32)
    scores[1] = -1.0
    np.testing.assert_array_equal(rescore(scores, [0.9, 0.8]), [0.0, 0.0])


def test_rescore_arithmetic_is_float64():
    """Sum, mean and product in float64 of the float32 values (differs from float32 maths)."""
    scores = np.full((1, 17), 0.1, np.float32)
    scores[0, :3] = [0.9, 0.7, 0.35]
    box = np.float32(0.8)
    out = rescore(scores, [box])
    assert out.dtype == np.float64
    s = [float(v) for v in scores[0, :3]]
    expected = float(box) * ((s[0] + s[1] + s[2]) / 3)
    as_float32 = float(box * ((scores[0, 0] + scores[0, 1] + scores[0, 2]) / np.float32(3)))
    assert out[0] == expected and expected != as_float32


# ---- OKS and OKS-NMS (§7.4) ------------------------------------------------------------------


def _pose(dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    return np.array([[100 + 5.0 * k + dx, 50 + 12.0 * k + dy] for k in range(17)], np.float32)


def test_oks_iou_bits_match_numpy1_float32_maths():
    """Expected bits from the reference's formula run under NumPy 1.26 (float32 throughout);
    float64 maths would differ in the last bit for half of these cases."""
    g = np.array([[10 + 7.3 * k, 20 + 11.1 * k] for k in range(17)], np.float32)
    d = np.array(
        [
            [[x + 3 * math.sin(1.7 * k * t + t), y + 3 * math.cos(2.3 * k + t)]
             for k, (x, y) in enumerate((10 + 7.3 * k, 20 + 11.1 * k) for k in range(17))]
            for t in range(12)
        ],
        np.float32,
    )  # fmt: skip
    expected = [
        1064546658, 1063812636, 1064015534, 1063885474, 1063716909, 1063876270,
        1063958941, 1063902245, 1063946234, 1063798914, 1063890410, 1063681480,
    ]  # fmt: skip
    oks = oks_iou(g, d, np.float32(5000.5), np.full(12, 6100.25, np.float32), SIGMAS)
    assert oks.dtype == np.float32
    assert oks.view(np.uint32).tolist() == expected


def test_oks_iou_identical_and_far():
    oks = oks_iou(_pose(), np.stack([_pose(), _pose(500, 500)]), 1e4, [1e4, 1e4], SIGMAS)
    assert oks[0] == 1.0 and oks[1] < 1e-6


def test_oks_nms_suppresses_identical_keeps_far_in_score_order():
    kpts = np.stack([_pose(), _pose(0.1, 0.1), _pose(300, 0), _pose(0, 400)])
    scores = np.array([0.5, 0.9, 0.7, 0.8])
    keep = oks_nms(kpts, scores, np.full(4, 1e4, np.float32), SIGMAS)
    assert keep.tolist() == [1, 3, 2]  # 0 duplicates 1 (lower score): suppressed


def test_oks_nms_keeps_when_oks_equals_threshold():
    """Kept when ``oks <= float32(threshold)``: identical poses (OKS 1) survive threshold 1."""
    kpts = np.stack([_pose(), _pose()])
    areas = np.full(2, 1e4, np.float32)
    assert oks_nms(kpts, [0.9, 0.8], areas, SIGMAS, threshold=1.0).tolist() == [0, 1]
    assert oks_nms(kpts, [0.9, 0.8], areas, SIGMAS, threshold=0.999).tolist() == [0]


def test_oks_nms_empty():
    keep = oks_nms(np.zeros((0, 17, 2)), np.zeros(0), np.zeros(0), SIGMAS)
    assert keep.tolist() == []


def test_soft_oks_nms_decays_instead_of_dropping():
    kpts = np.stack([_pose(), _pose(), _pose(300, 0)])
    scores = np.array([0.9, 0.8, 0.7])
    areas = np.full(3, 1e4, np.float32)
    # The duplicate's score becomes 0.8 * exp(-1 / 0.9) ~ 0.26 < 0.7: it is ranked last.
    assert soft_oks_nms(kpts, scores, areas, SIGMAS).tolist() == [0, 2, 1]
    assert oks_nms(kpts, scores, areas, SIGMAS).tolist() == [0, 2]
    assert soft_oks_nms(kpts, scores, areas, SIGMAS, max_dets=2).tolist() == [0, 2]


def test_nms_modes_in_pipeline():
    predictions = _load_predictions("det")
    soft = build_results(predictions, nms="soft_oks")
    per_image = {}
    for r in soft:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) <= 20
    with pytest.raises(ValueError, match="nms"):
        build_results(predictions, nms="bogus")


# ---- grouping, results format --------------------------------------------------------------------


def _instance(id_: int, img_id: int, shift: float = 0.0) -> PosePrediction:
    return PosePrediction(
        id=id_,
        img_id=img_id,
        keypoints=_pose(shift, 0),
        keypoint_scores=np.full(17, 0.9),
        bbox_xyxy=[0.1, 0.2, 100.3, 200.7],
        bbox_score=1.0,
        area=1e4,
    )


def test_group_by_image_orders_and_deduplicates():
    items = [_instance(5, 2), _instance(3, 1), _instance(1, 2), _instance(5, 2, shift=9)]
    groups = group_by_image(items)
    assert list(groups) == [2, 1]  # first appearance
    assert [p.id for p in groups[2]] == [1, 5]
    assert groups[2][1] is items[0]  # of two id-5 instances the later one is dropped


def test_results_entry_format(tmp_path):
    (entry,) = build_results([_instance(0, 7)])
    assert entry["image_id"] == 7 and entry["category_id"] == 1
    assert len(entry["keypoints"]) == 51 and entry["keypoints"][2] == float(np.float32(0.9))
    x1, y1, x2, y2 = np.array([0.1, 0.2, 100.3, 200.7], np.float32)
    assert entry["bbox"] == [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
    path = write_results([entry], tmp_path / "r.json")
    text = path.read_text()
    assert text == json.dumps([entry], sort_keys=True, indent=4)
    assert text.index('"bbox"') < text.index('"category_id"') < text.index('"score"')


def test_scale_area_is_float32_product():
    assert scale_area([312.7127685546875, 416.9503479003906]) == float(
        np.float32(312.7127685546875) * np.float32(416.9503479003906)
    )


def test_equal_scores_are_ordered_highest_index_first_on_every_machine():
    # Four far-apart poses with the same score: none suppresses another, and the keep order is
    # the reversed stable order (what classic NumPy 1 gives), not a CPU-dependent one.
    kpts = np.stack([np.full((17, 2), 100.0 * i, np.float32) for i in range(4)])
    keep = oks_nms(kpts, np.zeros(4), np.full(4, 100.0, np.float32), COCO_KEYPOINTS.sigmas_array())
    assert keep.tolist() == [3, 2, 1, 0]
