"""Output writers: JSON lists, JSON Lines and drawn images and videos, none of which ever
replaces an input or leaves a half-written file where a complete one was.

* Every file is written under a temporary name and renamed when complete (:mod:`nextpose.fileio`).
* An output that would land on an input file (``--out`` naming an image, ``--draw`` into the
  input folder) or on another output is refused before anything is written.
* A run that stops with an error, or reads no image, leaves any earlier output as it was. A
  run interrupted by the user (Ctrl-C) keeps what it has: under the output's own name when
  there was no file there before, otherwise beside it as ``NAME.partial.EXT``.
"""

import glob
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import numpy as np

from .data.images import IMAGE_EXTENSIONS, is_video_file, list_images
from .errors import OutputError
from .fileio import AtomicFile, cannot_write, check_writable
from .opencv import cv2
from .structures import Frame


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except OSError:
        return False


class Guard:
    """The files a run reads, which its outputs must not replace.

    Args:
        inputs: files and folders given as inputs (folders protect everything inside them).
    """

    def __init__(self, inputs: Iterable[str | Path]):
        self.files: set[Path] = set()
        self.folders: list[Path] = []
        for item in inputs:
            path = Path(item)
            if path.is_dir():
                self.folders.append(path.resolve())
            elif path.exists():
                self.files.add(path.resolve())
        self.outputs: dict[Path, str] = {}
        self._read: set[Path] | None = None

    def _folder_files(self) -> set[Path]:
        """The files the input folders' images are, links followed (listed on first need)."""
        if self._read is None:
            self._read = set()
            for folder in self.folders:
                try:
                    self._read.update(p.resolve() for p in list_images(folder))
                except OSError:
                    continue
        return self._read

    def is_input(self, path: Path) -> bool:
        """Whether writing ``path`` would replace an input: an input file, an image a folder
        input lists (also through a link), or a new image or video file inside an input
        folder (which a later run over that folder would read)."""
        resolved = path.resolve()
        if resolved in self.files:
            return True
        if resolved.exists() and self.folders and resolved in self._folder_files():
            return True
        listed = any(is_image_file(p) or is_video_file(p) for p in (path, resolved))
        return listed and any(_inside(resolved, f) for f in self.folders)

    def claim(self, path: str | Path, option: str) -> Path:
        """Check that ``path`` (given by ``option``) replaces no input and no other output."""
        path = Path(path)
        resolved = path.resolve()
        if self.is_input(path):
            raise OutputError(f"{option} {path}: would overwrite an input; choose another path")
        if resolved in self.outputs and self.outputs[resolved] != option:
            raise OutputError(
                f"{option} {path}: the same file as {self.outputs[resolved]}; give each output "
                "its own path"
            )
        check_writable(path, option)
        self.outputs[resolved] = option
        return path

    def claim_folder(self, folder: str | Path, option: str) -> Path:
        """Check that an output folder is neither an input folder nor inside one, and holds no
        input image, video or folder (a drawing ``x.jpg`` of ``x.png`` would replace the
        ``x.jpg`` beside it)."""
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{option} {folder}: exists and is not a folder")
        for f in self.folders:
            if _inside(folder, f):
                raise OutputError(
                    f"{option} {folder}: inside the input folder {f}; drawn images would "
                    "overwrite or mix with the inputs, choose another folder"
                )
        media = [f for f in self.files if is_image_file(f) or is_video_file(f)]
        for held in (*self.folders, *media):
            if _inside(held, folder):
                raise OutputError(
                    f"{option} {folder}: holds the input {held}; drawn images would overwrite "
                    "or mix with the files beside the inputs, choose another folder"
                )
        return folder

    def check_target(self, path: Path, option: str) -> None:
        """Refuse a file an output folder would write over an input."""
        if self.is_input(path):
            raise OutputError(f"{option}: {path} would overwrite an input; choose another folder")


