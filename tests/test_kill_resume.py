"""SIGKILL a training run at random points, resume it, and get the unbroken run's weights
(issue 7).

The run is the real ``nextpose train`` command in a subprocess. A small launcher reports its
progress (one line per training step, from the loss) and can stall one checkpoint write right
after the temporary file is written and synced, so that one kill provably lands inside a
checkpoint write; the other kills come after a seeded-random number of steps.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ANN_FILE, COCO

EPOCHS, STEPS_PER_EPOCH = 5, 3  # 12 persons, batch 4
SETTINGS = [f"train.epochs={EPOCHS}", "train.batch_size=4", "train.warmup_iters=2",
            "train.milestones=[3]", "train.log_interval=1", "train.lr=0.001",
            "data.workers=0"]  # fmt: skip
TRAIN = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(ANN_FILE),
         "--images", str(COCO), "--quiet"]  # fmt: skip
TRAIN += [x for s in SETTINGS for x in ("--set", s)]

LAUNCHER = """
import os, sys, time
from pathlib import Path

from nextpose.cli import main
from nextpose.training import loss

progress = Path(os.environ["KILL_TEST_PROGRESS"])
stall = int(os.environ.get("KILL_TEST_STALL_SAVE", "0"))


def note(text):
    with progress.open("a") as f:
        f.write(text + "\\n")


forward = loss.KeypointMSELoss.forward


def reporting_forward(self, *args):
    note("step")
    return forward(self, *args)


real_fsync, saves = os.fsync, []


def stalling_fsync(fd):  # checkpoint.save: torch.save to a temp file, fsync, rename
    real_fsync(fd)
    if ".pth." not in os.readlink(f"/proc/self/fd/{fd}"):
        return  # config.toml, written atomically too: not a checkpoint
    saves.append(fd)
    if len(saves) == stall:
        note("saving")
        time.sleep(120)  # killed here: the temp file is written, not yet renamed


