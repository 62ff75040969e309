"""Bad annotation, detection, boxes and results files through CocoKeypoints, evaluate, the eval
and predict commands, BoxTable and PoseEstimator.predict (issue 7)."""

import json
import math
import warnings
from dataclasses import replace

import numpy as np
import pytest
from conftest import ANN_FILE, COCO, DET_FILE, IMAGES, refused
from robust_files import coco_json, write_json

import nextpose
from nextpose import predictor
from nextpose.cli import main
from nextpose.data.coco import AnnotationError, CocoKeypoints
from nextpose.evaluation import evaluate, read_eval_set, score_results_file
from nextpose.pipeline import BoxTable


@pytest.fixture(scope="module")
def estimator(tiny_checkpoint):
    return nextpose.load(tiny_checkpoint)


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the eval command gets as far as loading a model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the files were checked")

    monkeypatch.setattr(predictor, "load", refuse)


def _eval_cli(ann_file, *extra):
    return main(["eval", "resnext50_coco_256x192", "--ann-file", str(ann_file), "--images",
                 str(COCO), "--out", str(ann_file.parent / "eval"), *extra])  # fmt: skip


# -- malformed files -----------------------------------------------------------------------------


def test_malformed_json(tmp_path, capsys, no_model):
    bad = tmp_path / "ann.json"
    bad.write_text(ANN_FILE.read_text()[:-40])  # cut off
    with pytest.raises(AnnotationError, match=r"ann\.json: not valid JSON \(.*line \d+"):
        CocoKeypoints(bad)
    assert _eval_cli(bad, "--gt-boxes") == 2
    assert "ann.json: not valid JSON" in capsys.readouterr().err


def test_not_a_coco_file(tmp_path):
    path = write_json(tmp_path / "ann.json", [{"image_id": 1}])
    with pytest.raises(AnnotationError, match=r"not a COCO annotation file \(no 'images' list\)"):
        CocoKeypoints(path)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("file_name", 785, r"'file_name' must be a string, not 785"),
     ("file_name", None, r"'file_name' must be a string, not None"),
     ("height", math.inf, r"needs 'id', 'file_name', 'width' and 'height' \(finite numbers\)")],
)  # fmt: skip
def test_image_entry_of_the_wrong_type(key, value, message, tmp_path, capsys, no_model):
    """A number as a file name, an infinite height: a bad file, named, not a TypeError or
    OverflowError deep in cropping."""
    data = coco_json()
    data["images"][2][key] = value
    path = write_json(tmp_path / "ann.json", data)
    with pytest.raises(AnnotationError, match=rf"images\[2\]:? {message}"):
        CocoKeypoints(path)
    assert _eval_cli(path, "--gt-boxes") == 2
    assert "images[2]" in capsys.readouterr().err


def test_image_entry_missing_keys(tmp_path, capsys, no_model):
    data = coco_json()
    del data["images"][2]["file_name"]
    path = write_json(tmp_path / "ann.json", data)
    with pytest.raises(
        AnnotationError, match=r"images\[2\] needs 'id', 'file_name', 'width' and 'height'"
    ):
        CocoKeypoints(path)
    assert _eval_cli(path, "--gt-boxes") == 2
    assert "images[2] needs" in capsys.readouterr().err


def test_annotation_missing_id(tmp_path):
    data = coco_json()
    del data["annotations"][3]["id"]
    with pytest.raises(AnnotationError, match=r"annotations\[3\] has no 'id'"):
        CocoKeypoints(write_json(tmp_path / "ann.json", data))


def test_annotation_with_unknown_image(tmp_path):
    data = coco_json()
    data["annotations"][0]["image_id"] = 999
    with pytest.raises(AnnotationError, match=r"annotations\[0\] refers to unknown image_id 999"):
        CocoKeypoints(write_json(tmp_path / "ann.json", data))


def test_annotation_without_keypoints_or_bbox_is_not_a_person_instance(tmp_path):
    data = coco_json()
    del data["annotations"][0]["keypoints"]
    del data["annotations"][1]["bbox"]
    full = CocoKeypoints(ANN_FILE).ground_truth_instances()
    fewer = CocoKeypoints(write_json(tmp_path / "ann.json", data)).ground_truth_instances()
    assert {i.id for i in full} - {i.id for i in fewer} <= {
        data["annotations"][0]["id"],
        data["annotations"][1]["id"],
    }
    assert len(fewer) == len(full) - 2


