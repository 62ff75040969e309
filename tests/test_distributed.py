"""Evaluation and batch prediction on several processes (issue 16): ``torchrun`` with Gloo on the
CPU gives the bits of one process, and a killed prediction run resumed gives an unbroken run's
output.

Every multi-process test is the real command under ``torchrun --nproc-per-node N``; the
single-process runs it is compared with are the same command without torchrun.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ANN_FILE, COCO, DET_FILE, ORACLE_RUNS, refused

from nextpose import distributed, sharded
from nextpose.cli import main
from nextpose.data.coco import CocoKeypoints
from nextpose.evaluation.evaluate import engine_order, shard_instances
from nextpose.sharded import Unit, _assign, read_part


def _env() -> dict[str, str]:
    src = str(Path(distributed.__file__).parents[1])
    path = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": path}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nextpose(args: list[str], procs: int, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command under torchrun with ``procs`` Gloo processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "nextpose", *args]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _one_process(args: list[str]) -> None:
    """The command in this process, with the thread count of torchrun's processes
    (OMP_NUM_THREADS=1): convolutions summed by another number of threads can differ in the
    last bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(args) == 0
    finally:
        torch.set_num_threads(before)


# -- sharding rules ----------------------------------------------------------------------


def test_split_evenly():
    assert distributed.split_evenly(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert distributed.split_evenly(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert distributed.split_evenly(0, 2) == [(0, 0), (0, 0)]


@pytest.mark.parametrize("world", [1, 2, 3, 5, 200])
@pytest.mark.parametrize("batch", [1, 8, 32])
def test_eval_shards_are_whole_batches_of_one_process(world, batch):
    instances = CocoKeypoints(ANN_FILE).detection_instances(DET_FILE)
    shares = [shard_instances(instances, batch, r, world) for r in range(world)]
    joined = np.concatenate(shares)
    np.testing.assert_array_equal(joined, engine_order(instances))  # each box once, in order
    starts = np.cumsum([0] + [len(s) for s in shares])[:-1]
    # every share begins at a batch boundary (empty shares past the end aside)
    assert all(s % batch == 0 for s, share in zip(starts, shares, strict=True) if len(share))
    batches = [-(-len(s) // batch) for s in shares]
    assert max(batches) - min(batches) <= 1  # balanced by box count (whole batches)


def test_units_are_shared_by_weight_deterministically():
    units = [Unit(0, 0, 4), Unit(0, 4, 8), Unit(0, 8, 10), Unit(1), Unit(2, 0, 4)]
    shares = _assign(units, 2)
    assert shares == _assign(units, 2)
    given = [u for s in shares for u in s]
    assert len(given) == len(units) and set(given) == set(units)
    loads = [sum(u.weight for u in s) for s in shares]
    assert loads == [8, 7]
    assert _assign(units[:1], 3) == [[units[0]], [], []]  # more ranks than units


def test_a_torn_last_line_ends_the_part(tmp_path):
    path = tmp_path / "part-001-00000.jsonl"
    good = [{"g": 0, "i": 0, "people": 0, "out": [], "jsonl": '{"poses": []}'},
            {"g": 0, "i": 1, "skipped": "x.jpg"}]  # fmt: skip
    text = "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text + '{"g": 0, "i": 2, "people": 1, "out": ["{\\"im')  # killed here
    assert list(read_part(path)) == good
    path.write_text(text + '{"g": 0, "i": 2}\n')  # complete JSON, but not a record
    assert list(read_part(path)) == good
    path.write_text(text + json.dumps(good[0])[:-1])  # all but the newline... and the brace
    assert list(read_part(path)) == good
    path.write_text(text + json.dumps(good[0]))  # all but the newline
    assert list(read_part(path)) == good


# -- evaluation --------------------------------------------------------------------------


# The ground-truth boxes (1, 3, 5, 5 per image) in batches of 2: batches join images.
EVAL = ["--ann-file", str(ANN_FILE), "--images", str(COCO), "--batch-size", "2", "--no-progress"]
BOXES = len(CocoKeypoints(ANN_FILE).ground_truth_instances())


@pytest.fixture(scope="module")
def eval_one(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval1")
    _one_process(["eval", str(tiny_checkpoint), *EVAL, "--out", str(out)])
    return out


@pytest.mark.slow
def test_eval_on_three_processes_equals_one(tiny_checkpoint, eval_one, tmp_path):
    """Three processes on 7 batches: shares of 3, 2 and 2 (two processes: the oracle test)."""
    procs = 3
    args = ["eval", str(tiny_checkpoint), *EVAL[:-1], "--out", str(tmp_path)]  # with progress
    done = _nextpose(args, procs)
    for name in ("keypoints.json", "metrics.json"):
        assert (tmp_path / name).read_bytes() == (eval_one / name).read_bytes()
    assert done.stdout.count("AP50") == 1  # rank 0 alone prints the table
    # One progress report (rank 0's, not a terminal: a line) counting every rank's boxes, and
    # the closing line with the world size.
    assert done.stderr.count(f"pose: {BOXES}/{BOXES}") == 1, done.stderr
    assert done.stderr.count(f"4 images, {BOXES} boxes in") == 1
    assert f"boxes/s), {procs} processes" in done.stderr


@pytest.mark.slow
def test_oracle_equality_holds_for_a_two_process_eval(oracle_weights, tmp_path):
    """The seed-0 resnext50 weights on the sample, ground-truth boxes in batches of 4 (4 batches:
    2 per process), flip: the results file and metrics of two processes are the reference's
    (as tests/test_oracle.py checks one, with the detector's boxes too)."""
    args = ["eval", "resnext50_coco_256x192", "--checkpoint", str(oracle_weights),
            "--ann-file", str(ANN_FILE), "--images", str(COCO), "--gt-boxes", "--batch-size", "4",
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    _nextpose(args, 2, timeout=900)
    ours = json.loads((tmp_path / "keypoints.json").read_text())
    ref = json.loads((ORACLE_RUNS / "results_gt_flip.keypoints.json").read_text())
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        assert (o["image_id"], o["category_id"]) == (r["image_id"], r["category_id"])
        np.testing.assert_allclose(o["bbox"], r["bbox"], rtol=0, atol=1e-3)
        kpts_o, kpts_r = np.reshape(o["keypoints"], (17, 3)), np.reshape(r["keypoints"], (17, 3))
        assert np.abs(kpts_o[:, :2] - kpts_r[:, :2]).max() <= 1e-3
        np.testing.assert_allclose(kpts_o[:, 2], kpts_r[:, 2], rtol=1e-5)
        assert o["score"] == pytest.approx(r["score"], rel=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = json.loads((ORACLE_RUNS / "metrics_gt_flip.json").read_text())
    from nextpose.evaluation import MMPOSE_METRIC_NAMES

    for name, ref_name in MMPOSE_METRIC_NAMES.items():
        assert metrics[name] == pytest.approx(expected[ref_name], abs=1e-9)


# -- prediction --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def boxes(tmp_path_factory) -> Path:
    """3, 2, 3 and 2 of the detector's boxes of the four images, COCO results: in batches of 2
    they would join images if the blocks did not keep them apart."""
    detections = json.loads(DET_FILE.read_text())
    keep, seen = [], {}
    for d in detections:
        n = seen.setdefault(d["image_id"], 0)
        if n < (3 if len(seen) % 2 else 2):
            keep.append(d)
            seen[d["image_id"]] += 1
    path = tmp_path_factory.mktemp("boxes") / "boxes.json"
    path.write_text(json.dumps(keep))
    return path


@pytest.fixture(scope="module")
def predict_args(tiny_checkpoint, boxes):
    """The predict command line writing ``FOLDER/poses.json`` and ``FOLDER/poses.jsonl``."""

    def args(folder: Path, *extra: str) -> list[str]:
        return ["predict", str(tiny_checkpoint), str(COCO), "--boxes", str(boxes),
                "--batch-size", "2", "--no-progress", "--out", str(folder / "poses.json"),
                "--jsonl", str(folder / "poses.jsonl"), *extra]  # fmt: skip

    return args


def _outputs(folder: Path) -> tuple[bytes, bytes]:
    return (folder / "poses.json").read_bytes(), (folder / "poses.jsonl").read_bytes()


@pytest.fixture(scope="module")
def predict_one(predict_args, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict1")
    _one_process(predict_args(out))
    return out


@pytest.mark.slow
def test_predict_on_two_processes_equals_one(predict_args, predict_one, tmp_path):
    done = _nextpose(predict_args(tmp_path), 2)
    assert _outputs(tmp_path) == _outputs(predict_one)
    assert len(json.loads((tmp_path / "poses.json").read_text())) == 10
    assert "4 images, 10 people" in done.stderr and "2 processes" in done.stderr
    assert not (tmp_path / "poses.json.parts").exists()  # merged and removed


@pytest.mark.slow
def test_more_processes_than_images_and_drawn_names(tiny_checkpoint, tmp_path):
    """Two images of the same name, three processes: one has no work, and the drawn files get
    the names one process gives them (the second ``-2``)."""
    images = []
    for folder, source in (("a", "000000000785.jpg"), ("b", "000000040083.jpg")):
        (tmp_path / folder).mkdir()
        images.append(tmp_path / folder / "person.jpg")
        images[-1].write_bytes((COCO / source).read_bytes())
    args = ["predict", str(tiny_checkpoint), *map(str, images), "--no-progress", "--format",
            "coco", "--batch-size", "1"]  # fmt: skip  # 2 blocks of 1 image
    one, three = tmp_path / "one", tmp_path / "three"
    _one_process([*args, "--out", str(one / "poses.json"), "--draw", str(one / "drawn")])
    _nextpose([*args, "--out", str(three / "poses.json"), "--draw", str(three / "drawn")], 3)
    assert (three / "poses.json").read_bytes() == (one / "poses.json").read_bytes()
    records = json.loads((three / "poses.json").read_text())
    assert [r["image_id"] for r in records] == [0, 1]
    names = sorted(p.name for p in (one / "drawn").iterdir())
    assert names == ["person-2.jpg", "person.jpg"]
    assert sorted(p.name for p in (three / "drawn").iterdir()) == names
    for name in names:  # the same image under the same name (JPEG of the same drawing)
        assert (three / "drawn" / name).read_bytes() == (one / "drawn" / name).read_bytes()


LAUNCHER = """
import os, sys, time
from pathlib import Path

from nextpose import sharded
from nextpose.cli import main

progress = Path(os.environ["KILL_TEST_PROGRESS"])
write = sharded._PartWriter.write


def noting_write(self, record):
    write(self, record)
    with progress.open("a") as f:
        f.write("record\\n")
    time.sleep(0.5)  # gives the test time to kill between records


sharded._PartWriter.write = noting_write
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_predict_killed_and_resumed_equals_an_unbroken_run(predict_args, predict_one, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    progress = tmp_path / "progress.txt"
    args = predict_args(tmp_path)
    env = {**_env(), "KILL_TEST_PROGRESS": str(progress)}
    proc = subprocess.Popen([sys.executable, str(launcher), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 240
    while not (progress.is_file() and progress.read_text().count("record") >= 2):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # two of the four images written
    proc.wait()
    parts = tmp_path / "poses.json.parts"
    (part,) = parts.glob("part-*.jsonl")
    assert len(list(read_part(part))) == 2
    with part.open("a") as f:  # as if killed in the middle of the third record
        f.write('{"g": 0, "i": 2, "people": 3, "out": ["{\\"image\\": \\"000000196')
    assert not (tmp_path / "poses.json").exists()

    code = main(args)  # parts of a stopped run: refused without --resume
    assert code == 2
    done = _nextpose([*args, "--resume"], 2)
    assert _outputs(tmp_path) == _outputs(predict_one)
    assert "(2 from the stopped run)" in done.stderr
    assert not parts.exists()


def test_resume_of_another_job_is_refused(predict_args, tmp_path, capsys):
    parts = tmp_path / "poses.json.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"inputs": ["elsewhere/"], "coco": False}))
    code = main(predict_args(tmp_path, "--resume"))
    refused(code, r"--resume: .*poses\.json\.parts is the run of another job \(.*inputs", capsys)
    code = main(predict_args(tmp_path))
    refused(code, r"holds the parts of a stopped run: pass --resume", capsys)
    # the settings are named as the command line names them (not the description's keys)
    (parts / "job.json").write_text(json.dumps({"coco": True}))
    code = main(predict_args(tmp_path, "--resume"))
    refused(code, r"another job \((?!.*\bcoco\b).*--format", capsys)
    (parts / "job.json").write_text(json.dumps({"block_size": 1}))  # the CLI's --batch-size
    code = main(predict_args(tmp_path, "--resume"))
    refused(code, r"another job \((?!.*block-size).*--batch-size", capsys)
    (parts / "job.json").write_text("[1, 2]")
    refused(main(predict_args(tmp_path, "--resume")), r"job\.json: not a job description", capsys)
    (parts / "job.json").unlink()  # parts of an unknown job: merged, they could repeat images
    (parts / "part-000-00000.jsonl").write_text('{"g": 0, "i": 0, "people": 0, "out": []}\n')
    for extra in ((), ("--resume",)):
        refused(main(predict_args(tmp_path, *extra)), r"holds parts but no job\.json", capsys)


def test_a_parts_folder_holding_other_files_is_neither_used_nor_removed(
    predict_args, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    """OUT.parts that nextpose did not make (a user's folder, an input folder of that name) is
    refused with and without --resume, and left as it was; a job removes only its own files."""
    parts = tmp_path / "poses.json.parts"
    parts.mkdir()
    (parts / "notes.txt").write_text("mine")
    for extra in ([], ["--resume"]):
        code = main(predict_args(tmp_path, *extra))
        refused(code, r"poses\.json\.parts, which holds other files \(notes\.txt\)", capsys)
        assert sorted(p.name for p in parts.iterdir()) == ["notes.txt"]
    shots = tmp_path / "shots.json.parts"  # the input folder itself
    shots.mkdir()
    (shots / "a.jpg").write_bytes((COCO / "000000000785.jpg").read_bytes())
    for extra in ([], ["--resume"]):
        args = ["predict", str(tiny_checkpoint), str(shots), "--out", str(tmp_path / "shots.json"),
                "--no-progress", *extra]  # fmt: skip
        refused(main(args), r"which holds other files \(a\.jpg\)", capsys)
        assert [p.name for p in shots.iterdir()] == ["a.jpg"]
    # A file put into the parts folder while the job runs outlives the job's cleanup.
    real_merge = sharded._merge

    def merge(folder, *args):
        (folder / "kept.txt").write_text("someone else's")
        return real_merge(folder, *args)

    monkeypatch.setattr(sharded, "_merge", merge)
    own = tmp_path / "own"
    own.mkdir()
    assert main(predict_args(own)) == 0
    assert sorted(p.name for p in (own / "poses.json.parts").iterdir()) == ["kept.txt"]


@pytest.fixture
def one_thread():
    """In this process, the thread count of torchrun's processes (see _one_process)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_without_a_stopped_run_is_a_plain_run(
    predict_args, predict_one, tmp_path, one_thread
):
    assert main(predict_args(tmp_path, "--resume")) == 0
    assert _outputs(tmp_path) == _outputs(predict_one)


def test_resume_needs_files_out(tiny_checkpoint, capsys):
    code = main(["predict", str(tiny_checkpoint), str(COCO), "--resume"])
    refused(code, r"--resume needs --out FILE or --jsonl FILE", capsys)


def test_the_python_api_runs_the_same_job(
    tiny_checkpoint, boxes, predict_one, tmp_path, one_thread
):
    import nextpose

    estimator = nextpose.load(tiny_checkpoint, batch_size=2)
    table = nextpose.BoxTable.read(boxes)
    pipeline = nextpose.PosePipeline(estimator, boxes=table)
    summary = nextpose.predict_job(
        pipeline, [str(COCO)], out=tmp_path / "poses.json", jsonl=tmp_path / "poses.jsonl",
        progress=False,
    )  # fmt: skip
    assert (summary.frames, summary.people, summary.world_size) == (4, 10, 1)
    assert _outputs(tmp_path) == _outputs(predict_one)


def _line(g: int, i: int, people: int, tag: str = "") -> dict:
    poses = [{"image": f"{g}-{i}{tag}", "bbox": [0, 0, 1, 1]} for _ in range(people)]
    line = {"image": f"{g}-{i}{tag}", "poses": poses}
    out = [json.dumps(p) for p in poses]
    return {"g": g, "i": i, "people": people, "out": out, "jsonl": json.dumps(line)}


def test_merge_takes_each_image_once_and_a_video_from_the_run_that_finished_it(tmp_path):
    """Group 0: images in blocks, done by two runs (image 1 in both); group 1: a video that a
    killed run left half done and a later run did again."""
    parts = tmp_path / "poses.json.parts"
    parts.mkdir()
    old = [_line(0, 0, 1), _line(0, 1, 2), {"g": 0, "i": 2, "skipped": "bad.jpg"},
           _line(1, 0, 1, " (killed run)"), _line(1, 1, 1, " (killed run)")]  # fmt: skip
    new = [_line(0, 1, 2), _line(0, 3, 0), _line(1, 0, 1), _line(1, 1, 1), _line(1, 2, 3),
           {"g": 1, "end": 3}]  # fmt: skip
    for name, records in (("part-001-00000.jsonl", old), ("part-002-00001.jsonl", new)):
        (parts / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    out, lines = tmp_path / "poses.json", tmp_path / "poses.jsonl"
    frames, people, inputs, failed, paths = sharded._merge(parts, out, lines, ["images", "video"])
    assert (frames, people, inputs, failed) == (6, 8, 3 + 1 + 1, ["bad.jpg"])
    assert paths == [out, lines]
    got = [json.loads(x)["image"] for x in lines.read_text().splitlines()]
    assert got == ["0-0", "0-1", "0-3", "1-0", "1-1", "1-2"]
    assert [r["image"] for r in json.loads(out.read_text())] == [
        "0-0", "0-1", "0-1", "1-0", "1-1", "1-2", "1-2", "1-2"
    ]  # fmt: skip


def test_ctrl_c_keeps_what_is_done_and_resume_finishes(
    predict_args, predict_one, tmp_path, monkeypatch, one_thread, capsys
):
    write, calls = sharded._PartWriter.write, []

    def interrupted(self, record):
        calls.append(record)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(self, record)

    monkeypatch.setattr(sharded._PartWriter, "write", interrupted)
    args = predict_args(tmp_path)
    assert main(args) == 130
    assert "--resume continues from" in capsys.readouterr().err
    kept = json.loads((tmp_path / "poses.json").read_text())  # valid JSON: the first 2 images
    assert {r["image"] for r in kept} == {"000000000785.jpg", "000000040083.jpg"}
    assert len((tmp_path / "poses.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(sharded._PartWriter, "write", write)
    assert main([*args, "--resume"]) == 0
    assert _outputs(tmp_path) == _outputs(predict_one)


def test_resume_removes_the_partial_outputs_its_stopped_run_left_beside_complete_ones(
    predict_args, predict_one, tmp_path, monkeypatch, one_thread, capsys
):
    """A run stopped beside complete earlier outputs keeps its own as NAME.partial.EXT; the
    resume that completes the job removes them (nothing is left that looks like a result)."""
    write, calls = sharded._PartWriter.write, []

    def interrupted(self, record):
        calls.append(record)
        if len(calls) == 3:
            raise KeyboardInterrupt
        write(self, record)

    args = predict_args(tmp_path)
    assert main(args) == 0  # the complete earlier outputs
    monkeypatch.setattr(sharded._PartWriter, "write", interrupted)
    assert main(args) == 130
    partial = sorted(p.name for p in tmp_path.glob("poses.partial.*"))
    assert partial == ["poses.partial.json", "poses.partial.jsonl"]
    assert _outputs(tmp_path) == _outputs(predict_one)  # the complete ones kept
    monkeypatch.setattr(sharded._PartWriter, "write", write)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert not list(tmp_path.glob("poses.partial.*"))
    assert "poses.partial.json: the stopped run's output, complete in" in capsys.readouterr().err
    assert _outputs(tmp_path) == _outputs(predict_one)


def test_an_image_whose_drawing_failed_is_drawn_by_the_resume(
    predict_args, predict_one, tmp_path, monkeypatch, one_thread, capsys
):
    """A drawing that cannot be written (a full disk) fails the run before its image counts as
    done: the error says --resume continues, and the resume draws it (it was skipped)."""
    from nextpose.errors import OutputError
    from nextpose.writers import DrawingWriter

    draw, calls = DrawingWriter.image, []

    def full(self, frame, target):
        calls.append(target)
        if len(calls) == 2:
            raise OutputError(f"--draw {target}: cannot write (No space left on device)")
        return draw(self, frame, target)

    args = [*predict_args(tmp_path), "--draw", str(tmp_path / "drawn")]
    monkeypatch.setattr(DrawingWriter, "image", full)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "with --resume continues from it" in err
    assert len(list((tmp_path / "drawn").iterdir())) == 1
    monkeypatch.setattr(DrawingWriter, "image", draw)
    assert main([*args, "--resume"]) == 0
    assert len(list((tmp_path / "drawn").iterdir())) == 4
    assert _outputs(tmp_path) == _outputs(predict_one)


API_SCRIPT = """
import json, sys
from pathlib import Path

import torch.distributed as dist

import nextpose
from nextpose.evaluation import evaluate

checkpoint, ann_file, images, boxes, out = sys.argv[1:]
out = Path(out)
dist.init_process_group("gloo")  # the caller's own process group (torchrun's environment)
estimator = nextpose.load(checkpoint, batch_size=2)
metrics = evaluate(estimator, ann_file, images, out_dir=out / "eval", progress=False)
(out / f"metrics-{dist.get_rank()}.json").write_text(json.dumps(metrics))
pipeline = nextpose.PosePipeline(estimator, boxes=nextpose.BoxTable.read(boxes))
summary = nextpose.predict_job(
    pipeline, [images], out=out / "poses.json", jsonl=out / "poses.jsonl", progress=False
)
assert (summary.frames, summary.people, summary.world_size) == (4, 10, 2), summary
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_the_python_api_inside_a_process_group(
    tiny_checkpoint, boxes, eval_one, predict_one, tmp_path
):
    script = tmp_path / "api.py"
    script.write_text(API_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), str(script),
           str(tiny_checkpoint), str(ANN_FILE), str(COCO), str(boxes), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("keypoints.json", "metrics.json"):
        assert (tmp_path / "eval" / name).read_bytes() == (eval_one / name).read_bytes()
    expected = json.loads((eval_one / "metrics.json").read_text())
    for rank in (0, 1):  # every rank returns the metrics
        assert json.loads((tmp_path / f"metrics-{rank}.json").read_text()) == expected
    assert _outputs(tmp_path) == _outputs(predict_one)


def test_a_video_stopped_midway_is_done_again_on_resume(
    tiny_checkpoint, tmp_path, monkeypatch, one_thread
):
    """A video is one unit (tracking runs across its frames): the frames a stopped run wrote
    are not used; the resumed run does the whole video and the outputs are an unbroken run's."""
    import cv2

    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 120))
    for path in sorted(COCO.glob("*.jpg")):
        writer.write(cv2.resize(cv2.imread(str(path)), (160, 120)))
    writer.release()

    def args(folder: Path, *extra: str) -> list[str]:
        return ["predict", str(tiny_checkpoint), str(video), str(COCO / "000000000785.jpg"),
                "--track", "--no-progress", "--out", str(folder / "poses.json"),
                "--jsonl", str(folder / "poses.jsonl"), *extra]  # fmt: skip

    unbroken, stopped = tmp_path / "unbroken", tmp_path / "stopped"
    assert main(args(unbroken)) == 0
    write, calls = sharded._PartWriter.write, []

    def interrupted(self, record):
        calls.append(record)
        if len(calls) == 3:  # two frames of the video written
            raise KeyboardInterrupt
        write(self, record)

    monkeypatch.setattr(sharded._PartWriter, "write", interrupted)
    assert main(args(stopped)) == 130
    assert len((stopped / "poses.jsonl").read_text().splitlines()) == 2  # what was done
    again = []

    def counted(self, record):
        again.append(record)
        write(self, record)

    monkeypatch.setattr(sharded._PartWriter, "write", counted)
    assert main(args(stopped, "--resume")) == 0
    assert _outputs(stopped) == _outputs(unbroken)
    # the whole video again, then the image (with --track, a sequence of its own)
    assert [r.get("i", "end") for r in again] == [0, 1, 2, 3, "end", 0, "end"]
    frames = [json.loads(x) for x in (stopped / "poses.jsonl").read_text().splitlines()]
    assert [f.get("frame") for f in frames] == [0, 1, 2, 3, None]
