"""``nextpose predict`` run in-process, as a user would call it."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ANN_FILE, COCO, DATA, IMAGES, ORACLE_RUNS, refused

import nextpose
from nextpose.cli import main


def test_predict_tiny_with_boxes_file_and_drawing(tiny_checkpoint, tmp_path, capsys):
    boxes = {IMAGES[0].name: [[100, 50, 300, 400, 0.9], [10, 10, 60, 120]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "poses.json"
    code = main(
        ["predict", "tiny_coco_96x64", "--checkpoint", str(tiny_checkpoint), str(IMAGES[0]),
         str(IMAGES[1]), "--boxes", str(tmp_path / "boxes.json"), "--out", str(out),
         "--draw", str(tmp_path / "drawn"), "--score-threshold=-1e9"]
    )  # fmt: skip
    assert code == 0
    records = json.loads(out.read_text())
    assert [r["image"] for r in records] == [IMAGES[0].name] * 2 + [IMAGES[1].name]
    assert records[0]["bbox"] == [100, 50, 300, 400] and records[0]["bbox_score"] == pytest.approx(
        0.9
    )
    assert records[1]["bbox_score"] == 1.0
    height, width = cv2.imread(str(IMAGES[1])).shape[:2]
    assert records[2]["bbox"] == [0, 0, width, height]  # no entry: the whole image, as mmpose
    for r in records:
        kpts = np.array(r["keypoints"])
        assert kpts.shape == (17, 3) and np.isfinite(kpts).all()
    for image in IMAGES[:2]:
        drawn = cv2.imread(str(tmp_path / "drawn" / (image.stem + ".jpg")))
        original = cv2.imread(str(image))
        assert drawn.shape == original.shape
        assert np.abs(drawn.astype(int) - original).max() > 100  # something was drawn
    err = capsys.readouterr().err
    assert "2 images, 3 people in" in err and f"wrote {out}" in err and "drew 2 files in" in err
    one = tmp_path / "one.json"
    args = ["predict", str(tiny_checkpoint), str(IMAGES[1]), "--out", str(one), "--no-progress"]
    assert main([*args, "--draw", str(tmp_path / "one")]) == 0
    err = capsys.readouterr().err
    assert "1 image, 1 person in" in err and "drew 1 file in" in err
    # A device is written as the poses come, not by a job:
    assert main([*args[:3], "--out", "/dev/stdout", "--no-progress"]) == 0
    assert "wrote 1 pose from 1 image to /dev/stdout" in capsys.readouterr().err


def test_predict_equals_reference_keypoints(oracle_weights, tmp_path):
    ref = json.loads((ORACLE_RUNS / "inference_topdown_000000197388.json").read_text())
    boxes = {ref["image"]: [p["bbox_xyxy"] for p in ref["predictions"]]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    out = tmp_path / "poses.json"
    boxes_file = str(tmp_path / "boxes.json")
    args = ["predict", "resnext50_coco_256x192", str(COCO / ref["image"]), "--checkpoint",
            str(oracle_weights), "--boxes", boxes_file, "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    got = np.array([r["keypoints"] for r in json.loads(out.read_text())])
    expected = np.array([p["keypoints"] for p in ref["predictions"]])
    assert np.abs(got[..., :2] - expected).max() <= 1e-3


def test_no_flip_changes_results(tiny_checkpoint, tmp_path):
    outs = []
    for extra in ([], ["--no-flip"]):
        out = tmp_path / f"poses{len(extra)}.json"
        assert (
            main(["predict", str(tiny_checkpoint), str(IMAGES[2]), "--out", str(out), *extra]) == 0
        )
        outs.append(np.array(json.loads(out.read_text())[0]["keypoints"]))
    assert not np.allclose(outs[0], outs[1])


def test_corrupt_image_is_reported_and_skipped(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(IMAGES[0].read_bytes()[:300])
    out = tmp_path / "poses.json"
    assert main(["predict", str(tiny_checkpoint), str(bad), str(IMAGES[1]), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "broken.jpg: not a readable image" in err and "1 of 2 images were skipped" in err
    assert [r["image"] for r in json.loads(out.read_text())] == [IMAGES[1].name]


def test_offline_download_error_is_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NEXTPOSE_CACHE", str(tmp_path / "cache"))
    url = "http://127.0.0.1:9/resnext50_coco_256x192-dcff15f6_20200727.pth"
    code = main(["predict", "resnext50_coco_256x192", str(IMAGES[0]), "--checkpoint", url])
    assert code == 2
    err = capsys.readouterr().err
    assert f"could not download {url}" in err and "--checkpoint PATH" in err


def test_bad_boxes_file_and_unknown_model(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "boxes.json").write_text(json.dumps({"a.jpg": [[1, 2, 3]]}))
    boxes = ["--boxes", str(tmp_path / "boxes.json")]
    code = main(["predict", str(tiny_checkpoint), str(IMAGES[0]), *boxes])
    refused(code, r"entry 'a\.jpg' must be a list of", capsys)
    assert main(["predict", "resnext51_coco", str(IMAGES[0])]) == 2
    assert "neither a preset" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "typo.pth"), str(IMAGES[0])]) == 2
    assert "typo.pth: no such checkpoint file" in capsys.readouterr().err  # not the preset list
    assert main(["predict", str(IMAGES[0]), str(IMAGES[0])]) == 2  # the image as MODEL
    assert "(it is a JPEG image, not weights" in capsys.readouterr().err


def test_eval_with_gt_boxes_equals_reference(oracle_weights, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "resnext50_coco_256x192", "--checkpoint", str(oracle_weights), "--images",
            str(COCO), "--ann-file", str(ANN_FILE), "--gt-boxes", "--workers", "1", "--out",
            str(out)]  # fmt: skip
    assert main(args) == 0
    ours = json.loads((out / "keypoints.json").read_text())
    ref = json.loads((ORACLE_RUNS / "results_gt_flip.keypoints.json").read_text())
    assert [r["image_id"] for r in ours] == [r["image_id"] for r in ref]
    got = np.array([r["keypoints"] for r in ours]).reshape(-1, 17, 3)
    expected = np.array([r["keypoints"] for r in ref]).reshape(-1, 17, 3)
    assert np.abs(got[..., :2] - expected[..., :2]).max() <= 1e-3
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    table = capsys.readouterr()
    # Other weights than the preset's: its published numbers are not comparable, not shown.
    assert "published" not in table.out and "0.715" not in table.out
    assert "published numbers not shown" in table.err


def test_eval_of_a_checkpoint_with_its_own_keypoints_reads_each_file_once(tmp_path, monkeypatch):
    """A checkpoint of 14 keypoints is scored on a 14-keypoint ground truth (the files were read
    for 17 before), and the annotation and detection files are parsed once each."""
    from dataclasses import replace

    from nextpose import checkpoint

    config = nextpose.get_preset("tiny_coco_96x64").config
    kset = nextpose.KeypointSet(tuple(f"k{i}" for i in range(14)), tuple(range(14)), (0.05,) * 14)
    k14 = replace(config, keypoints=kset, model=replace(config.model, num_keypoints=14))
    checkpoint.save_model(tmp_path / "k14.pth", nextpose.PoseNet(k14.model), k14)
    data = json.loads(ANN_FILE.read_text())
    for ann in data["annotations"]:
        ann["keypoints"] = ann["keypoints"][:42]
    ann_file = tmp_path / "k14.json"
    ann_file.write_text(json.dumps(data))
    reads = []
    real_load = json.load

    def load(f, *args, **kwargs):
        reads.append(Path(f.name).name)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(json, "load", load)
    for boxes in (["--gt-boxes"], ["--bbox-file", str(COCO / "test_coco_det_AP_H_56.json")]):
        reads.clear()
        out = tmp_path / boxes[0]
        args = ["eval", str(tmp_path / "k14.pth"), "--ann-file", str(ann_file), "--images",
                str(COCO), *boxes, "--out", str(out), "--no-progress"]  # fmt: skip
        assert main(args) == 0
        results = json.loads((out / "keypoints.json").read_text())
        assert results and all(len(r["keypoints"]) == 42 for r in results)
        assert json.loads((out / "metrics.json").read_text())["AP"] >= 0
        files = ["k14.json"] + (["test_coco_det_AP_H_56.json"] if len(boxes) == 2 else [])
        assert sorted(reads) == sorted(files)


def test_eval_says_when_it_falls_back_to_the_ground_truth_boxes(tiny_checkpoint, tmp_path, capsys):
    """--images and --ann-file without a detection file score the annotated boxes: numbers not
    comparable with the published detector-box AP, so the run says so (and only then)."""
    base = ["eval", str(tiny_checkpoint), "--ann-file", str(ANN_FILE), "--images", str(COCO),
            "--no-progress"]  # fmt: skip
    det = str(COCO / "test_coco_det_AP_H_56.json")
    for boxes, noted in (([], True), (["--gt-boxes"], False), (["--bbox-file", det], False)):
        assert main([*base, *boxes, "--out", str(tmp_path / f"run{len(boxes)}")]) == 0
        err = capsys.readouterr().err
        assert ("scored on the ground-truth boxes" in err) == noted, boxes


def test_eval_scores_a_results_file_without_a_model(tmp_path):
    results = DATA / "oracle" / "metric_check" / "noisy_gt_det.keypoints.json"
    out = tmp_path / "eval"
    assert (
        main(["eval", "--results", str(results), "--ann-file", str(ANN_FILE), "--out", str(out)])
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    expected = json.loads(
        (DATA / "oracle" / "metric_check" / "metrics_noisy_gt_det.json").read_text()
    )
    assert metrics["AP"] == pytest.approx(expected["coco/AP"], abs=1e-9)
    assert metrics["AR"] == pytest.approx(expected["coco/AR"], abs=1e-9)


def test_eval_missing_dataset_fails_before_loading_a_model(tmp_path, capsys):
    code = main(
        ["eval", "resnext50_coco_256x192", "--coco-root", str(tmp_path), "--out", str(tmp_path)]
    )
    refused(code, "no such annotation file", capsys)
    images = ["--images", str(tmp_path / "nope")]
    code = main(["eval", "resnext50_coco_256x192", "--ann-file", str(ANN_FILE), *images,
                 "--out", str(tmp_path)])  # fmt: skip
    refused(code, "--images .*nope: no such image folder", capsys)


def test_convert_writes_safetensors_that_load_to_the_same_poses(tiny_checkpoint, tmp_path):
    out = tmp_path / "tiny.safetensors"
    assert main(["convert", str(tiny_checkpoint), str(out)]) == 0
    a = nextpose.load(str(tiny_checkpoint)).predict(IMAGES[0], [[10, 10, 200, 300]])
    b = nextpose.load(str(out)).predict(IMAGES[0], [[10, 10, 200, 300]])
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert main(["convert", str(tiny_checkpoint), str(tmp_path / "x.pth")]) == 2
    assert main(["convert", str(out), str(out)]) == 2  # never over its own input


@pytest.mark.slow  # a fresh process: pytest records warnings in its own
def test_python_warnings_print_as_the_commands_warnings(tiny_checkpoint, tmp_path):
    import subprocess
    import sys

    import torch

    saved = torch.load(tiny_checkpoint, weights_only=True)
    saved["state_dict"]["ema.weight"] = torch.zeros(1)
    torch.save(saved, tmp_path / "ema.pth")
    run = subprocess.run(
        [sys.executable, "-m", "nextpose", "predict", str(tmp_path / "ema.pth"), str(IMAGES[0]),
         "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "warning: " in run.stderr and "ignored 1 checkpoint entry outside model" in run.stderr
    assert "UserWarning" not in run.stderr and ".py:" not in run.stderr  # no code location


def test_options_that_have_no_effect_are_named(tiny_checkpoint, tmp_path, recwarn):
    """Detector options without --detector and --keep-fp32 in fp32 change nothing: each gets a
    warning (the run goes on); used as meant, none."""
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), "--out", str(out), "--no-progress"]
    extra = ["--detector-score", "0.3", "--max-people", "2", "--keep-fp32", "head"]
    assert main([*args, *extra]) == 0
    said = [str(w.message) for w in recwarn if "has no effect" in str(w.message)]
    assert said == [
        "--detector-score has no effect without --detector",
        "--max-people has no effect without --detector",
        "--keep-fp32 has no effect without --precision bf16/fp16",
    ]
    assert len(json.loads(out.read_text())) == 1
    recwarn.clear()
    assert main([*args, "--detector-score", "0.5", "--keep-fp32", "ends"]) == 0
    assert not [w for w in recwarn if "has no effect" in str(w.message)]


def test_a_boxes_file_of_absurd_coordinates_is_refused_naming_the_entry(
    tiny_checkpoint, tmp_path, capsys
):
    """Coordinates past 1e9 pixels (what the estimator takes) are found when the file is read,
    naming it and the entry, as a NaN is, not by skipping the image after the model loaded."""
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([{"image_id": int(IMAGES[0].stem), "bbox": [0, 0, 1e30, 1e30]}]))
    out = tmp_path / "poses.json"
    args = ["predict", str(tiny_checkpoint), str(IMAGES[0]), "--boxes", str(boxes), "--out"]
    assert main([*args, str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "boxes.json: entry 0 must be a COCO detection" in err and "at most 1e9 pixels" in err
    assert not out.exists()


def test_help_states_the_exit_codes_the_commands_return(tiny_checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 done; 1 predict read no image" in text and "130 interrupted" in text
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    assert main(["predict", str(tiny_checkpoint), str(broken), "--no-progress"]) == 1
    assert main(["predict", str(tiny_checkpoint), str(tmp_path / "typo.jpg")]) == 2
