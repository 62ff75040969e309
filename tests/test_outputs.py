"""Outputs never cost the user a file: no output replaces an input or another output, a failed
run leaves the earlier complete output as it was, an interrupted one keeps what it has without
replacing a complete file, and files get the permissions the umask gives."""

import json
import os
import shutil
import stat

import cv2
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
    assert f"--draw {out}: holds the input {image}" in capsys.readouterr().err
    assert image.read_bytes() == before


def test_a_draw_folder_holding_an_input_is_refused(tiny_checkpoint, tmp_path, capsys):
    """The drawing of ``shot.png`` is ``shot.jpg``: a --draw folder beside an input file, or
    above an input folder, would replace the user's other files there (none an input)."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    cv2.imwrite(str(photos / "shot.png"), cv2.imread(str(IMAGES[0])))
    shutil.copy(IMAGES[1], photos / "shot.jpg")  # the user's, not an input
    shutil.copy(IMAGES[1], photos / "sub" / "a.jpg")
    before = _snapshot(photos)
    job = ("--out", tmp_path / "p.json")  # the resumable job's path too
    for args in ((photos / "shot.png", "--draw", photos), (photos / "sub", "--draw", photos),
                 (photos / "shot.png", *job, "--draw", photos)):  # fmt: skip
        assert _predict(tiny_checkpoint, *args) == 2
        assert f"--draw {photos}: holds the input {photos}" in capsys.readouterr().err
        assert _snapshot(photos) == before
    assert not (tmp_path / "p.json.parts").exists()


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


def test_a_failed_write_names_its_file_and_leaves_no_folder_it_made(tmp_path):
    """A write that fails in the block (a full disk) is an OutputError naming the file; the
    folders made for it go with the temporary file, a folder holding another file stays."""
    import errno

    from nextpose.errors import OutputError

    target = tmp_path / "a" / "b" / "out.bin"
    refused = r"a/b/out\.bin: cannot write \(No space left"
    with pytest.raises(OutputError, match=refused) as e, AtomicFile(target, "wb"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert e.value.reason == "No space left on device"
    assert list(tmp_path.iterdir()) == []
    with AtomicFile(tmp_path / "a" / "kept.txt") as f:
        f.write("x")
    with pytest.raises(OutputError), AtomicFile(target, "wb"):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert [p.name for p in tmp_path.rglob("*")] == ["a", "kept.txt"]


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
        (["export", "{ckpt}", "{tmp}/new.onnx/"], "a folder name; name the .onnx file"),
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


def test_standard_output_named_dash_or_dev_stdout_keeps_what_the_shell_redirect_holds(
    tiny_checkpoint, tmp_path
):
    """``--out -`` and ``--jsonl -`` write standard output (no file named ``-``); ``/dev/stdout``
    under ``>>`` appends to the file the shell opened (it was replaced by a renamed file);
    ``-`` twice, or for an output that is no stream, is refused naming the option."""
    import subprocess
    import sys

    def run(*args: str, stdout=subprocess.PIPE) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "nextpose", "predict", str(tiny_checkpoint),
                   str(IMAGES[0]), "--no-progress", *args]  # fmt: skip
        return subprocess.run(command, cwd=tmp_path, stdout=stdout, stderr=subprocess.PIPE,
                              text=True, timeout=300)  # fmt: skip

    out = run("--out", "-")
    assert out.returncode == 0 and len(json.loads(out.stdout)) == 1, out.stderr
    lines = run("--jsonl", "-", "--out", "poses.json")
    assert lines.returncode == 0, lines.stderr
    assert json.loads(lines.stdout)["poses"] == json.loads((tmp_path / "poses.json").read_text())
    log = tmp_path / "log.txt"
    log.write_text("earlier\n")
    with open(log, "a") as appended:
        assert run("--out", "/dev/stdout", stdout=appended).returncode == 0
    earlier, rest = log.read_text().split("\n", 1)
    assert earlier == "earlier" and len(json.loads(rest)) == 1
    both = run("--out", "-", "--jsonl", "-")
    assert both.returncode == 2 and "the same file as --out" in both.stderr
    drawn = run("--draw", "-")
    assert drawn.returncode == 2 and "--draw: '-' (standard output) cannot" in drawn.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "poses.json"]


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


def test_an_output_linked_to_an_input_image_is_refused(tiny_checkpoint, photos, tmp_path, capsys):
    """An output name (``.json``) that is a link to an image of an input folder, and a drawing
    that would land on the file a linked input image is: both would write over an input."""
    before = _snapshot(photos)
    link = tmp_path / "poses.json"
    link.symlink_to(photos / IMAGES[1].name)
    for option in ("--out", "--jsonl"):
        assert _predict(tiny_checkpoint, photos, option, link) == 2
        assert "would overwrite an input" in capsys.readouterr().err
    chosen = tmp_path / "chosen"  # a folder of links to the photos, drawn into the photos
    chosen.mkdir()
    (chosen / IMAGES[0].name).symlink_to(photos / IMAGES[0].name)
    assert _predict(tiny_checkpoint, chosen, "--draw", photos, "--out", tmp_path / "a.json") == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert _snapshot(photos) == before


def test_a_refused_draw_leaves_no_parts_and_the_corrected_command_runs(
    tiny_checkpoint, photos, tmp_path, capsys
):
    """A drawing that would land on its input image is found once the names are given out."""
    out, image = tmp_path / "poses.json", photos / IMAGES[0].name
    assert _predict(tiny_checkpoint, image, "--out", out, "--draw", photos) == 2
    assert f"--draw {photos}: holds the input {image}" in capsys.readouterr().err
    assert not (tmp_path / "poses.json.parts").exists()
    assert _predict(tiny_checkpoint, image, "--out", out, "--draw", tmp_path / "drawn") == 0
    assert len(json.loads(out.read_text())) == 1


def test_a_second_job_into_the_same_output_is_refused_while_the_first_runs(
    tiny_checkpoint, photos, tmp_path, capsys
):
    """The running job's lock (held here as the first run would hold it) stops a second one,
    with --resume too; the parts are left to their owner."""
    from nextpose.fileio import FileLock
    from nextpose.sharded import LOCK

    out, parts = tmp_path / "poses.json", tmp_path / "poses.json.parts"
    parts.mkdir()
    lock = FileLock(parts / LOCK)
    lock.acquire()
    try:
        for extra in ((), ("--resume",)):
            assert _predict(tiny_checkpoint, photos, "--out", out, *extra) == 2
            err = capsys.readouterr().err
            assert "another predict run is writing it now" in err and f"pid {os.getpid()}" in err
        assert not out.exists() and [p.name for p in parts.iterdir()] == [LOCK]
    finally:
        lock.release()
    assert _predict(tiny_checkpoint, photos, "--out", out) == 0  # a lock left by a dead run: no
    assert not parts.exists()


def test_a_job_writing_another_jobs_jsonl_is_refused_while_that_one_runs(
    tiny_checkpoint, photos, tmp_path, monkeypatch, capsys
):
    """Each output file is locked, not only the parts folder of --out: a second job whose --out
    differs but whose --jsonl (or --out) is the running job's --jsonl is refused, and the
    running job's outputs are complete."""
    from nextpose import sharded

    run_blocks, second = sharded._run_blocks, []
    p_json, p_jsonl = tmp_path / "p.json", tmp_path / "p.jsonl"

    def running(*args, **kwargs):
        if not second:  # job A is running: B and C try to write its --jsonl
            monkeypatch.setattr(sharded, "_run_blocks", run_blocks)
            b = ("--out", tmp_path / "q.json", "--jsonl", p_jsonl)
            second.append((_predict(tiny_checkpoint, photos, *b), capsys.readouterr().err))
            c = ("--out", p_jsonl)
            second.append((_predict(tiny_checkpoint, photos, *c), capsys.readouterr().err))
        return run_blocks(*args, **kwargs)

    monkeypatch.setattr(sharded, "_run_blocks", running)
    assert _predict(tiny_checkpoint, photos, "--out", p_json, "--jsonl", p_jsonl) == 0
    for (code, err), option in zip(second, ("--jsonl", "--out"), strict=True):
        assert code == 2, err
        assert f"{option} {p_jsonl}: another predict run is writing it now" in err, err
        assert "remove the folder" not in err
    assert len(p_jsonl.read_text().splitlines()) == 2  # A's, one line per image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json", "p.jsonl", "photos"]


