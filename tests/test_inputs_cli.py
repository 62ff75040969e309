"""What people pass, through the command line: boxes as x, y, w, h, glob patterns, a folder
holding one image too wide for OpenCV's warp, PIL images through the API."""

import json
import shutil

import cv2
import numpy as np
import pytest
from conftest import IMAGES

import nextpose
from nextpose.cli import main


def _predict(checkpoint, *args):
    return main(["predict", str(checkpoint), *map(str, args)])


def test_bbox_format_xywh_gives_the_xyxy_keypoints(tiny_checkpoint, tmp_path):
    xyxy = {IMAGES[0].name: [[100, 50, 300, 400, 0.9]]}
    xywh = {IMAGES[0].name: [[100, 50, 200, 350, 0.9]]}
    outs = []
    for name, table, extra in (("a", xyxy, []), ("b", xywh, ["--bbox-format", "xywh"])):
        (tmp_path / f"{name}.json").write_text(json.dumps(table))
        out = tmp_path / f"{name}-poses.json"
        assert _predict(tiny_checkpoint, IMAGES[0], "--boxes", tmp_path / f"{name}.json",
                        "--out", out, *extra) == 0  # fmt: skip
        outs.append(json.loads(out.read_text()))
    assert outs[0] == outs[1] and outs[0][0]["bbox"] == [100, 50, 300, 400]
    est = nextpose.load(str(tiny_checkpoint))
    np.testing.assert_array_equal(
        est.predict(IMAGES[0], [[100, 50, 200, 350]], bbox_format="xywh").keypoints,
        est.predict(IMAGES[0], [[100, 50, 300, 400]]).keypoints,
    )


def test_glob_patterns_are_expanded(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "poses.json"
    pattern = str(IMAGES[0].parent / "0000000[0-4]*.jpg")
    assert _predict(tiny_checkpoint, pattern, "--out", out) == 0
    names = [r["image"] for r in json.loads(out.read_text())]
    assert names == sorted(p.name for p in IMAGES if p.name[7] in "01234")
    assert _predict(tiny_checkpoint, str(tmp_path / "*.nothing"), "--out", out) == 2
    assert "the pattern matches no files" in capsys.readouterr().err


def test_a_panorama_among_good_images(tiny_checkpoint, tmp_path, capsys):
    """A 40000 x 1000 image: too wide for OpenCV's warp with its whole-image box, so it is
    reported and skipped; the other images' poses are written and the run succeeds."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in IMAGES[:2]:
        shutil.copy(path, folder / path.name)
    wide = np.zeros((1000, 40000, 3), np.uint8)
    wide[:, ::97] = 255
    cv2.imwrite(str(folder / "panorama.png"), wide)
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, folder, "--out", out) == 0
    err = capsys.readouterr().err
    assert "panorama.png" in err and "1 of 3 images were skipped" in err
    assert sorted(r["image"] for r in json.loads(out.read_text())) == sorted(
        p.name for p in IMAGES[:2]
    )


def test_pil_images_are_accepted(tiny_checkpoint):
    image_module = pytest.importorskip("PIL.Image")
    est = nextpose.load(str(tiny_checkpoint))
    array = nextpose.read_image(IMAGES[0])
    poses = est.predict(image_module.fromarray(array), [[100, 50, 300, 400]])
    np.testing.assert_array_equal(
        poses.keypoints, est.predict(array, [[100, 50, 300, 400]]).keypoints
    )


def test_eval_of_a_folder_without_the_annotated_images_is_refused(
    tiny_checkpoint, tmp_path, capsys
):
    from conftest import ANN_FILE

    (tmp_path / "images").mkdir()
    args = ["eval", str(tiny_checkpoint), "--images", str(tmp_path / "images"), "--gt-boxes"]
    assert main([*args, "--ann-file", str(ANN_FILE), "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert f"--images {tmp_path / 'images'}: holds none of the 4 images" in err
    assert not (tmp_path / "ev").exists()


def test_detector_options_are_checked(tiny_checkpoint, tmp_path, capsys):
    weights = tmp_path / "detector.pth"
    weights.write_text("hello")
    assert _predict(tiny_checkpoint, IMAGES[0], "--detector", "--detector-weights", weights) == 2
    assert f"{weights}: not a readable PyTorch weights file" in capsys.readouterr().err
    for option, value, says in [
        ("--detector-score", "2", "must be from 0 to 1"),
        ("--detector-min-size", "-5", "must be >= 0"),
        ("--detector-score", "nan", "expected a finite number"),
    ]:
        with pytest.raises(SystemExit):
            _predict(tiny_checkpoint, IMAGES[0], "--detector", option, value)
        assert f"argument {option}: {says}" in capsys.readouterr().err


def test_jsonl_alone_writes_nothing_to_standard_output(tiny_checkpoint, tmp_path, capsys):
    """As --help says: the list goes to standard output unless --jsonl alone names a file."""
    lines = tmp_path / "poses.jsonl"
    assert _predict(tiny_checkpoint, IMAGES[0], "--jsonl", lines) == 0
    assert capsys.readouterr().out == "" and len(lines.read_text().splitlines()) == 1
    assert _predict(tiny_checkpoint, IMAGES[0]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 1


def test_a_box_of_zero_size_is_used_with_a_warning(tiny_checkpoint, tmp_path, capsys):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({IMAGES[0].name: [[10, 10, 10, 10], [10, 10, 200, 300]]}))
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, IMAGES[0], "--boxes", boxes, "--out", out) == 0
    err = capsys.readouterr().err
    assert "1 of 2 boxes have zero width and height (box 0: [10.0, 10.0, 10.0, 10.0])" in err
    point, person = json.loads(out.read_text())
    assert {tuple(k[:2]) for k in point["keypoints"]} == {(10.0, 10.0)}
    assert len({tuple(k[:2]) for k in person["keypoints"]}) > 1


def test_images_of_two_folders_with_the_same_name_are_warned_of(tiny_checkpoint, tmp_path, capsys):
    for folder, image in (("a", IMAGES[0]), ("b", IMAGES[1])):
        (tmp_path / folder / "sub").mkdir(parents=True)
        shutil.copy(image, tmp_path / folder / "same-name.jpg")
        shutil.copy(image, tmp_path / folder / "sub" / "same-name.jpg")  # sub/same-name.jpg
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, tmp_path / "a", "--out", out) == 0
    assert "more than once" not in capsys.readouterr().err  # names relative to the folder
    out = tmp_path / "both.json"
    assert _predict(tiny_checkpoint, tmp_path / "a", tmp_path / "b", "--out", out) == 0
    err = capsys.readouterr().err
    a, b = tmp_path / "a" / "same-name.jpg", tmp_path / "b" / "same-name.jpg"
    assert (
        f"2 image names occur more than once among the inputs (same-name.jpg: {a} and {b})" in err
    )
    assert err.count("more than once") == 1  # said once, though the job lists its inputs twice
    assert [r["image"] for r in json.loads(out.read_text())] == ["same-name.jpg",
            "sub/same-name.jpg", "same-name.jpg", "sub/same-name.jpg"]  # fmt: skip