def test_wrong_keypoint_count(tmp_path, estimator):
    data = coco_json()
    data["annotations"][0]["keypoints"] = data["annotations"][0]["keypoints"][:48]
    path = write_json(tmp_path / "ann.json", data)
    ann_id = data["annotations"][0]["id"]
    with pytest.raises(
        AnnotationError, match=rf"annotation {ann_id}: 'bbox' must be 4 numbers and 'keypoints' 51"
    ):
        CocoKeypoints(path).ground_truth_instances()
    with pytest.raises(AnnotationError, match="'keypoints' 51 numbers"):
        evaluate(estimator, path, COCO, read_threads=0, progress=False)


def test_keypoint_count_of_another_keypoint_set(tmp_path):
    with pytest.raises(AnnotationError, match="'keypoints' 42 numbers"):
        CocoKeypoints(ANN_FILE, num_keypoints=14).ground_truth_instances()


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nan_and_inf_in_annotations(tmp_path, value):
    data = coco_json()
    data["annotations"][2]["keypoints"][0] = value  # Python's json writes NaN / Infinity
    path = write_json(tmp_path / "ann.json", data)
    ann_id = data["annotations"][2]["id"]
    with pytest.raises(AnnotationError, match=rf"annotation {ann_id} has NaN/inf values"):
        CocoKeypoints(path).ground_truth_instances()


@pytest.mark.parametrize("bbox", [[50, 60, 0, 100], [50, 60, 100, -5], [50, 60, -10, -10]])
def test_zero_and_negative_area_ground_truth_boxes_are_skipped(tmp_path, bbox):
    data = coco_json()
    data["annotations"][0]["bbox"] = bbox
    instances = CocoKeypoints(write_json(tmp_path / "ann.json", data)).ground_truth_instances()
    assert data["annotations"][0]["id"] not in {i.id for i in instances}
    assert len(instances) == len(CocoKeypoints(ANN_FILE).ground_truth_instances()) - 1


def test_ground_truth_box_entirely_outside_the_image_is_skipped(tmp_path):
    data = coco_json()
    data["annotations"][0]["bbox"] = [5000, 5000, 100, 200]
    instances = CocoKeypoints(write_json(tmp_path / "ann.json", data)).ground_truth_instances()
    assert data["annotations"][0]["id"] not in {i.id for i in instances}


def test_image_with_no_persons(tmp_path, estimator):
    data = coco_json()
    empty_id = data["images"][0]["id"]
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] != empty_id]
    path = write_json(tmp_path / "ann.json", data)
    coco = CocoKeypoints(path)
    assert coco.annotations[empty_id] == []
    metrics = evaluate(estimator, path, COCO, read_threads=0, progress=False)
    assert all(np.isfinite(list(metrics.values())))


def test_no_persons_at_all(tmp_path, estimator):
    """No ground truth in any area range: the reference reports -1 for all ten numbers."""
    data = coco_json()
    data["annotations"] = []
    path = write_json(tmp_path / "ann.json", data)
    with pytest.warns(UserWarning, match="no predictions"):
        metrics = evaluate(estimator, path, COCO, read_threads=0, progress=False)
    assert set(metrics.values()) == {-1.0}


def test_duplicate_image_ids(tmp_path):
    data = coco_json()
    data["images"].append(dict(data["images"][0]))
    with pytest.raises(AnnotationError, match=rf"duplicate image id {data['images'][0]['id']}"):
        CocoKeypoints(write_json(tmp_path / "ann.json", data))


def test_duplicate_annotation_ids(tmp_path):
    data = coco_json()
    data["annotations"][5]["id"] = data["annotations"][1]["id"]
    with pytest.raises(
        AnnotationError,
        match=rf"duplicate annotation id {data['annotations'][1]['id']} "
        r"\(annotations\[1\] and \[5\]\)",
    ):
        CocoKeypoints(write_json(tmp_path / "ann.json", data))


# -- detection files (evaluation) ----------------------------------------------------------------


def _detections() -> list[dict]:
    return json.loads(DET_FILE.read_text())


def test_detections_of_other_categories_are_ignored(tmp_path):
    dets = _detections()
    others = [dict(d, category_id=3) for d in dets[:7]]
    path = write_json(tmp_path / "dets.json", others + dets)
    coco = CocoKeypoints(ANN_FILE)
    assert len(coco.detection_instances(path)) == len(coco.detection_instances(DET_FILE))


def test_detection_file_without_entries_for_an_image(tmp_path, estimator):
    dets = _detections()[:40]
    gone = dets[0]["image_id"]
    path = write_json(tmp_path / "dets.json", [d for d in dets if d["image_id"] != gone])
    results = tmp_path / "out"
    evaluate(estimator, ANN_FILE, COCO, path, out_dir=results, read_threads=0, progress=False)
    ids = {r["image_id"] for r in json.loads((results / "keypoints.json").read_text())}
    assert gone not in ids and ids