def test_ctrl_c_before_any_image_is_done_writes_nothing(
    tiny_checkpoint, photos, tmp_path, monkeypatch, capsys
):
    from nextpose import sharded

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sharded, "_run_blocks", stopped)
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, photos, "--out", out) == 130
    err = capsys.readouterr().err
    assert "before any image was done; nothing written" in err and "--resume" not in err
    assert list(tmp_path.iterdir()) == [photos]


@pytest.mark.parametrize("verb", ["predict", "eval", "export", "convert"])
def test_a_disk_that_refuses_the_output_is_an_error_not_a_traceback(
    verb, tiny_checkpoint, photos, tmp_path, monkeypatch, capsys
):
    """A full disk (the sync or a write fails) or a read-only one (no temporary file can be
    made): each verb ends with ``error: <the output>: cannot write (...)`` and leaves no file
    behind, and an earlier complete output as it was."""
    import errno
    import tempfile

    out = tmp_path / "out"
    args = {
        "predict": ["predict", str(tiny_checkpoint), str(photos), "--out", str(out / "p.json")],
        "eval": ["eval", str(tiny_checkpoint), "--ann-file", str(ANN_FILE), "--images",
                 str(IMAGES[0].parent), "--gt-boxes", "--no-flip", "--out", str(out)],
        "export": ["export", str(tiny_checkpoint), str(out / "m.onnx")],
        "convert": ["convert", str(tiny_checkpoint), str(out / "m.safetensors")],
    }[verb]  # fmt: skip
    if verb == "export":
        pytest.importorskip("onnx")
    real_fsync, real_mkstemp, real_fdopen = os.fsync, tempfile.mkstemp, os.fdopen

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    class Filling:
        """A file whose writes fail as on a full disk (before the sync: torch.save's writer
        turned that into its own 'unexpected pos' error, the others into a bare strerror)."""

        def __init__(self, file):
            self.file = file

        def write(self, data):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    for broken, reason in (
        ((os, "fsync", full), "No space left"),
        ((tempfile, "mkstemp", read_only), "Read-only"),
        ((os, "fdopen", lambda *a, **k: Filling(real_fdopen(*a, **k))), "quota exceeded"),
    ):
        out.mkdir(exist_ok=True)
        earlier = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        monkeypatch.setattr(*broken)
        code = main(args)
        monkeypatch.setattr(os, "fsync", real_fsync)
        monkeypatch.setattr(tempfile, "mkstemp", real_mkstemp)
        monkeypatch.setattr(os, "fdopen", real_fdopen)
        err = capsys.readouterr().err
        assert code == 2, err[-2000:]
        assert "Traceback" not in err and "cannot write" in err and reason in err, err[-2000:]
        left = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
        assert left == earlier
        assert not (out / "p.json.parts").exists()  # refused before any part: no parts folder
        assert not [p for p in out.rglob(".*") if p.is_file()]  # no temporary file
        # The same command then writes a complete output (over which the next case fails).
        assert main([*args, "--resume"] if verb == "predict" else args) == 0
        capsys.readouterr()


