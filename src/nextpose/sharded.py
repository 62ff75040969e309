"""Batch prediction that shares its inputs among the processes of a ``torchrun`` job and survives
being stopped: what ``nextpose predict --out/--jsonl`` runs.

The inputs are cut into units: blocks of ``block_size`` images of a folder or image list (the
network's batches never join two blocks, so an image's keypoints do not depend on how the
blocks are shared out), and whole videos (and whole image sequences when tracking, whose ids
run across frames). Every rank takes a balanced, deterministic share of the units and appends
one JSON line per image or frame to its own part file in ``OUT.parts/``, a video's end with a
line of its own. A line is complete only with its newline and valid JSON: a record torn by a
kill is detected and its image redone. ``resume=True`` reads the parts, skips the complete
images and videos, shares what is left among the ranks of the new run (any number), and adds
new part files. At the end rank 0 merges the parts in input order into the outputs, each
written atomically, and removes the parts: the outputs are those of an unbroken single-process
run, whatever the number of processes and stops.
"""

import contextlib
import heapq
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import distributed
from .distributed import JobProgress
from .errors import InputError, NextposeError, OutputError, VideoError
from .fileio import FileLock, LockHeld, atomic_write_text, cannot_write
from .pipeline import PosePipeline
from .sources import input_groups, open_stream
from .writers import DrawingWriter, Guard, JsonLinesWriter, JsonListWriter

log = logging.getLogger("nextpose")

MANIFEST = "job.json"
LOCK = "job.lock"  # held by the run writing the parts
PARTS_SUFFIX = ".parts"


# What a job's description calls its settings, as the command line names them.
_OPTION_NAMES = {"inputs": "the inputs", "listing": "the inputs' files", "coco": "--format",
                 "flip": "--no-flip", "max_frames": "--max-frames",
                 "block_size": "--batch-size"}  # fmt: skip  # the CLI's blocks are its batches


def parts_folder(out: str | Path | None, jsonl: str | Path | None) -> Path:
    """Where a job writing ``out`` (else ``jsonl``) keeps its parts: ``OUT.parts/``."""
    target = Path(out if out is not None else jsonl)  # type: ignore[arg-type]
    return target.with_name(target.name + PARTS_SUFFIX)


@dataclass(frozen=True)
class Unit:
    """A piece of work: ``group``'s images ``start`` to ``stop - 1`` (a block), or the whole of
    ``group`` (``stop`` None: a video, or a tracked image sequence)."""

    group: int
    start: int = 0
    stop: int | None = None

    @property
    def weight(self) -> int:
        return 1 if self.stop is None else self.stop - self.start


@dataclass
class JobSummary:
    """What a job did: images or frames written, people, inputs (images and videos) and those
    that could not be read, seconds of this run, the frames and people this run computed, and
    its processes."""

    frames: int = 0
    people: int = 0
    inputs: int = 0
    failed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    new_frames: int = 0
    new_people: int = 0
    world_size: int = 1
    outputs: list[Path] = field(default_factory=list)
    drawn: int = 0  # files written by ``draw`` in this run
    box_misses: int = 0  # images of this run without an entry in the pipeline's boxes table
    box_lookups: int = 0


class _State:
    """What the part files of earlier runs hold: the complete images of block groups and the
    complete sequences (and which file holds each)."""

    def __init__(self) -> None:
        self.images: dict[int, set[int]] = {}
        self.sequences: dict[int, str] = {}
        self.attempts = 0

    @property
    def done(self) -> bool:
        """Whether any work is complete."""
        return bool(self.images or self.sequences)


def _valid(record: Any) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("g"), int):
        return False
    if "end" in record:
        return isinstance(record["end"], int)
    if not isinstance(record.get("i"), int):
        return False
    if "skipped" in record:
        return isinstance(record["skipped"], str)
    out, line = record.get("out", []), record.get("jsonl", "")
    return (
        isinstance(record.get("people"), int)
        and isinstance(out, list)
        and all(isinstance(x, str) for x in out)
        and isinstance(line, str)
    )