def _open_error(path: Path, option: str, error: OSError) -> OutputError:
    """:func:`~nextpose.fileio.cannot_write`'s error (AtomicFile's already is one), with the
    option that named the file."""
    message = str(cannot_write(path, error))
    return OutputError(message if message.startswith(option) else f"{option} {message}")


class _Output:
    """A text output written atomically; :meth:`close` commits, :meth:`abort` discards and
    :meth:`keep_partial` commits without replacing an earlier complete file."""

    def __init__(self, path: str | Path | None, option: str):
        self.option = option
        self.path = Path(path) if path is not None else None
        self._atomic: AtomicFile | None = None
        if self.path is None:
            self.file: IO[str] = sys.stdout
            return
        try:
            self._atomic = AtomicFile(self.path)
        except OSError as e:
            raise _open_error(self.path, option, e) from None
        self.file = self._atomic.file

    def _write(self, text: str) -> None:
        try:
            self.file.write(text)
        except OSError as e:
            raise _open_error(self.path or Path("-"), self.option, e) from None

    def _finish(self) -> None:
        """What completes the file (a list's closing bracket)."""

    def close(self) -> Path | None:
        self._finish()
        if self._atomic is None:
            self.file.flush()
            return None
        try:
            return self._atomic.commit()
        except OSError as e:
            self._atomic.discard()
            raise _open_error(self.path, self.option, e) from None

    def keep_partial(self) -> Path | None:
        """Commit an interrupted run's output: under its name if nothing was there, else as
        ``NAME.partial.EXT`` beside it (an earlier complete file is kept)."""
        self._finish()
        if self._atomic is None or self.path is None:
            self.file.flush()
            return None
        target = self.path
        if target.exists():
            target = target.with_name(f"{target.stem}.partial{target.suffix}")
        return self._atomic.commit(target)

    def abort(self) -> None:
        if self._atomic is not None:
            self._atomic.discard()


class JsonListWriter(_Output):
    """A JSON list written one record at a time (memory stays flat on long videos); standard
    output when ``path`` is None. Numbers are strict JSON (no NaN or Infinity)."""

    def __init__(self, path: str | Path | None, option: str = "--out"):
        super().__init__(path, option)
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        self.write_json(json.dumps(record, allow_nan=False))

    def write_json(self, text: str) -> None:
        """Add a record already serialised (strict JSON, one line)."""
        self._write(("[\n" if self.count == 0 else ",\n") + text)
        self.count += 1

    def _finish(self) -> None:
        self._write("\n]\n" if self.count else "[]\n")


class JsonLinesWriter(_Output):
    """One JSON object per line (strict JSON)."""

    def write(self, record: dict[str, Any]) -> None:
        self.write_json(json.dumps(record, allow_nan=False))

    def write_json(self, text: str) -> None:
        """Add a line already serialised (strict JSON, no newline in it)."""
        self._write(text + "\n")


def _remove_stale_videos(target: Path) -> None:
    """Remove the hidden ``.<stem>.<pid>.tmp.mp4`` of ``target`` that a killed run left (its
    process is gone: nobody else writes there, and no run would find it again)."""
    pattern = f".{glob.escape(target.stem)}.*.tmp.mp4"
    for stale in target.parent.glob(pattern):
        pid = stale.name[len(target.stem) + 2 : -len(".tmp.mp4")]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # a live process: its own video
        except ProcessLookupError:
            stale.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            continue  # another user's live process, or not a pid


