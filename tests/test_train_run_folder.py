"""A run folder belongs to one run (issue 13, class 1): a second training into a folder that a
run is training in is refused naming the holder's pid, a killed holder's lock is taken over, a
new run never overwrites an earlier run's files, and the run's files honour the umask."""

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_robust_training import _config, small  # noqa: F401  (the fixture)

from nextpose.cli import main
from nextpose.training import RunFolder, TrainingError, train

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Holds the run folder's lock as a training run does, until killed.
HOLDER = """
import sys, time
from nextpose.training import RunFolder

with RunFolder(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding ``tmp_path / "run"``; yields the process (killed at the end)."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_pid(
    small,  # noqa: F811
    tmp_path,
    holder,
    capsys,
):
    run = tmp_path / "run"
    with pytest.raises(TrainingError) as err:
        train(_config(epochs=1), small, run, pretrained="none", progress=False)
    message = str(err.value)
    assert f"{run} is in use by another training run (pid {holder.pid}" in message
    assert "train into another folder" in message
    assert sorted(p.name for p in run.iterdir()) == ["train.lock"]  # nothing written, lock kept
    args = ["train", "tiny_coco_96x64", "--pretrained", "none", "--ann-file", str(small.ann_file),
            "--images", str(small.image_dir), "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 2
    assert f"error: {run} is in use by another training run (pid {holder.pid}" in (
        capsys.readouterr().err
    )
    assert holder.poll() is None


def test_the_lock_of_a_killed_run_is_taken_over_with_a_note(
    small,  # noqa: F811
    tmp_path,
    holder,
    caplog,
):
    run = tmp_path / "run"
    holder.kill()
    holder.wait()
    assert (run / "train.lock").is_file()  # SIGKILL left it
    caplog.set_level(logging.WARNING, "nextpose")
    summary = train(_config(epochs=1), small, run, pretrained="none", progress=False)
    assert summary["epochs"] == 1
    assert f"took over the lock of a run that is no longer running (pid {holder.pid}" in caplog.text
    assert not (run / "train.lock").exists()  # released at the end


def test_the_lock_is_held_while_training_and_released_after(small, tmp_path, monkeypatch):  # noqa: F811
    from nextpose.training import loop

    seen = []
    original = loop.train_one_epoch

    def checking(learner, loader, state, epochs, run, *args):
        seen.append((run.path / "train.lock").read_text())
        with pytest.raises(TrainingError, match=f"pid {os.getpid()}"), RunFolder(run.path):
            pass  # the same process, a second run: refused too
        original(learner, loader, state, epochs, run, *args)

    monkeypatch.setattr(loop, "train_one_epoch", checking)
    train(_config(epochs=1), small, tmp_path / "run", pretrained="none", progress=False)
    assert len(seen) == 1 and f'"pid": {os.getpid()}' in seen[0]
    assert not (tmp_path / "run" / "train.lock").exists()


@pytest.mark.parametrize("kept", [["best.pth"], ["metrics.jsonl"]])
def test_a_new_run_never_overwrites_an_earlier_runs_files(small, tmp_path, kept):  # noqa: F811
    run = tmp_path / "run"
    train(_config(epochs=1), small, run, small, pretrained="none", progress=False)
    for name in {"last.pth", "best.pth", "metrics.jsonl"} - set(kept):
        (run / name).unlink()
    before = {name: (run / name).read_bytes() for name in kept}
    with pytest.raises(TrainingError) as err:
        train(_config(epochs=1), small, run, small, pretrained="none", progress=False)
    message = str(err.value)
    assert f"{run} already holds a training run ({kept[0]})" in message
    assert "train into another folder" in message
    assert {name: (run / name).read_bytes() for name in kept} == before
    assert not (run / "last.pth").exists() and not (run / "train.lock").exists()


def test_run_files_honour_the_umask(small, tmp_path):  # noqa: F811
    old = os.umask(0o027)
    try:
        train(_config(epochs=1), small, tmp_path / "run", small, pretrained="none", progress=False)
    finally:
        os.umask(old)
    for name in ("last.pth", "best.pth", "metrics.jsonl", "config.toml", "run.json"):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o640, f"{name}: {oct(mode)}"


def test_a_lock_that_cannot_be_written_leaves_no_lock_and_no_folder(tmp_path, monkeypatch):
    """A full disk when the holder is written into ``train.lock``: the error names the lock
    file, and neither the empty lock nor the run folder this run made is left behind."""
    import errno

    real_write = os.write

    def full(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith("train.lock"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full)
    refused = r"train\.lock: cannot create the lock file \(No space"
    with pytest.raises(TrainingError, match=refused), RunFolder(tmp_path / "run"):
        pass
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_write_refused_by_a_folder_made_read_only_says_so(
    small,  # noqa: F811
    tmp_path,
    monkeypatch,
    caplog,
):
    """The folder turns read-only during the epoch (chattr, a remount): the error is the
    checkpoint's, not that of the lock file which then cannot be removed either (that is only
    logged; the next run takes the lock over)."""
    import errno

    from nextpose import checkpoint

    run = tmp_path / "run"
    real_unlink = Path.unlink

    def read_only(*args, **kwargs):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    def unlink(self, *args, **kwargs):
        if self.name == "train.lock":
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(self))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save", read_only)
    monkeypatch.setattr(Path, "unlink", unlink)
    caplog.set_level(logging.WARNING, "nextpose")
    with pytest.raises(TrainingError) as err:
        train(_config(epochs=1), small, run, pretrained="none", progress=False)
    message = str(err.value)
    assert f"could not write {run / 'last.pth'} at the end of epoch 1" in message
    assert "Operation not permitted" in message and "Free some space" not in message
    assert "Once the cause is fixed, start the run again" in message
    assert f"{run / 'train.lock'}: could not remove the lock file" in caplog.text
    monkeypatch.undo()
    train(_config(epochs=1), small, run, pretrained="none", progress=False)  # takes it over
    assert (run / "last.pth").is_file() and not (run / "train.lock").exists()