def read_part(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a part file, in order; reading stops at the first line that is
    not complete (no newline, or not the JSON of a record): what a kill tore is redone."""
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            record = None
            if raw.endswith(b"\n"):
                try:
                    record = json.loads(raw)
                except ValueError:
                    record = None
            if not _valid(record):
                log.info("%s: line %d is incomplete (a stopped write); redoing it", path, number)
                return
            yield record


def _part_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("part-*.jsonl"))


def _is_own(path: Path) -> bool:
    """Whether a parts folder's entry is one a job writes: its description (and the temporary
    file it is written through), its lock, a part."""
    name = path.name
    own = name in (MANIFEST, LOCK) or (name.startswith("part-") and name.endswith(".jsonl"))
    return path.is_file() and (own or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")))


def _foreign(folder: Path) -> list[str]:
    """The entries of ``folder`` no predict job wrote (sorted names)."""
    try:
        return sorted(p.name for p in folder.iterdir() if not _is_own(p))
    except OSError:
        return []


def _remove_parts(folder: Path) -> None:
    """Remove the job's own files from its parts folder, then the folder (only if that emptied
    it: nothing another program put there is removed)."""
    try:
        entries = [p for p in folder.iterdir() if _is_own(p) and p.name != LOCK]
    except OSError:
        return
    for path in entries:
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        (folder / LOCK).unlink()  # held until release, which finds it gone
    with contextlib.suppress(OSError):
        folder.rmdir()


def _scan(folder: Path) -> _State:
    state = _State()
    for path in _part_files(folder):
        attempt = int(path.name.split("-")[1])
        state.attempts = max(state.attempts, attempt)
        for record in read_part(path):
            if "end" in record:
                state.sequences.setdefault(record["g"], path.name)
            else:
                state.images.setdefault(record["g"], set()).add(record["i"])
    return state


def _assign(units: list[Unit], world: int) -> list[list[Unit]]:
    """Units shared out among ``world`` ranks, balanced by weight (the heaviest first, each to
    the least loaded rank, ties to the lower rank); each rank's units in input order."""
    heap = [(0, rank) for rank in range(world)]
    shares: list[list[Unit]] = [[] for _ in range(world)]
    order = sorted(range(len(units)), key=lambda i: (-units[i].weight, i))
    for i in order:
        load, rank = heapq.heappop(heap)
        shares[rank].append(units[i])
        heapq.heappush(heap, (load + units[i].weight, rank))
    position = {u: i for i, u in enumerate(units)}
    return [sorted(share, key=position.__getitem__) for share in shares]


class _PartWriter:
    """This rank's part file, appended one complete line at a time."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.file = path.open("a", encoding="utf-8")
        except OSError as e:
            raise cannot_write(path, e) from None

    def write(self, record: dict[str, Any]) -> None:
        # One write of a whole line, flushed: a kill leaves complete lines and at most one torn
        # last line, which read_part drops.
        try:
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
            self.file.flush()
        except OSError as e:
            raise cannot_write(self.path, e) from None

    def close(self) -> None:
        """Close the file; what could not be written (a full disk) was already raised by
        :meth:`write`, and is only dropped here: that line is torn, and redone on resume."""
        with contextlib.suppress(OSError):
            self.file.close()


def _broadcast_or_raise(make: Any) -> Any:
    """Rank 0's ``make()`` on every rank; its NextposeError is raised on every rank."""
    env = distributed.current()
    value: Any = None
    if env.is_main:
        try:
            value = ("ok", make())
        except NextposeError as e:
            value = ("error", e)
    value = distributed.broadcast_object(value)
    if value[0] == "error":
        raise value[1]
    return value[1]


def _totals(groups: list[tuple[str, Any]], max_frames: int | None) -> list[int | None]:
    """The images or frames of each input group (None: a video that cannot be opened, which
    is reported when its unit runs)."""
    totals: list[int | None] = []
    for kind, source in groups:
        if kind == "images":
            totals.append(open_stream(source, max_frames).total)
            continue
        try:
            stream = open_stream(source, max_frames)
        except VideoError:
            totals.append(None)
            continue
        totals.append(stream.total)
        if stream.reader is not None:
            stream.reader.close()
    return totals


def _units(
    groups: list[tuple[str, Any]], totals: list[int | None], block: int, sequence: bool
) -> list[Unit]:
    """The job's units in input order: blocks of ``block`` images, whole videos, and whole
    image sequences when ``sequence`` (tracking)."""
    units: list[Unit] = []
    for g, ((kind, _), total) in enumerate(zip(groups, totals, strict=True)):
        if kind == "images" and not sequence:
            assert total is not None
            units += [Unit(g, b, min(b + block, total)) for b in range(0, total, block)]
        else:
            units.append(Unit(g))
    return units


def _lock_of(output: str | Path) -> Path:
    """The lock file a job holds for an output file: hidden beside the file it names (links
    followed, so that two names of one file share it)."""
    real = Path(os.path.realpath(output))
    return real.with_name(f".{real.name}.lock")