loss.KeypointMSELoss.forward = reporting_forward
os.fsync = stalling_fsync
sys.exit(main(sys.argv[1:]))
"""


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **extra}


def _saved_epoch(run: Path) -> int:
    path = run / "last.pth"
    return torch.load(path, weights_only=True)["epoch"] if path.is_file() else 0


def _run_until(args: list[str], env: dict[str, str], done, timeout: float = 240) -> None:
    """Start the launcher, SIGKILL it once ``done(progress lines)`` is true; it must not finish
    first (that would not be a kill)."""
    progress = Path(env["KILL_TEST_PROGRESS"])
    progress.unlink(missing_ok=True)
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start = time.monotonic()
    try:
        while not done(progress.read_text().split() if progress.exists() else []):
            assert proc.poll() is None, f"finished before the kill: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() - start < timeout, "no progress"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_gives_the_unbroken_weights(tmp_path, request):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    # The unbroken run goes on beside the broken one (one thread each: two cores).
    reference = subprocess.Popen([sys.executable, "-m", "nextpose", *TRAIN, "--out",
                                  str(unbroken)], env=_env(), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)  # fmt: skip
    request.addfinalizer(reference.kill)  # a no-op once it has ended

    def command(run: Path) -> list[str]:
        resume = ["--resume"] if (run / "last.pth").is_file() else []
        return [sys.executable, str(launcher), *TRAIN, "--out", str(run), *resume]

    progress = str(tmp_path / "progress.txt")
    # Kill 1: inside the checkpoint write of epoch 2.
    _run_until(command(broken), _env(KILL_TEST_PROGRESS=progress, KILL_TEST_STALL_SAVE="2"),
               lambda lines: "saving" in lines)  # fmt: skip
    assert _saved_epoch(broken) == 1  # the previous checkpoint is intact and still the last
    assert len(list(broken.glob(".last.pth.*.tmp"))) == 1  # the write that was cut short
    # Kills 2 and 3: after a seeded-random number of training steps.
    rng = random.Random(7)
    for share in (0.5, 1.0):  # the first anywhere in the first half, so a third kill fits
        remaining = (EPOCHS - _saved_epoch(broken)) * STEPS_PER_EPOCH
        steps = rng.randint(1, int(share * remaining) - 3)  # >= 3 steps left: a kill, not an end
        _run_until(command(broken), _env(KILL_TEST_PROGRESS=progress),
                   lambda lines, n=steps: lines.count("step") >= n)  # fmt: skip
        assert _saved_epoch(broken) < EPOCHS
    # Resume to the end.
    subprocess.run(command(broken), env=_env(KILL_TEST_PROGRESS=progress), check=True,
                   capture_output=True, timeout=300)  # fmt: skip

    _, errors = reference.communicate(timeout=300)
    assert reference.returncode == 0, errors.decode()[-2000:]
    expected = torch.load(unbroken / "last.pth", weights_only=True)
    got = torch.load(broken / "last.pth", weights_only=True)
    assert got["epoch"] == EPOCHS and got["iteration"] == EPOCHS * STEPS_PER_EPOCH
    assert expected["state_dict"].keys() == got["state_dict"].keys()
    for key, value in expected["state_dict"].items():
        assert torch.equal(value, got["state_dict"][key]), key
    assert not list(broken.glob(".*.tmp"))  # the killed write's temp file was cleaned up
    # The log has each step once, as the unbroken run's: records after the last checkpoint
    # of a killed run were dropped on resume.
    assert (broken / "metrics.jsonl").read_text().count('"loss"') == EPOCHS * STEPS_PER_EPOCH


def _descendants(pid: int) -> set[int]:
    """The processes started by ``pid`` and by them, as /proc tells (Linux)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _train_until_workers(tmp_path: Path, settings: list[str], processes: int, **popen):
    """Start a long training with loader workers; return it once ``processes`` descendants run
    and a few batches went by."""
    args = [sys.executable, "-m", "nextpose", *TRAIN[: -len(SETTINGS) * 2], "--out",
            str(tmp_path / "run"), *[x for s in settings for x in ("--set", s)]]  # fmt: skip
    proc = subprocess.Popen(args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            **popen)  # fmt: skip
    deadline = time.monotonic() + 240
    while len(_descendants(proc.pid)) < processes:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the workers did not start: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    time.sleep(2.0)  # a few batches
    return proc


def _left_running(pids: set[int], wait: float = 30) -> list[int]:
    """Those of ``pids`` still running after up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while (
        left := [p for p in pids if Path(f"/proc/{p}").exists()]
    ) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_killed_training_leaves_no_loader_workers(tmp_path):
    """SIGKILL of a training with forkserver loader workers: the workers (children of the fork
    server, which they keep open) notice that the trainer is gone and end, and so does the
    fork server; nothing of the run is left running."""
    settings = ["train.epochs=200", "train.batch_size=4", "data.workers=2",
                "data.start_method=forkserver"]  # fmt: skip
    proc = _train_until_workers(tmp_path, settings, 4)
    try:
        started = _descendants(proc.pid)  # resource tracker, fork server, two workers
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    left = _left_running(started)
    for pid in left:  # what would have leaked: clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} of {len(started)} processes of the run left running"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_of_a_training_with_loader_workers_ends_it_quietly(tmp_path):
    """Ctrl-C in a terminal signals the whole process group, loader workers too: the run ends
    with status 130 and one line, no traceback of the trainer or of a worker, no worker left."""
    settings = ["train.epochs=200", "train.batch_size=4", "data.workers=2"]
    proc = _train_until_workers(tmp_path, settings, 2, start_new_session=True)
    try:
        started = _descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = err.decode()
    assert proc.returncode == 130, text[-2000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    assert text.strip().splitlines()[-1].startswith("interrupted"), text[-2000:]
    assert not _left_running(started)
