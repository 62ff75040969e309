"""Outputs never cost the user a file: no output replaces an input or another output, a failed
run leaves the earlier complete output as it was, an interrupted one keeps what it has without
replacing a complete file, and files get the permissions the umask gives."""

import json
import os
import shutil
import stat

import numpy as np
import pytest
from conftest import ANN_FILE, IMAGES

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
    return {p.name: p.read_bytes() if p.is_file() else None for p in sorted(folder.iterdir())}


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


def test_outputs_never_replace_the_boxes_or_weights_read(tiny_checkpoint, tmp_path, capsys):
    """Not only the images: the boxes file, the checkpoint and the detector's weights are
    inputs too, and eval's annotation, detection and results files."""
    model = tmp_path / "model.pth"
    shutil.copy(tiny_checkpoint, model)
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps({IMAGES[0].name: [[10, 20, 200, 300]]}))
    weights = tmp_path / "detector.pth"
    weights.write_bytes(b"not read: refused before")
    read = [model, boxes, weights]
    before = [p.read_bytes() for p in read]
    cases = [
        [model, IMAGES[0], "--boxes", boxes, "--out", boxes],
        [model, IMAGES[0], "--boxes", boxes, "--jsonl", boxes],
        [model, IMAGES[0], "--out", model],
        ["resnext50_coco_256x192", IMAGES[0], "--checkpoint", model, "--jsonl", model],
        [model, IMAGES[0], "--detector", "--detector-weights", weights, "--out", weights],
    ]
    for args in cases:
        assert main(["predict", *map(str, args)]) == 2, args
        assert "would overwrite an input" in capsys.readouterr().err
    assert [p.read_bytes() for p in read] == before

    from conftest import COCO

    ann = tmp_path / "ev" / "keypoints.json"
    ann.parent.mkdir()
    shutil.copy(ANN_FILE, ann)
    args = [str(model), "--images", str(COCO), "--ann-file", str(ann), "--gt-boxes"]
    assert main(["eval", *args, "--out", str(ann.parent)]) == 2
    assert "--out" in capsys.readouterr().err and ann.read_bytes() == ANN_FILE.read_bytes()
    results = tmp_path / "scored" / "metrics.json"
    results.parent.mkdir()
    results.write_text("[]")
    score = ["eval", "--results", str(results), "--ann-file", str(ANN_FILE)]
    assert main([*score, "--out", str(results.parent)]) == 2
    assert results.read_text() == "[]"


def test_a_run_that_reads_nothing_leaves_earlier_outputs(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    out, lines, new = tmp_path / "poses.json", tmp_path / "poses.jsonl", tmp_path / "new.json"
    out.write_text('["earlier"]')
    lines.write_text('"earlier"\n')
    assert _predict(tiny_checkpoint, bad, "--out", out, "--jsonl", lines) == 1
    err = capsys.readouterr().err
    assert f"nothing was read: {out} and {lines} left as they were" in err
    assert out.read_text() == '["earlier"]' and lines.read_text() == '"earlier"\n'
    assert _predict(tiny_checkpoint, bad, "--out", new) == 1  # no earlier file: a valid one
    assert json.loads(new.read_text()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.jpg", "new.json", *sorted(
        [out.name, lines.name])]  # fmt: skip


def test_out_in_the_draw_folder_keeps_both(tiny_checkpoint, tmp_path, capsys):
    drawn = tmp_path / "drawn"
    out = drawn / IMAGES[0].with_suffix(".jpg").name  # where its drawing would go
    assert _predict(tiny_checkpoint, IMAGES[0], "--draw", drawn, "--out", out) == 0
    assert json.loads(out.read_text())[0]["image"].endswith(IMAGES[0].name)
    other = drawn / f"{out.stem}-2.jpg"
    assert nextpose.read_image(other).shape == nextpose.read_image(IMAGES[0]).shape


@pytest.mark.parametrize(
    ("verb", "message"),
    [
        (["predict", "{ckpt}", "{image}", "--out", "{image}/poses.json"], "is a file, not"),
        (["predict", "{ckpt}", "{image}", "--jsonl", "{tmp}"], "is a folder, not a file"),
        (["export", "{ckpt}", "{tmp}/pose"], "the output must be an .onnx file"),
        (["export", "{ckpt}", "{image}"], "the output must be an .onnx file"),
        (["export", "{ckpt}", "{image}/pose.onnx"], "is a file, not a folder"),
        (["export", "{ckpt}", "{tmp}/folder.onnx"], "is a folder, not a file"),
        (["convert", "{ckpt}", "{tmp}/folder.safetensors"], "is a folder, not a file"),
        (["convert", "{ckpt}", "{image}/w.safetensors"], "is a file, not a folder"),
        (
            ["eval", "--results", "{image}", "--ann-file", "{ann}", "--out", "{tmp}/ev"],
            "is a folder, not a file",
        ),
    ],
)
def test_outputs_that_cannot_be_files_are_refused_up_front(
    tiny_checkpoint, tmp_path, capsys, verb, message
):
    image = tmp_path / "photo.jpg"
    shutil.copy(IMAGES[0], image)
    (tmp_path / "folder.onnx").mkdir()
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "ev" / "metrics.json").mkdir(parents=True)
    before = _snapshot(tmp_path)
    names = {"ckpt": tiny_checkpoint, "image": image, "tmp": tmp_path, "ann": ANN_FILE}
    assert main([a.format(**names) for a in verb]) == 2
    assert message in capsys.readouterr().err
    assert _snapshot(tmp_path) == before  # no temporary file left either


def test_an_output_that_is_a_pipe_or_a_link_is_written_through(tiny_checkpoint, tmp_path):
    """``--out`` naming a pipe (``/dev/stdout`` under ``|``) or a device is written to, never
    renamed over (that replaced ``/dev/null`` itself); a link is written through to its file,
    and the link stays."""
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    try:
        assert main(["predict", str(tiny_checkpoint), str(IMAGES[0]), "--out", str(fifo),
                     "--no-progress"]) == 0  # fmt: skip
    finally:
        if reader.is_alive():  # unblock the reader if nothing was written
            with open(fifo, "wb"):
                pass
        reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and len(json.loads(got[0])) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no parts, no temp files
    real = tmp_path / "results" / "poses.json"
    real.parent.mkdir()
    real.write_text("[]")
    link = tmp_path / "poses.json"
    link.symlink_to(real)
    assert main(["predict", str(tiny_checkpoint), str(IMAGES[0]), "--out", str(link),
                 "--no-progress"]) == 0  # fmt: skip
    assert link.is_symlink() and len(json.loads(real.read_text())) == 1


def test_a_drawn_camera_video_holds_a_frame_in_place_of_the_dropped_ones(tmp_path):
    import cv2

    from nextpose.writers import DrawingWriter

    def frame(index: int, level: int) -> Frame:
        image = np.full((48, 64, 3), level, np.uint8)
        return Frame(index, "camera0", index, nextpose.Poses.empty(), image, frame=index, fps=10.0)

    drawer = DrawingWriter(tmp_path / "drawn")
    for index, level in [(0, 50), (3, 150), (4, 250)]:  # frames 1 and 2 were dropped
        drawer.video_frame(frame(index, level))
    drawer.end_video()
    capture = cv2.VideoCapture(str(tmp_path / "drawn" / "camera0.mp4"))
    levels = []
    while (read := capture.read())[0]:
        levels.append(int(np.median(read[1])))
    capture.release()
    assert len(levels) == 5
    assert all(abs(a - b) <= 8 for a, b in zip(levels, [50, 50, 50, 150, 250], strict=True))