def _open_parts(
    folder: Path,
    locks: list[FileLock],
    manifest: dict[str, Any],
    resume: bool,
    outputs: dict[str, Any],
) -> _State:
    """Make or reopen the parts folder, holding ``locks`` (the folder's, then one per output
    file; released again if refused): the stopped run's state with ``resume``, else a new job
    described by ``manifest``. ``outputs``: option -> the output file as the command line gave
    it (the parts folder's first), for messages."""
    option, out = next(iter(outputs.items()))
    named = f"{option} {out}"
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder (the job's parts go there)")
    foreign = _foreign(folder) if folder.is_dir() else []
    if foreign:  # not a job's parts: nothing here may be written over or removed
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(
            f"{named}: the job keeps its parts in {folder}, which holds other files ({shown}); "
            f"move them away, or give another {option}"
        )
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        locks[0].acquire()
    except LockHeld as e:
        raise InputError(
            f"{named}: another predict run is writing it now ({e}; its parts are in "
            f"{folder}): wait for it to end, or give another {option}"
        ) from None
    except OSError as e:
        raise OutputError(
            f"{named}: cannot write its parts folder {folder} ({e.strerror or e})"
        ) from None
    try:
        # Another job may write one of these files without sharing this parts folder (its
        # --out is another file): each output has a lock of its own too.
        for (opt, path), lock in zip(outputs.items(), locks[1:], strict=True):
            try:
                lock.acquire()
            except LockHeld as e:
                raise InputError(
                    f"{opt} {path}: another predict run is writing it now ({e}): wait for it to "
                    f"end, or give another {opt}"
                ) from None
            except OSError as e:
                raise OutputError(
                    f"{opt} {path}: cannot write its lock file {lock.path} ({e.strerror or e})"
                ) from None
        return _resume_or_start(folder, manifest, resume)
    except BaseException:
        for lock in locks:
            lock.release()
        if created:  # refused before any part: no folder left to block the next run
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _resume_or_start(folder: Path, manifest: dict[str, Any], resume: bool) -> _State:
    """The state of the stopped run in ``folder`` (refused if it was another job), or a new
    job: its description written, nothing done."""
    saved = folder / MANIFEST
    # Parts whose job is unknown: merged into another run's, they could repeat images.
    if not saved.is_file() and _part_files(folder):
        raise InputError(
            f"{folder} holds parts but no {MANIFEST} (the description of their job): they "
            "cannot be resumed; remove the folder to start again"
        )
    if not resume and any(p.name != LOCK for p in folder.iterdir()):
        raise InputError(
            f"{folder} holds the parts of a stopped run: pass --resume to continue it, or "
            "remove the folder to start again"
        )
    if resume and saved.is_file():
        try:
            before = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"{saved}: cannot read the stopped run's description ({e})") from None
        if not isinstance(before, dict):
            raise InputError(f"{saved}: not a job description (a JSON object); remove the folder")
        changed = sorted(k for k in {*before, *manifest} if before.get(k) != manifest.get(k))
        if changed:
            named = dict.fromkeys(_OPTION_NAMES.get(k, "--" + k.replace("_", "-"))
                                  for k in changed)  # fmt: skip
            raise InputError(
                f"--resume: {folder} is the run of another job ({', '.join(named)} "
                "differ); give the same inputs and options, or remove the folder"
            )
        return _scan(folder)
    if resume:
        log.info("--resume: no stopped run in %s; starting from the beginning", folder)
    atomic_write_text(saved, json.dumps(manifest, indent=1) + "\n")
    return _State()