class DrawingWriter:
    """``--draw DIR``: each image as ``DIR/<name>.jpg`` (a folder's layout kept), each video or
    camera as ``DIR/<name>.mp4``, with boxes, skeletons and keypoints drawn."""

    def __init__(
        self, folder: str | Path, score_threshold: float = 0.3, guard: Guard | None = None
    ):
        self.dir = Path(folder)
        self.guard = guard or Guard([])
        self.guard.claim_folder(self.dir, "--draw")
        self._made = [p for p in (self.dir, *self.dir.parents) if not p.exists()]
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _open_error(self.dir, "--draw", e) from None
        self.score_threshold = score_threshold
        self._used: set[Path] = set()
        self._video: cv2.VideoWriter | None = None
        self._video_tmp: Path | None = None
        self._video_target: Path | None = None
        self._shown: tuple[int, np.ndarray] | None = None  # the video's last frame: index, BGR
        self.written: list[Path] = []

    def _unique(self, target: Path) -> Path:
        stem, n = target.stem, 1
        while target in self._used or target.resolve() in self.guard.outputs:  # --out in DIR
            n += 1
            target = target.with_name(f"{stem}-{n}{target.suffix}")
        self._used.add(target)
        self.guard.check_target(target, "--draw")
        return target

    def remove_if_unused(self) -> None:
        """Remove the folders made for the drawings if nothing was drawn in them (a run refused
        after its checks)."""
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:
                break

    def target(self, name: str, video: bool = False) -> Path:
        """The file the next image (or video) called ``name`` is drawn to: ``DIR/<name>.jpg``
        (``.mp4``), ``-2``, ``-3``, ... added when an earlier one took that name."""
        return self._unique(self.dir / Path(name).with_suffix(".mp4" if video else ".jpg"))

    def image(self, frame: Frame, target: Path | None = None) -> None:
        """Draw ``frame`` to ``target`` (default: :meth:`target` of its name)."""
        target = target if target is not None else self.target(frame.name)
        drawn = frame.draw(self.score_threshold)
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OutputError(f"--draw: OpenCV could not encode {target}")
        try:
            with AtomicFile(target, "wb") as f:
                f.write(data.tobytes())
        except OSError as e:
            raise _open_error(target, "--draw", e) from None
        self.written.append(target)

    def video_frame(self, frame: Frame, target: Path | None = None) -> None:
        """Add ``frame`` to the current video, started at ``target`` (default: :meth:`target`
        of its name) on its first frame. Where a camera's frames were dropped, the frame before
        them is held in their place, so that the video plays at the camera's pace."""
        if self._video is None:
            target = target if target is not None else self.target(frame.name, video=True)
            h, w = frame.image.shape[:2]
            # Written under a hidden name (with the .mp4 suffix OpenCV needs) and renamed.
            tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.mp4")
            _remove_stale_videos(target)
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            video = cv2.VideoWriter(str(tmp), fourcc, frame.fps or 30.0, (w, h))
            if not video.isOpened():
                tmp.unlink(missing_ok=True)
                raise OutputError(f"--draw {target}: OpenCV cannot write MP4 video here")
            self._video, self._video_tmp, self._video_target = video, tmp, target
            self._shown = None
        if self._shown is not None:
            for _ in range(frame.index - self._shown[0] - 1):
                self._video.write(self._shown[1])
        drawn = frame.draw(self.score_threshold)
        bgr = cv2.cvtColor(np.ascontiguousarray(drawn), cv2.COLOR_RGB2BGR)
        self._video.write(bgr)
        self._shown = frame.index, bgr

    def end_video(self) -> None:
        """Finish the current video (renamed to its name)."""
        if self._video is None:
            return
        self._video.release()
        assert self._video_tmp is not None and self._video_target is not None
        self._video_tmp.replace(self._video_target)
        self.written.append(self._video_target)
        self._video = self._video_tmp = self._video_target = self._shown = None

    def keep_partial(self) -> Path | None:
        """Finish an interrupted video: under its name if nothing was there, else as
        ``NAME.partial.mp4`` beside it (an earlier complete video is kept); None if none."""
        target = self._video_target
        if self._video is None or target is None:
            return None
        if target.exists():
            self._video_target = target.with_name(f"{target.stem}.partial{target.suffix}")
        kept = self._video_target
        self.end_video()
        return kept

    def abort(self) -> None:
        """Drop an unfinished video."""
        if self._video is not None:
            self._video.release()
            assert self._video_tmp is not None
            self._video_tmp.unlink(missing_ok=True)
            self._video = self._video_tmp = self._video_target = self._shown = None