def test_an_eval_set_read_once_scores_as_its_files(tmp_path, estimator):
    """evaluate() on an EvalSet gives the metrics and results of evaluate() on its files; its
    boxes are its own, and it is for one keypoint count."""
    data = read_eval_set(ANN_FILE, DET_FILE, 17, bbox_score_threshold=0.3)
    a, b = tmp_path / "files", tmp_path / "set"
    run = {"read_threads": 0, "progress": False}
    from_files = evaluate(estimator, ANN_FILE, COCO, DET_FILE, a, bbox_score_threshold=0.3, **run)
    assert evaluate(estimator, data, COCO, out_dir=b, **run) == from_files
    assert (a / "keypoints.json").read_bytes() == (b / "keypoints.json").read_bytes()
    assert len(data.instances) < len(read_eval_set(ANN_FILE, DET_FILE).instances)
    with pytest.raises(TypeError, match="boxes are the EvalSet's own"):
        evaluate(estimator, data, COCO, DET_FILE, **run)
    with pytest.raises(ValueError, match="read for 14 keypoints, not 17"):
        evaluate(estimator, replace(data, num_keypoints=14), COCO, **run)


def test_empty_detection_file(tmp_path, estimator):
    path = write_json(tmp_path / "dets.json", [])
    with pytest.warns(UserWarning, match="no predictions"):
        metrics = evaluate(estimator, ANN_FILE, COCO, path, read_threads=0, progress=False)
    assert set(metrics.values()) == {0.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [1, 2, math.nan, 4]}, r"entry 0 has bbox \[1, 2, nan, 4\]"),
        ({"score": math.inf}, "need finite numbers"),
        ({"bbox": [1, 2]}, r"entry 0 needs 'image_id', 'category_id', 'bbox' \[x, y, w, h\]"),
        ({"image_id": 123456}, "entry 0 refers to image_id 123456, not in"),
    ],
)
def test_bad_detection_entries_are_reported_before_the_model_loads(
    tmp_path, capsys, no_model, change, message
):
    dets = _detections()
    dets[0] = dets[0] | change
    path = write_json(tmp_path / "dets.json", dets)
    with pytest.raises(AnnotationError, match=message):
        CocoKeypoints(ANN_FILE).detection_instances(path)
    assert _eval_cli(ANN_FILE, "--bbox-file", str(path)) == 2
    assert "dets.json: entry 0" in capsys.readouterr().err


def test_zero_area_and_outside_detections_give_finite_results(tmp_path, estimator):
    dets = _detections()[:6]
    dets[0]["bbox"] = [100, 100, 0, 0]
    dets[1]["bbox"] = [-900, -900, 50, 80]  # entirely outside the image
    dets[2]["bbox"] = [20, 20, 1e6, 1e6]
    path = write_json(tmp_path / "dets.json", dets)
    results = tmp_path / "out"
    evaluate(estimator, ANN_FILE, COCO, path, out_dir=results, read_threads=0, progress=False)
    for r in json.loads((results / "keypoints.json").read_text()):
        assert np.isfinite(r["keypoints"]).all() and np.isfinite(r["score"])


def test_negative_width_or_height_is_cropped_as_the_reference_crops_it(tmp_path, estimator):
    """No size check (§1.4): x2 = x + w even for w < 0. A box w wide to the left of x, narrower
    than the crop's aspect ratio, has the centre and (after the aspect fix) the size of the
    same box written with w > 0, so the same keypoints; both sizes negative turn the crop."""
    dets = _detections()[:1]
    x, y, w, h = 200.0, 60.0, 30.0, 120.0
    flipped = [dict(dets[0], bbox=[x, y, -w, h]), dict(dets[0], bbox=[x, y, -w, -h])]
    plain = [dict(dets[0], bbox=[x - w, y, w, h])]
    out = {}
    for name, entries in (("negative", flipped), ("plain", plain)):
        path = write_json(tmp_path / f"{name}.json", entries)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            instances = CocoKeypoints(ANN_FILE).detection_instances(path)
        said = [str(c.message) for c in caught if "negative width or height" in str(c.message)]
        assert len(said) == (name == "negative") and all(f"{name}.json: entry 0" in m for m in said)
        assert [i.id for i in instances] == list(range(len(entries)))
        results = tmp_path / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate(
                estimator, ANN_FILE, COCO, path, out_dir=results, read_threads=0, progress=False
            )
        out[name] = json.loads((results / "keypoints.json").read_text())
    assert instances[0].bbox.tolist() == [x - w, y, x, y + h]
    negative = {tuple(r["keypoints"]) for r in out["negative"]}
    assert tuple(out["plain"][0]["keypoints"]) in negative and len(negative) == 2
    assert all(np.isfinite(r["keypoints"]).all() for r in out["negative"])