def predict_job(
    pipeline: PosePipeline,
    inputs: Sequence[str],
    *,
    out: str | Path | None = None,
    jsonl: str | Path | None = None,
    coco: bool = False,
    draw: str | Path | None = None,
    score_threshold: float = 0.3,
    resume: bool = False,
    max_frames: int | None = None,
    block_size: int | None = None,
    options: Mapping[str, Any] | None = None,
    progress: bool | None = None,
    reads: Iterable[str | Path] = (),
) -> JobSummary:
    """Run ``pipeline`` over ``inputs`` into ``out`` (a JSON list of person records, COCO
    results with ``coco``) and/or ``jsonl`` (a line per image or frame), shared among the ranks
    of the initialised process group (one process without one).

    Args:
        inputs: image files, folders, video files (no cameras or streams: they cannot be
            shared out or resumed), as on the command line (glob patterns expanded).
        draw: also draw each image / video into this folder (each rank draws its own).
        resume: continue a stopped run of the same job from its parts in ``OUT.parts/``;
            without it, parts left by a stopped run are refused.
        block_size: images per unit (default: the estimator's batch size).
        options: what else defines the job (model, boxes file, ...): a resumed run must have
            the same, or it is refused naming the differences.
        progress: one bar on rank 0 for the whole job (None: on a terminal only).
        reads: the other files the job reads (a boxes file, weights): no output replaces them.

    Returns:
        A :class:`JobSummary` on every rank (the counts of the whole job).

    Raises:
        InputError: no output file, a camera or stream input, parts without ``resume``, a
            resumed run of another job.
    """
    start = time.perf_counter()
    inputs = [str(x) for x in inputs]
    if out is None and jsonl is None:
        raise InputError("a sharded or resumable run needs --out FILE or --jsonl FILE")
    groups = input_groups(inputs)
    for kind, source in groups:
        if kind == "camera" or (kind == "video" and not Path(source).is_file()):
            raise InputError(
                f"{source}: a camera or stream cannot be shared among processes or resumed; "
                "run it in one process without --resume"
            )
    guard = Guard(
        [p for kind, source in groups for p in (source if kind == "images" else [source])]
        + list(reads)
    )
    for path, option in ((out, "--out"), (jsonl, "--jsonl")):
        if path is not None:
            guard.claim(path, option)
    block = block_size or pipeline.estimator.options.batch_size
    totals = _totals(groups, max_frames)
    units = _units(groups, totals, block, pipeline.track)
    folder = parts_folder(out, jsonl)
    for path, name in ((out, "--out"), (jsonl, "--jsonl")):
        if path is not None:
            where = Path(path).absolute()
            if where == folder.absolute() or folder.absolute() in where.parents:
                raise InputError(
                    f"{name} {path}: the job keeps its parts in {folder}; write elsewhere"
                )
    manifest = {
        "inputs": inputs,
        "listing": [[kind, str(source) if kind != "images" else source, total]
                   for (kind, source), total in zip(groups, totals, strict=True)],
        "coco": coco, "max_frames": max_frames, "block_size": block, "track": pipeline.track,
        "flip": pipeline.flip, "out": str(out) if out else None,
        "jsonl": str(jsonl) if jsonl else None, **(options or {}),
    }  # fmt: skip
    manifest = json.loads(json.dumps(manifest))  # as it reads back from the file
    outputs = {o: p for o, p in (("--out", out), ("--jsonl", jsonl)) if p is not None}
    locks = [FileLock(folder / LOCK)] + [FileLock(_lock_of(p)) for p in outputs.values()]

    # The drawings' names and checks first: a refused --draw leaves no parts folder behind.
    drawer, targets = None, {}
    if draw is not None:
        drawer = DrawingWriter(draw, score_threshold, guard)
        # Names are given out in input order on every rank, as one process would meet them.
        for g, (kind, source) in enumerate(groups):
            if kind == "images":
                for entry, _ in open_stream(source, max_frames).entries:
                    targets[g, entry.index] = drawer.target(entry.name)
            else:
                targets[g, -1] = drawer.target(Path(source).name, video=True)
    try:
        state: _State = _broadcast_or_raise(
            lambda: _open_parts(folder, locks, manifest, resume, outputs)
        )
    except BaseException:
        if drawer is not None:
            drawer.remove_if_unused()
        raise
    try:
        return _run_job(pipeline, groups, units, totals, state, folder, out, jsonl, coco,
                        drawer, targets, max_frames, block, progress, start)  # fmt: skip
    except BaseException:
        if drawer is not None:  # stopped before any drawing: no empty folder left
            drawer.remove_if_unused()
        raise
    finally:
        for lock in locks:
            lock.release()