@pytest.mark.parametrize("option", ["--out", "--jsonl", "--draw"])
def test_an_empty_output_path_is_refused_by_the_parser(option, tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", str(tiny_checkpoint), str(IMAGES[0]), option, ""])
    assert stop.value.code == 2
    assert f"argument {option}: expected a path, got an empty string" in capsys.readouterr().err


def _frames(path) -> int:
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    return count


@pytest.mark.parametrize("job", [(), ("--out", "poses.json")], ids=["stdout", "job"])
def test_ctrl_c_in_a_drawn_video_keeps_the_earlier_complete_drawing(
    job, tiny_checkpoint, tmp_path, monkeypatch, capsys
):
    """An interrupted video's drawing never replaces a complete one: printed to standard output
    it is kept beside it as NAME.partial.mp4; in a job (which draws the video again on
    --resume) it is dropped. No hidden temporary video is left either way."""
    from nextpose.writers import DrawingWriter

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 120))
    for path in IMAGES:
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 120)))
    writer.release()
    drawn = tmp_path / "drawn"
    job = [str(tmp_path / a) if a.endswith(".json") else a for a in job]
    assert _predict(tiny_checkpoint, video, "--draw", drawn, "--no-progress") == 0
    complete = (drawn / "clip.mp4").read_bytes()
    assert _frames(drawn / "clip.mp4") == len(IMAGES)
    draw, calls = DrawingWriter.video_frame, []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # two frames drawn
            raise KeyboardInterrupt
        draw(self, *args, **kwargs)

    monkeypatch.setattr(DrawingWriter, "video_frame", interrupted)
    capsys.readouterr()
    assert _predict(tiny_checkpoint, video, "--draw", drawn, "--no-progress", *job) == 130
    assert (drawn / "clip.mp4").read_bytes() == complete
    left = sorted(p.name for p in drawn.iterdir())
    if job:
        assert left == ["clip.mp4"]
    else:
        assert left == ["clip.mp4", "clip.partial.mp4"]
        assert _frames(drawn / "clip.partial.mp4") == 2
        assert str(drawn / "clip.partial.mp4") in capsys.readouterr().err


