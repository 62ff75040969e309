"""The run folder: owned by one run at a time, never holding two runs, written safely.

A run folder holds ``train.lock`` (while a run trains in it: the holder's pid and host),
``config.toml`` (the resolved config), ``run.json`` (data, versions, git SHA, one line per start),
``metrics.jsonl`` (loss/lr every ``log_interval`` iterations, metrics after each validation),
TensorBoard scalars (``tb/``, when tensorboard is installed), ``last.pth`` (everything needed to
resume, written atomically after every epoch) and ``best.pth`` (the best validation AP).
"""

import contextlib
import errno
import json
import logging
from pathlib import Path
from typing import Any

from .. import checkpoint
from ..errors import TrainingError
from ..fileio import FileLock, LockHeld, atomic_write_text, describe_holder

log = logging.getLogger("nextpose")

LOCK = "train.lock"
LAST, BEST, METRICS = "last.pth", "best.pth", "metrics.jsonl"
CONFIG, RUN_LOG = "config.toml", "run.json"
RUN_FILES = (LAST, BEST, METRICS, CONFIG, RUN_LOG)  # what a run writes besides its lock and tb/


class RunFolder:
    """``out_dir`` as one run's folder. Rank 0 holds the lock and writes; other ranks only read.

    Use as a context manager around the run: :meth:`__enter__` takes the lock (creating the
    folder), :meth:`__exit__` releases it (and removes a folder this run created and left empty).
    """

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock_file: FileLock | None = None
        self._created = False
        self._tensorboard: Any = None

    @property
    def last(self) -> Path:
        return self.path / LAST

    # -- ownership ---------------------------------------------------------------------------

    def __enter__(self) -> "RunFolder":
        if self.writer:
            self._created = not self.path.exists()
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrainingError(f"{self.path}: cannot create the run folder "
                                    f"({e.strerror or e})") from None  # fmt: skip
            try:
                self._lock()
            except BaseException:  # __exit__ will not run: leave no folder this run made
                if self._created:
                    with contextlib.suppress(OSError):
                        self.path.rmdir()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if this run left nothing in it

    def _lock(self) -> None:
        """Hold ``train.lock`` (:class:`~nextpose.fileio.FileLock`)."""
        lock = FileLock(self.path / LOCK)
        try:
            previous = lock.acquire()
        except LockHeld as e:
            raise TrainingError(
                f"{self.path} is in use by another training run ({e}): wait for it to end, or "
                "train into another folder. Two runs in one folder would overwrite each other's "
                "checkpoints"
            ) from None
        except OSError as e:
            raise TrainingError(
                f"{lock.path}: cannot create the lock file ({e.strerror or e})"
            ) from None
        if previous:
            log.warning(
                "%s: took over the lock of a run that is no longer running (%s); its files are "
                "left as they were",
                self.path, describe_holder(previous),
            )  # fmt: skip
        self._lock_file = lock

    # -- what a start may find ---------------------------------------------------------------

    def check(self, resume: bool) -> None:
        """A new run needs a folder without a run in it; a resumed one needs its ``last.pth``.

        A run that stopped before finishing its first epoch left no ``last.pth`` (at most the
        ``best.pth`` of that epoch, written first), only its own ``config.toml``, ``run.json``
        and ``metrics.jsonl``: a new run starts again in its place (with a warning). Files in
        the folder that no run wrote are never replaced.

        Raises:
            TrainingError: naming the files found (new run) or missing (resume).
        """
        ours = self._started_here()
        unfinished = ours and not self._finished_an_epoch()
        if resume:
            if not self.last.is_file():
                why = ("the run here stopped before it finished an epoch: start it again without "
                       "--resume" if unfinished else "nothing to resume")  # fmt: skip
                raise TrainingError(f"--resume: {self.last} does not exist; {why}")
            return
        found = [name for name in RUN_FILES if (self.path / name).exists()]
        if not found:
            return
        held = [name for name in found if name in (LAST, BEST, METRICS)]
        # A best.pth beside that run's log, which records no saved epoch, is its first epoch's
        # (written before last.pth); without the log nothing says so: it is kept.
        if unfinished and LAST not in found and (BEST not in found or METRICS in found):
            log.warning(
                "%s: the run started here stopped before it finished an epoch (no %s was "
                "saved); starting it again", self.path, LAST,
            )  # fmt: skip
            return
        if LAST in found:
            advice = "continue that run with --resume (resume=True), or train into another folder"
        elif BEST in found or ours:
            advice = (f"it cannot be resumed without {LAST}: train into another folder, or move "
                      "those files away")  # fmt: skip
        else:
            raise TrainingError(
                f"{self.path} holds {', '.join(found)}, not written by a nextpose run: a run "
                "would replace them. Train into another folder, or move those files away"
            )
        raise TrainingError(
            f"{self.path} already holds a training run ({', '.join(held or found)}); a new run "
            f"would overwrite it: {advice}"
        )

    def _finished_an_epoch(self) -> bool:
        """Whether ``metrics.jsonl`` records the end of an epoch (its weights may be gone)."""
        try:
            lines = (self.path / METRICS).read_text().splitlines()
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError):
            return True  # unreadable: keep it
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # the torn last line of a killed run
            if not isinstance(record, dict):
                return True
            # A validation is logged before its checkpoint: alone it proves no saved epoch.
            if "epoch_end" in record or record.get("epoch", 1) != 1:
                return True
        return False

    def _starts(self) -> list[dict[str, Any]]:
        """``run.json``'s records, one per start; [] when it is missing or not a run's."""
        try:
            lines = (self.path / RUN_LOG).read_text().splitlines()
            records = [json.loads(line) for line in lines if line.strip()]
        except (OSError, UnicodeDecodeError, ValueError):
            return []
        ours = all(isinstance(r, dict) and "nextpose" in r for r in records)
        return records if ours else []

    def _started_here(self) -> bool:
        """Whether ``run.json`` is a nextpose run's record (one JSON line per start)."""
        return bool(self._starts())

    def last_start(self) -> dict[str, Any] | None:
        """The ``run.json`` record of the latest start (its data, versions, world size)."""
        starts = self._starts()
        return starts[-1] if starts else None

    # -- files -------------------------------------------------------------------------------

    def start(self, config_toml: str, info: dict[str, Any], iteration: int) -> None:
        """Append to ``run.json``, write ``config.toml``, clean what a killed run left."""
        if not self.writer:
            return
        for stale in self.path.glob(".*.pth.*.tmp"):  # a run killed while saving left these
            stale.unlink(missing_ok=True)
        self._trim_metrics(iteration)
        with open(self.path / RUN_LOG, "a") as f:  # first: it marks the folder as a run's
            f.write(json.dumps(info) + "\n")
        atomic_write_text(self.path / CONFIG, config_toml)  # the file to resume from
        try:
            from torch.utils.tensorboard import SummaryWriter

            # Steps after the checkpoint, logged by the run that was stopped, are dropped as
            # metrics.jsonl's are (they are logged again); all of them for a new run.
            self._tensorboard = SummaryWriter(str(self.path / "tb"), purge_step=iteration + 1)
        except ImportError:
            log.info("install tensorboard for training curves (pip install tensorboard)")

    def _trim_metrics(self, iteration: int) -> None:
        """Drop the ``metrics.jsonl`` records a killed run wrote after its last checkpoint (they
        are written again on resume) and a half-written last line."""
        path = self.path / METRICS
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("iteration", 0) <= iteration:
                kept.append(line + "\n")
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        tmp.replace(path)

    def log(self, record: dict[str, Any]) -> None:
        """Append a record to ``metrics.jsonl`` (and TensorBoard)."""
        if not self.writer:
            return
        with open(self.path / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tensorboard is not None:
            step = record["iteration"]
            for key in ("loss", "lr"):
                if key in record:
                    self._tensorboard.add_scalar(f"train/{key}", record[key], step)
            for key, value in (record.get("val") or {}).items():
                self._tensorboard.add_scalar(f"val/{key}", value, step)

    def save(self, name: str, payload: dict[str, Any], epoch: int) -> None:
        """Write a checkpoint atomically, readable as the umask allows; a failed write (a full
        disk: torch's zip writer raises RuntimeError, a plain write OSError) stops the run with
        the previous file intact."""
        path = self.path / name
        try:
            checkpoint.save(path, payload)
        except (OSError, RuntimeError) as e:
            reason = (
                getattr(e, "reason", None)
                or (e.strerror if isinstance(e, OSError) else None)
                or str(e).strip()[:300]
            )
            saved = [n for n in (BEST, LAST) if (self.path / n).is_file()]
            kept = (
                f"the previous {name} is intact" if path.is_file()
                else f"{', '.join(saved)} saved, no {name}" if saved
                else "nothing was saved"
            )  # fmt: skip
            raise TrainingError(
                f"could not write {path} at the end of epoch {epoch} ({reason}); {kept}. "
                + (
                    "Free some space"
                    if getattr(e, "errno", None) == errno.ENOSPC
                    else "Once the cause is fixed,"
                )
                + (
                    " continue with --resume"
                    if self.last.is_file()
                    else " start the run again (without --resume)"
                )
            ) from e