# -- results files (eval --results) --------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[{]", r"results\.json: not valid JSON"),
        ('{"a": 1}', "COCO keypoint results are a JSON list"),
        ('[{"image_id": 785, "score": 1}]', r"result 0 must be \{'image_id': int, 'keypoints'"),
        ('[{"image_id": 785, "keypoints": [1, 2, 3], "score": 1}]', "51 finite numbers"),
    ],
)
def test_bad_results_file(tmp_path, capsys, content, message):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        score_results_file(path, ANN_FILE)
    args = ["eval", "--results", str(path), "--ann-file", str(ANN_FILE), "--out", str(tmp_path)]
    assert main(args) == 2
    assert "results.json" in capsys.readouterr().err


def test_results_file_against_a_malformed_annotation_file(tmp_path):
    good = tmp_path / "results.json"
    good.write_text(
        json.dumps([{"image_id": 785, "category_id": 1, "keypoints": [1.0] * 51, "score": 0.5}])
    )
    bad = tmp_path / "ann.json"
    bad.write_text("{not json")
    with pytest.raises(AnnotationError, match=r"ann\.json: not valid JSON"):
        score_results_file(good, bad)


# -- person boxes for predict (--boxes, BoxTable, the Python API) --------------------------------


@pytest.mark.parametrize(
    ("boxes", "message"),
    [
        ({"a.jpg": [[1, 2, 3]]}, r"entry 'a\.jpg' must be a list of \[x1, y1, x2, y2\]"),
        ({"a.jpg": [[1, 2, math.nan, 4]]}, "boxes of finite numbers"),
        ({"a.jpg": [[0, 0, 3e38, 10]]}, r"coordinates of at most 1e9 pixels"),
        ([{"image_id": 1, "bbox": [0, 0, 2e9, 4]}], r"entry 0 .*at most 1e9 pixels"),
        ({"a.jpg": [[100, 50, 80, 200]]}, r"x2 < x1 or y2 < y1 \(boxes are \[x1, y1, x2, y2\]"),
        ([{"image_id": 1, "bbox": [1, 2, -3, 4], "score": 1}], r"entry 0 must be a COCO detection"),
        ([{"image_id": "abc", "bbox": [1, 2, 3, 4]}], "entry 0 must be a COCO detection"),
        ([{"image_id": 1, "bbox": [1, 2, 3, math.inf]}], "entry 0 must be a COCO detection"),
        ("just a string", r"expected \{\"<image file name>\""),
    ],
)
def test_bad_boxes_file_is_refused_before_the_model_loads(
    tmp_path, boxes, message, monkeypatch, capsys
):
    path = write_json(tmp_path / "boxes.json", boxes)
    with pytest.raises(ValueError, match=message):
        BoxTable.read(path)
    monkeypatch.setattr(predictor, "load", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["predict", "tiny_coco_96x64", str(IMAGES[0]), "--boxes", str(path)])
    refused(code, r"error: .*boxes\.json", capsys)


def test_boxes_file_malformed_json(tmp_path):
    (tmp_path / "boxes.json").write_text("{'single': 'quotes'}")
    with pytest.raises(ValueError, match=r"boxes\.json: not valid JSON"):
        BoxTable.read(tmp_path / "boxes.json")


def test_boxes_file_with_other_categories_and_missing_images(tiny_checkpoint, tmp_path, capsys):
    dets = [
        {"image_id": int(IMAGES[0].stem), "bbox": [100, 50, 200, 350], "score": 0.9},
        {"image_id": int(IMAGES[0].stem), "bbox": [0, 0, 50, 50], "category_id": 3},  # a car
    ]
    path = write_json(tmp_path / "dets.json", dets)
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), str(IMAGES[1]), "--boxes",
            str(path), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [IMAGES[0].name, IMAGES[1].name]
    assert records[0]["bbox"] == [100, 50, 300, 400]  # the person only
    err = capsys.readouterr().err
    assert "warning: 1 of 2 images had no entry in" in err and "whole-image box" in err