def test_a_refused_predict_leaves_no_drawing_folder(tiny_checkpoint, tmp_path, capsys):
    """A job refused after its checks (the parts of another stopped run are there) removes the
    --draw folders it made for nothing."""
    (tmp_path / "poses.json.parts").mkdir()
    (tmp_path / "poses.json.parts" / "part-001-00000.jsonl").write_text("")
    args = ["--out", tmp_path / "poses.json", "--draw", tmp_path / "drawn" / "here"]
    assert _predict(tiny_checkpoint, IMAGES[0], *args) == 2
    assert "holds parts but no job.json" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.json.parts"]


def test_a_predict_that_draws_nothing_leaves_no_drawing_folder(tiny_checkpoint, tmp_path, capsys):
    """Outside the resumable job too: an input none of which is readable (exit 1) leaves no
    empty --draw folder behind."""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    assert _predict(tiny_checkpoint, broken, "--draw", tmp_path / "drawn" / "here") == 1
    assert "skipped" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.jpg"]


def test_an_output_inside_the_jobs_parts_folder_is_refused_before_any_work(
    tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "poses.json"
    assert _predict(tiny_checkpoint, IMAGES[0], "--out", out, "--jsonl", f"{out}.parts") == 2
    assert f"--jsonl {out}.parts: the job keeps its parts in {out}.parts" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_killed_runs_hidden_video_is_removed_when_the_video_is_drawn_again(tmp_path):
    """SIGKILL while drawing a video leaves ``.<stem>.<pid>.tmp.mp4``; the run that draws that
    video again removes it (its process is gone), not a live process's."""
    import subprocess
    import sys

    from nextpose.writers import DrawingWriter

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    stale = drawn / f".clip.{dead}.tmp.mp4"
    live = drawn / f".clip.{os.getppid()}.tmp.mp4"
    other = drawn / f".clip-2.{dead}.tmp.mp4"
    for path in (stale, live, other):
        path.write_bytes(b"half a video")
    image = cv2.imread(str(IMAGES[0]))[:, :, ::-1].copy()
    drawer = DrawingWriter(drawn)
    drawer.video_frame(Frame(0, "clip.mp4", 0, nextpose.Poses.empty(), image, fps=5.0))
    drawer.end_video()
    assert not stale.exists() and live.exists() and other.exists()
    assert _frames(drawn / "clip.mp4") == 1