def _run_job(
    pipeline: PosePipeline,
    groups: list[tuple[str, Any]],
    units: list[Unit],
    totals: list[int | None],
    state: _State,
    folder: Path,
    out: str | Path | None,
    jsonl: str | Path | None,
    coco: bool,
    drawer: DrawingWriter | None,
    targets: dict[tuple[int, int], Path],
    max_frames: int | None,
    block: int,
    progress: bool | None,
    start: float,
) -> JobSummary:
    """This rank's share of the units not complete in ``state``, then (rank 0) the merge."""
    env = distributed.current()
    attempt = state.attempts + 1

    def complete(unit: Unit) -> bool:
        if unit.stop is None:
            return unit.group in state.sequences
        done = state.images.get(unit.group, set())
        return all(i in done for i in range(unit.start, unit.stop))

    todo = [u for u in units if not complete(u)]
    mine = _assign(todo, env.world_size)[env.rank]
    finished = sum(len(v) for v in state.images.values())
    finished += sum(totals[g] or 0 for g in state.sequences)
    known = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
    part = _PartWriter(folder / f"part-{attempt:03d}-{env.rank:05d}.jsonl")
    bar = JobProgress(known, "predict", "image", enabled=progress, initial=finished)
    fmt = (coco, out is not None, jsonl is not None)
    frames = people = 0
    try:
        for g, (kind, source) in enumerate(groups):
            here = [u for u in mine if u.group == g]
            if not here:
                continue
            if here[0].stop is None:
                n, p = _run_sequence(pipeline, g, kind, source, part, drawer, targets, fmt,
                                     max_frames, bar)  # fmt: skip
            else:
                n, p = _run_blocks(pipeline, g, source, here, state.images.get(g, set()), part,
                                   drawer, targets, fmt, max_frames, block, bar)  # fmt: skip
            frames, people = frames + n, people + p
    except BaseException:
        part.close()
        if env.world_size == 1 and not _scan(folder).done:  # nothing to resume: no folder
            _remove_parts(folder)
        raise
    finally:
        part.close()
        bar.close()
    drawn = len(drawer.written) if drawer is not None else 0
    table = pipeline.boxes
    misses, lookups = (table.misses, table.lookups) if table is not None else (0, 0)
    counts = distributed.gather_objects((frames, people, drawn, misses, lookups))
    summary = JobSummary(world_size=env.world_size)
    summary.new_frames = sum(c[0] for c in counts)
    summary.new_people = sum(c[1] for c in counts)
    summary.drawn = sum(c[2] for c in counts)
    summary.box_misses = sum(c[3] for c in counts)
    summary.box_lookups = sum(c[4] for c in counts)
    if env.is_main:  # the other ranks' parts are complete: gather_objects waited for them
        kinds = [kind for kind, _ in groups]
        merged = _merge(folder, out, jsonl, kinds)
        summary.frames, summary.people, summary.inputs, summary.failed, summary.outputs = merged
        if state.attempts:  # resumed: the stopped run's NAME.partial.EXT are complete now
            for path in summary.outputs:
                stale = path.with_name(f"{path.stem}.partial{path.suffix}")
                if stale.is_file():
                    stale.unlink()
                    log.info("removed %s: the stopped run's output, complete in %s", stale, path)
        _remove_parts(folder)
    summary.seconds = time.perf_counter() - start
    result = distributed.broadcast_object(summary)
    distributed.barrier()
    return result


def _frame_record(g: int, frame: Any, coco: bool, out: bool, jsonl: bool) -> dict[str, Any]:
    """A frame's line in a part: its output records and JSON Lines line, already serialised
    as the writers serialise them (the merge copies the text: the same bytes, and fast)."""
    records = frame.to_coco() if coco else frame.to_records()
    record: dict[str, Any] = {"g": g, "i": frame.index, "people": len(records)}
    if out:
        record["out"] = [json.dumps(r, allow_nan=False) for r in records]
    if jsonl:
        record["jsonl"] = json.dumps(frame.to_line(coco), allow_nan=False)
    return record


def _run_blocks(
    pipeline: PosePipeline,
    g: int,
    source: Any,
    units: list[Unit],
    done: set[int],
    part: _PartWriter,
    drawer: DrawingWriter | None,
    targets: dict[tuple[int, int], Path],
    fmt: tuple[bool, bool, bool],  # COCO records?, for --out?, for --jsonl?
    max_frames: int | None,
    block: int,
    bar: JobProgress,
) -> tuple[int, int]:
    """This rank's blocks of an image group: every image of each block runs (so the batches are
    an unbroken run's), the ones an earlier run completed are not written again."""
    wanted = sorted(i for u in units for i in range(u.start, u.stop or u.start))
    chosen = set(wanted)
    position = 0  # results come in order: the next one is wanted[position]
    frames = people = 0

    def skipped(name: str, error: Exception) -> None:
        nonlocal position
        index = wanted[position]
        position += 1
        if index not in done:
            print(f"warning: skipped {error}", flush=True, file=sys.stderr)
            part.write({"g": g, "i": index, "skipped": name})
            bar.update(1)

    stream = pipeline.run(source, on_error=skipped, max_frames=max_frames,
                          select=lambda e: e.index in chosen, block_size=block)  # fmt: skip
    for frame in stream:
        position = wanted.index(frame.index, position) + 1
        if frame.index in done:
            continue
        if drawer is not None:  # first: an image whose drawing failed is not done
            drawer.image(frame, targets[g, frame.index])
        part.write(_frame_record(g, frame, *fmt))
        frames, people = frames + 1, people + len(frame)
        bar.update(1)
    return frames, people