def test_empty_boxes_file_warns_that_nothing_matched(tiny_checkpoint, tmp_path, capsys):
    path = write_json(tmp_path / "boxes.json", [])
    args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), "--boxes", str(path)]
    assert main(args) == 0
    assert "1 of 1 images had no entry" in capsys.readouterr().err


def test_predict_api_refuses_inverted_and_nan_boxes(estimator):
    image = np.zeros((100, 80, 3), np.uint8)
    with pytest.raises(ValueError, match=r"box 1 \[50.0, 10.0, 20.0, 90.0\] has x2 < x1"):
        estimator.predict(image, [[0, 0, 10, 10], [50, 10, 20, 90]])
    with pytest.raises(ValueError, match="must be finite"):
        estimator.predict(image, [[0, 0, math.nan, 10]])
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        estimator.predict(image, [[0, 0, 10]])


def test_predict_api_with_no_boxes_and_boxes_outside_the_image(estimator, caplog):
    image = np.zeros((100, 80, 3), np.uint8)
    assert len(estimator.predict(image, [])) == 0
    assert not caplog.records
    boxes = [[-500, -500, -400, -300], [10, 10, 50, 60], [900, 900, 1000, 1000]]
    poses = estimator.predict(image, boxes)
    assert len(poses) == 3  # kept, in order, as the reference keeps them
    assert np.isfinite(poses.keypoints).all() and np.isfinite(poses.scores).all()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 of 3 boxes lie entirely outside the 80 x 100 image" in warned[0]


def test_predict_cli_warns_about_a_box_outside_the_image(tiny_checkpoint, tmp_path, capsys):
    name = IMAGES[0].name
    boxes = write_json(tmp_path / "boxes.json", {name: [[-500, -500, -400, -400, 0.9]]})
    out = tmp_path / "out.json"
    args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), "--boxes", str(boxes)]
    assert main([*args, "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {name}: 1 of 1 boxes lie entirely outside" in err
    assert len(json.loads(out.read_text())) == 1


def test_ground_truth_boxes_clip_to_the_files_width_as_written(tmp_path):
    """The reference clips a box to ``width - 1`` of the file's number: 639.5 for 640.5 (§1.2)."""
    kpts = [v for k in range(17) for v in (610.0 + k, 420.0 + k, 2)]
    data = {"images": [{"id": 1, "file_name": "1.jpg", "width": 640.5, "height": 480.7}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                             "area": 5000.0, "bbox": [600.0, 400.0, 100.0, 100.0],
                             "keypoints": kpts, "num_keypoints": 17}],
            "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    (inst,) = CocoKeypoints(write_json(tmp_path / "ann.json", data)).ground_truth_instances()
    np.testing.assert_array_equal(inst.bbox, np.float32([600, 400, 639.5, 479.7]))
    data["images"][0].update(width=640, height=480)  # integers: the last pixel index
    (inst,) = CocoKeypoints(write_json(tmp_path / "int.json", data)).ground_truth_instances()
    np.testing.assert_array_equal(inst.bbox, np.float32([600, 400, 639, 479]))


def test_a_missing_area_is_the_references_estimate_of_the_unrounded_box(tmp_path):
    """0.53 x the clipped box's area, in float64 from the unrounded clipped corners, then float32
    (mmpose's parse_data_info): 10722.234375 here, where float32 corners give 10722.233."""
    data = {"images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
                             "bbox": [10.1, 20.3, 100.7, 200.9], "keypoints": [50, 60, 2] * 17}],
            "categories": [{"id": 1, "name": "person"}]}  # fmt: skip
    (inst,) = CocoKeypoints(write_json(tmp_path / "ann.json", data)).ground_truth_instances()
    assert inst.area == 10722.234375


def test_json_nested_too_deeply_is_refused_naming_the_file(tiny_checkpoint, tmp_path, capsys):
    """JSON nesting past Python's recursion limit is a bad file, not a crash: annotations,
    detections, results and keypoint metainfo files alike."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    out = ["--out", str(tmp_path / "ev")]
    commands = [
        ["eval", str(tiny_checkpoint), "--images", str(COCO), "--ann-file", str(deep),
         "--gt-boxes", *out],
        ["eval", str(tiny_checkpoint), "--images", str(COCO), "--ann-file", str(ANN_FILE),
         "--bbox-file", str(deep), *out],
        ["eval", "--results", str(deep), "--ann-file", str(ANN_FILE), *out],
        ["config", "tiny_coco_96x64", "--keypoints", str(deep)],
    ]  # fmt: skip
    for args in commands:
        refused(
            main(args), rf"{deep}: cannot (read the \w+ file: its JSON|parse \(it) nests", capsys
        )
