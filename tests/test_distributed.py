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
from conftest import ANN_FILE, COCO, DET_FILE, ORACLE_RUNS, refused

from nextpose import distributed
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


def _nextpose(args: list[str], procs: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    """The command in one process, or under torchrun with ``procs`` Gloo processes."""
    if procs == 1:
        cmd = [sys.executable, "-m", "nextpose", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
               "-m", "nextpose", *args]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


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
    good = [{"g": 0, "i": 0, "line": {"poses": []}}, {"g": 0, "i": 1, "skipped": "x.jpg"}]
    text = "".join(json.dumps(r) + "\n" for r in good)
    path.write_text(text + '{"g": 0, "i": 2, "line": {"po')  # killed while writing
    assert list(read_part(path)) == good
    path.write_text(text + '{"g": 0, "i": 2}\n')  # complete JSON, but not a record
    assert list(read_part(path)) == good


# -- evaluation --------------------------------------------------------------------------


EVAL = ["--ann-file", str(ANN_FILE), "--images", str(COCO), "--bbox-file", str(DET_FILE),
        "--batch-size", "8", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def eval_one(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval1")
    _nextpose(["eval", str(tiny_checkpoint), *EVAL, "--out", str(out)])
    return out


@pytest.mark.parametrize("procs", [2, 3])
def test_eval_on_several_processes_equals_one(tiny_checkpoint, eval_one, tmp_path, procs):
    args = ["eval", str(tiny_checkpoint), *EVAL[:-1], "--out", str(tmp_path)]  # with progress
    done = _nextpose(args, procs)
    for name in ("keypoints.json", "metrics.json"):
        assert (tmp_path / name).read_bytes() == (eval_one / name).read_bytes()
    assert done.stdout.count("AP50") == 1  # rank 0 alone prints the table
    # One progress report (rank 0's, not a terminal: a line) counting every rank's boxes, and
    # the closing line with the world size.
    assert done.stderr.count("pose: 118/118") == 1, done.stderr
    assert done.stderr.count("4 images, 118 boxes in") == 1
    assert f"boxes/s), {procs} processes" in done.stderr


@pytest.mark.slow
def test_oracle_equality_holds_for_a_two_process_eval(oracle_weights, tmp_path):
    """The seed-0 resnext50 weights on the sample, detector boxes, flip: the results file and
    metrics of two processes are the reference's (as tests/test_oracle.py checks one)."""
    args = ["eval", "resnext50_coco_256x192", "--checkpoint", str(oracle_weights),
            "--ann-file", str(ANN_FILE), "--images", str(COCO), "--bbox-file", str(DET_FILE),
            "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    _nextpose(args, 2, timeout=900)
    ours = json.loads((tmp_path / "keypoints.json").read_text())
    ref = json.loads((ORACLE_RUNS / "results_det_flip.keypoints.json").read_text())
    assert len(ours) == len(ref)
    for o, r in zip(ours, ref, strict=True):
        assert (o["image_id"], o["category_id"]) == (r["image_id"], r["category_id"])
        np.testing.assert_allclose(o["bbox"], r["bbox"], rtol=0, atol=1e-3)
        kpts_o, kpts_r = np.reshape(o["keypoints"], (17, 3)), np.reshape(r["keypoints"], (17, 3))
        assert np.abs(kpts_o[:, :2] - kpts_r[:, :2]).max() <= 1e-3
        np.testing.assert_allclose(kpts_o[:, 2], kpts_r[:, 2], rtol=1e-5)
        assert o["score"] == pytest.approx(r["score"], rel=1e-5)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    expected = json.loads((ORACLE_RUNS / "metrics_det_flip.json").read_text())
    from nextpose.evaluation import MMPOSE_METRIC_NAMES

    for name, ref_name in MMPOSE_METRIC_NAMES.items():
        assert metrics[name] == pytest.approx(expected[ref_name], abs=1e-9)


# -- prediction --------------------------------------------------------------------------


# Detector boxes (about 30 per image) in batches of 2: batches would join images if the blocks
# did not keep them apart.
PREDICT = [str(COCO), "--boxes", str(DET_FILE), "--batch-size", "2", "--no-progress"]


def _predict_args(model: Path, folder: Path, *extra: str) -> list[str]:
    return ["predict", str(model), *PREDICT, "--out", str(folder / "poses.json"),
            "--jsonl", str(folder / "poses.jsonl"), *extra]  # fmt: skip


def _outputs(folder: Path) -> tuple[bytes, bytes]:
    return (folder / "poses.json").read_bytes(), (folder / "poses.jsonl").read_bytes()


@pytest.fixture(scope="module")
def predict_one(tiny_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("predict1")
    _nextpose(_predict_args(tiny_checkpoint, out))
    return out


def test_predict_on_two_processes_equals_one(tiny_checkpoint, predict_one, tmp_path):
    done = _nextpose(_predict_args(tiny_checkpoint, tmp_path), 2)
    assert _outputs(tmp_path) == _outputs(predict_one)
    assert len(json.loads((tmp_path / "poses.json").read_text())) == 118
    assert "4 images, 118 people" in done.stderr and "2 processes" in done.stderr
    assert not (tmp_path / "poses.json.parts").exists()  # merged and removed


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
    _nextpose([*args, "--out", str(one / "poses.json"), "--draw", str(one / "drawn")])
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


def test_predict_killed_and_resumed_equals_an_unbroken_run(tiny_checkpoint, predict_one, tmp_path):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    progress = tmp_path / "progress.txt"
    args = _predict_args(tiny_checkpoint, tmp_path)
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
        f.write('{"g": 0, "i": 2, "line": {"image": "000000196')
    assert not (tmp_path / "poses.json").exists()

    code = main(args)  # parts of a stopped run: refused without --resume
    assert code == 2
    done = _nextpose([*args, "--resume"], 2)
    assert _outputs(tmp_path) == _outputs(predict_one)
    assert "(2 from the stopped run)" in done.stderr
    assert not parts.exists()


def test_resume_of_another_job_is_refused(tiny_checkpoint, tmp_path, capsys):
    parts = tmp_path / "poses.json.parts"
    parts.mkdir()
    (parts / "job.json").write_text(json.dumps({"inputs": ["elsewhere/"], "coco": False}))
    code = main(_predict_args(tiny_checkpoint, tmp_path, "--resume"))
    refused(code, r"--resume: .*poses\.json\.parts is the run of another job \(.*inputs", capsys)
    code = main(_predict_args(tiny_checkpoint, tmp_path))
    refused(code, r"holds the parts of a stopped run: pass --resume", capsys)


@pytest.fixture
def one_thread():
    """In this process, the thread count of the subprocesses (OMP_NUM_THREADS=1): convolutions
    summed by another number of threads can differ in the last bits."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_without_a_stopped_run_is_a_plain_run(
    tiny_checkpoint, predict_one, tmp_path, one_thread
):
    assert main(_predict_args(tiny_checkpoint, tmp_path, "--resume")) == 0
    assert _outputs(tmp_path) == _outputs(predict_one)


def test_resume_needs_files_out(tiny_checkpoint, capsys):
    code = main(["predict", str(tiny_checkpoint), str(COCO), "--resume"])
    refused(code, r"--resume needs --out FILE or --jsonl FILE", capsys)


def test_the_python_api_runs_the_same_job(tiny_checkpoint, predict_one, tmp_path, one_thread):
    import nextpose

    estimator = nextpose.load(tiny_checkpoint, batch_size=2)
    table = nextpose.BoxTable.read(DET_FILE)
    pipeline = nextpose.PosePipeline(estimator, boxes=table)
    summary = nextpose.predict_job(
        pipeline, [str(COCO)], out=tmp_path / "poses.json", jsonl=tmp_path / "poses.jsonl",
        progress=False,
    )  # fmt: skip
    assert (summary.frames, summary.people, summary.world_size) == (4, 118, 1)
    assert _outputs(tmp_path) == _outputs(predict_one)