def _run_sequence(
    pipeline: PosePipeline,
    g: int,
    kind: str,
    source: Any,
    part: _PartWriter,
    drawer: DrawingWriter | None,
    targets: dict[tuple[int, int], Path],
    fmt: tuple[bool, bool, bool],  # COCO records?, for --out?, for --jsonl?
    max_frames: int | None,
    bar: JobProgress,
) -> tuple[int, int]:
    """A whole video (or tracked image sequence), ended by its end line."""
    frames = people = seen = 0  # seen: frames and unreadable images, in order

    def skipped(name: str, error: Exception) -> None:
        nonlocal seen
        print(f"warning: skipped {error}", flush=True, file=sys.stderr)
        part.write({"g": g, "i": seen, "skipped": name})
        seen += 1

    try:
        for frame in pipeline.run(source, on_error=skipped, max_frames=max_frames):
            seen += 1
            part.write(_frame_record(g, frame, *fmt))
            if drawer is not None:
                if kind == "images":
                    drawer.image(frame, targets[g, frame.index])
                else:
                    drawer.video_frame(frame, targets[g, -1])
            frames, people = frames + 1, people + len(frame)
            bar.update(1)
        if drawer is not None:
            drawer.end_video()
    except VideoError as e:
        if drawer is not None:
            drawer.abort()
        skipped(str(source), e)
    except BaseException:  # Ctrl-C, a full disk: --resume draws this video again from its start
        if drawer is not None:
            drawer.abort()
        raise
    part.write({"g": g, "end": frames})
    return frames, people


def write_partial(out: str | Path | None, jsonl: str | Path | None) -> list[Path]:
    """After a stop (Ctrl-C) in one process: the outputs from what the parts hold, under their
    names when new, else beside them as ``NAME.partial.EXT``; the parts stay for ``resume``."""
    folder = parts_folder(out, jsonl)
    if not folder.is_dir():  # stopped before any image was complete: nothing to keep
        return []
    return _merge(folder, out, jsonl, None, partial=True)[4]


def _merge(
    folder: Path,
    out: str | Path | None,
    jsonl: str | Path | None,
    kinds: list[str] | None,
    partial: bool = False,
) -> tuple[int, int, int, list[str], list[Path]]:
    """Write the outputs from the parts, in input order; (frames, people, inputs, failed,
    paths), inputs counting the images and videos (``kinds``: each group's)."""
    state = _scan(folder)

    def records(path: Path) -> Iterator[tuple[tuple[int, int], dict[str, Any]]]:
        for record in read_part(path):
            g = record["g"]
            if "end" in record or (g in state.sequences and state.sequences[g] != path.name):
                continue  # a sequence comes from the one file that completed it
            yield (g, record["i"]), record

    streams = [records(path) for path in _part_files(folder)]
    results = JsonListWriter(out, "--out") if out is not None else None
    lines = JsonLinesWriter(jsonl, "--jsonl") if jsonl is not None else None
    writers = [w for w in (results, lines) if w is not None]
    frames = people = 0
    failed: list[str] = []
    videos: set[int] = set()
    images = 0
    last = None
    try:
        for key, record in heapq.merge(*streams, key=lambda item: item[0]):
            if key == last:
                continue  # an image two runs completed (the same bits)
            last = key
            if "skipped" in record:
                failed.append(record["skipped"])
                continue
            frames, people = frames + 1, people + record["people"]
            if kinds is not None and kinds[key[0]] != "images":
                videos.add(key[0])
            else:
                images += 1
            if results is not None:
                for text in record["out"]:
                    results.write_json(text)
            if lines is not None:
                lines.write_json(record["jsonl"])
    except BaseException:
        for w in writers:
            w.abort()
        raise
    if frames == 0 and not partial:  # nothing read: an earlier output stays as it was
        earlier = [w for w in writers if w.path is not None and w.path.exists()]
        for w in earlier:
            w.abort()
        writers = [w for w in writers if w not in earlier]
    done = (w.keep_partial() if partial else w.close() for w in writers)
    paths = [p for p in done if p is not None]
    return frames, people, images + len(videos) + len(failed), failed, paths
