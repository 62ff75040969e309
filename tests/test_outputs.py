"""Outputs never cost the user a file: no output replaces an input or another output, a failed
run leaves the earlier complete output as it was, an interrupted one keeps what it has without
replacing a complete file, and files get the permissions the umask gives."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
from conftest import IMAGES

import nextpose
from nextpose import predictor
from nextpose.cli import main
from nextpose.fileio import AtomicFile
from nextpose.structures import Frame
from nextpose.writers import JsonListWriter


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in IMAGES[:2]:
        shutil.copy(path, folder / path.name)
    return folder


def _predict(tiny_checkpoint, *args):
    return main(["predict", str(tiny_checkpoint), *map(str, args)])


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_outputs_never_replace_inputs(tiny_checkpoint, photos, tmp_path, capsys):
    before = _snapshot(photos)
    image = photos / IMAGES[0].name
    cases = [
        ([image, "--out", image], "--out"),
        ([photos, "--draw", photos], "--draw"),
        ([photos, "--draw", photos / "sub"], "--draw"),
        ([image, "--out", tmp_path / "a.json", "--jsonl", tmp_path / "a.json"], "same file"),
        ([photos, "--out", photos / "new.jpg"], "--out"),
    ]
    for args, message in cases:
        assert _predict(tiny_checkpoint, *args) == 2, args
        assert message in capsys.readouterr().err
    assert _snapshot(photos) == before
    # Drawing a file input next to itself would write over it: refused before it is touched.
    assert _predict(tiny_checkpoint, image, "--draw", photos) == 2
    assert _snapshot(photos) == before


def test_drawn_image_never_overwrites_a_file_input(tiny_checkpoint, tmp_path, capsys):
    """A file input whose drawing would land on it (same name, .jpg, in the --draw folder)."""
    out = tmp_path / "out"
    out.mkdir()
    image = out / IMAGES[0].name
    shutil.copy(IMAGES[0], image)
    before = image.read_bytes()
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(IMAGES[0], other / IMAGES[0].name)
    assert _predict(tiny_checkpoint, other / IMAGES[0].name, image, "--draw", out) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_a_failed_rerun_keeps_the_complete_earlier_output(tiny_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, IMAGES[0], IMAGES[1], "--out", out) == 0
    complete = out.read_bytes()
    assert len(json.loads(complete)) == 2

    real = predictor.PoseEstimator.engine

    def failing_engine(self, detector=None):
        engine = real(self, detector)
        run = engine.run

        def run_then_fail(tasks, flip=None, live=False):
            for i, result in enumerate(run(tasks, flip, live)):
                if i == 1:
                    raise RuntimeError("the machine failed midway")
                yield result

        engine.run = run_then_fail
        return engine

    monkeypatch.setattr(predictor.PoseEstimator, "engine", failing_engine)
    with pytest.raises(RuntimeError, match="midway"):
        _predict(tiny_checkpoint, IMAGES[0], IMAGES[1], "--out", out)
    assert out.read_bytes() == complete
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_an_interrupted_run_keeps_what_it_has_beside_a_complete_file(tmp_path):
    image = np.zeros((10, 10, 3), np.uint8)
    frame = Frame(0, "a.jpg", 1, nextpose.Poses.empty(), image)
    target = tmp_path / "poses.json"
    first = JsonListWriter(target)
    first.write({"image": "x"})
    assert first.keep_partial() == target  # nothing there before: under its own name
    second = JsonListWriter(target)
    for record in [*frame.to_records(), {"image": "y"}]:
        second.write(record)
    partial = second.keep_partial()
    assert partial == tmp_path / "poses.partial.json"
    assert json.loads(target.read_text()) == [{"image": "x"}]
    assert json.loads(partial.read_text()) == [{"image": "y"}]


def test_outputs_honour_the_umask(tiny_checkpoint, tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "poses.json"
        assert _predict(tiny_checkpoint, IMAGES[0], "--out", out, "--jsonl", tmp_path / "p.jsonl",
                        "--draw", tmp_path / "drawn") == 0  # fmt: skip
        for path in (out, tmp_path / "p.jsonl", tmp_path / "drawn" / IMAGES[0].name):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        with AtomicFile(tmp_path / "x.bin", "wb") as f:
            f.write(b"1")
        assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_records_are_strict_json(tiny_checkpoint):
    poses = nextpose.load(str(tiny_checkpoint)).predict(IMAGES[0], [[10, 10, 100, 200]])
    poses.scores[0, 0] = np.nan
    poses.keypoints[0, 1] = np.inf
    for records in (poses.to_records("a.jpg"), poses.to_coco(1)):
        text = json.dumps(records, allow_nan=False)  # raises on NaN / Infinity
        assert "null" in text


def test_boxes_of_absurd_size_are_refused(tiny_checkpoint):
    est = nextpose.load(str(tiny_checkpoint))
    with pytest.raises(nextpose.InputError, match="at most 1e9 pixels"):
        est.predict(IMAGES[0], [[0, 0, 3e38, 3e38]])


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_log(monkeypatch, caplog):
    import logging
    import sys

    from nextpose.progress import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="nextpose")
    bar = Progress(3, "pose", "box", enabled=True, interval=0)
    assert bar.bar.disable  # no bar drawn into a log
    for _ in bar.iterate(range(3)):
        pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[-1].startswith("pose: 3/3 (") and "box/s" in lines[-1]
    quiet = Progress(3, "pose", "box", enabled=None)  # the pipeline's default: tty only
    assert quiet.bar.disable and not quiet.lines


def test_an_input_named_by_a_glob_pattern_is_protected_too(tiny_checkpoint, photos, capsys):
    image = photos / IMAGES[0].name
    before = image.read_bytes()
    assert _predict(tiny_checkpoint, str(photos / "*.jpg"), "--out", image) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert image.read_bytes() == before
