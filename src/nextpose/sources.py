"""Where images come from: files, folders (recursive), arrays, video files and cameras, opened
as a :class:`Stream` of entries in order."""

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .data.images import (
    VideoReader,
    as_rgb_image,
    expand_inputs,
    is_stream_url,
    is_video_file,
    list_images,
    read_image,
)
from .errors import InputError

log = logging.getLogger("nextpose")

ImageLike = str | Path | np.ndarray
Source = ImageLike | int | Iterable[ImageLike]


@dataclass
class Entry:
    """What the stages know about a frame before it is decoded."""

    index: int
    name: str
    image_id: int
    keys: tuple[str, ...] = ()  # names in a BoxTable
    path: Path | None = None
    frame: int | None = None
    time: float | None = None
    box_id: int | None = None  # its id in COCO detection results: the file's or frame's number


@dataclass
class Stream:
    """A source opened for reading: its entries, in order, each with its image or a function
    that decodes it."""

    entries: Iterator[tuple[Entry, Callable[[], np.ndarray] | np.ndarray]]
    total: int | None
    name: str
    fps: float | None = None
    live: bool = False  # a camera: process what is there rather than wait for full batches
    reader: "VideoReader | NewestFrames | None" = None  # closed by whoever opened the stream


class NewestFrames:
    """The frames of a live source (a camera, a stream of no known length), read in a thread
    as fast as they come; iterating yields the newest frame not yet taken, so what is
    estimated is what the camera sees now. A frame that a newer one replaced before it was
    taken is dropped (:attr:`dropped` counts them). The capture is read and released in that
    one thread."""

    def __init__(self, reader: VideoReader):
        self.reader = reader
        self.dropped = 0
        self._ready = threading.Condition()
        self._frame: tuple[int, float, np.ndarray] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _grab(self) -> None:
        try:
            for frame in self.reader:  # releases the capture when it ends
                with self._ready:
                    self.dropped += self._frame is not None
                    self._frame = frame
                    self._ready.notify()
                if self._stop.is_set():
                    break
        except BaseException as e:  # handed to the consumer, which raises it
            self._error = e
        finally:
            self.reader.close()
            with self._ready:
                self._ended = True
                self._ready.notify()

    def __iter__(self) -> Iterator[tuple[int, float, np.ndarray]]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._grab, name="nextpose-frames", daemon=True)
            self._thread.start()
        try:
            while True:
                with self._ready:
                    self._ready.wait_for(
                        lambda: self._frame is not None or self._ended or self._stop.is_set()
                    )
                    frame, self._frame = self._frame, None
                if self._stop.is_set():
                    return
                if frame is not None:
                    yield frame
                elif self._error is not None:
                    raise self._error
                else:
                    return
        finally:  # a consumer that stops reading stops the capture too
            self._stop.set()

    def close(self) -> None:
        """Stop reading; the thread releases the capture after the read it is in (a camera's
        next frame, a stream's read timeout at most)."""
        with self._ready:  # wakes a consumer waiting for a frame
            self._stop.set()
            self._ready.notify_all()
        if self._thread is None:
            self.reader.close()
        else:
            self._thread.join(timeout=5)
        if self.dropped:
            # Expected of a camera; a stream might be a file the user wants every frame of.
            stream = self.reader.is_stream
            hint = " (every_frame / --every-frame estimates each)" if stream else ""
            (log.warning if stream else log.info)(
                "%s: %d frames were dropped: the estimator could not keep up with them%s",
                self.reader.source, self.dropped, hint,
            )  # fmt: skip
            self.dropped = 0  # said once


_WARNED: set[tuple[str, ...]] = set()  # repeated names said once per process (streams reopen)


def _warn_repeated_names(listing: list[tuple[Any, str, tuple[str, ...], Path | None]]) -> None:
    """Warn when image files of several inputs have the same name (``a/x.jpg``, ``b/x.jpg``):
    the outputs' ``image`` fields cannot tell them apart."""
    paths: dict[str, list[Path]] = {}
    for _, name, _, path in listing:
        if path is not None:
            paths.setdefault(name, []).append(path)
    repeated = tuple(sorted(name for name, found in paths.items() if len(found) > 1))
    if repeated and repeated not in _WARNED:
        _WARNED.add(repeated)
        first = paths[repeated[0]]
        what = "1 image name occurs" if len(repeated) == 1 else f"{len(repeated)} image names occur"
        log.warning(
            "%s more than once among the inputs (%s: %s and %s): the outputs name images by "
            "these names, so only their order tells those images apart",
            what, repeated[0], first[0], first[1],
        )  # fmt: skip


def _image_stream(inputs: Iterable[ImageLike], max_frames: int | None) -> Stream:
    """Image files, folders (listed recursively) and arrays, flattened into one stream."""
    sized = isinstance(inputs, Sequence)
    listing: list[tuple[ImageLike, str, tuple[str, ...], Path | None]] = []

    def expand(x: ImageLike) -> Iterator[tuple[ImageLike, str, tuple[str, ...], Path | None]]:
        if isinstance(x, np.ndarray):
            yield x, "", (), None
            return
        path = Path(x)
        if path.is_dir():
            for file in list_images(path):
                rel = file.relative_to(path).as_posix()
                yield file, rel, (str(file), rel, file.name), file
        elif is_video_file(path) and path.is_file():
            raise InputError(f"{path}: a video; run it as a source of its own")
        else:
            yield path, path.name, (str(x), path.name), path

    if sized:
        listing = [entry for x in inputs for entry in expand(x)][:max_frames]
        _warn_repeated_names(listing)
        stems = [p.stem for _, _, _, p in listing if p is not None]
        numeric = len(stems) == len(listing) and all(s.isdigit() for s in stems)
        numeric = numeric and len({int(s) for s in stems}) == len(stems)
        entries: Iterable = listing
    else:
        numeric = False
        entries = (entry for x in inputs for entry in expand(x))

    def items() -> Iterator[tuple[Entry, Callable[[], np.ndarray] | np.ndarray]]:
        for index, (x, name, keys, path) in enumerate(entries):
            if max_frames is not None and index >= max_frames:
                return
            number = int(path.stem) if path is not None and path.stem.isdigit() else None
            image_id = number if numeric and number is not None else index
            item = Entry(index, name or f"image{index}", image_id, keys, path, box_id=number)
            if isinstance(x, np.ndarray):
                yield item, as_rgb_image(x, item.name)
            else:
                yield item, (lambda p=x: read_image(p))

    return Stream(items(), len(listing) if sized else None, "images")


def _video_stream(source: str | Path | int, max_frames: int | None, every_frame: bool) -> Stream:
    reader = VideoReader(source, max_frames)
    if reader.is_camera:
        name, path = f"camera{source}", None
    elif is_stream_url(source):  # a name for outputs: the URL's last part, made file-safe
        tail = str(source).rstrip("/").rsplit("/", 1)[-1] or "stream"
        name, path = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._") or "stream", None
    else:
        name, path = Path(source).name, Path(source)

    live = reader.is_live
    frames = NewestFrames(reader) if live and not every_frame else reader

    def items() -> Iterator[tuple[Entry, np.ndarray]]:
        for number, stamp, image in frames:
            yield Entry(number, name, number, (str(number),), path, number, stamp, number), image

    return Stream(items(), reader.frame_count, name, reader.fps, live, frames)


def open_stream(source: Source, max_frames: int | None = None, every_frame: bool = False) -> Stream:
    """Classify a source: a camera index, a video file, or images (files, folders, arrays).

    A live source (a camera, a stream of no known length) yields its newest frame each time
    (:class:`NewestFrames`), or with ``every_frame`` each frame however far behind that falls.
    """
    if isinstance(source, int) and not isinstance(source, bool):
        return _video_stream(source, max_frames, every_frame)
    if isinstance(source, str | Path):
        text = str(source)
        if isinstance(source, str) and is_stream_url(source):
            return _video_stream(source, max_frames, every_frame)
        if text.isdigit() and not Path(text).exists():
            return _video_stream(int(text), max_frames, every_frame)
        if is_video_file(text):
            return _video_stream(Path(text), max_frames, every_frame)
        return _image_stream([source], max_frames)
    if isinstance(source, np.ndarray):
        return _image_stream([source], max_frames)
    if isinstance(source, Iterable):
        return _image_stream(source if isinstance(source, Sequence) else iter(source), max_frames)
    raise InputError(f"cannot read images from a {type(source).__name__}")


def input_groups(inputs: Sequence[str]) -> list[tuple[str, Any]]:
    """Command-line inputs as sources, glob patterns expanded: consecutive images and folders
    form one stream (``("images", [...])``); each video file or stream URL (``("video", x)``)
    and each camera (``("camera", 0)``) is its own.

    Raises:
        InputError: a glob pattern matches nothing; a path (not a pattern's match) that does
            not exist, before anything is loaded (a typo would be a skipped image, exit 1).
    """
    groups: list[tuple[str, Any]] = []
    for found in expand_inputs(inputs):
        path = found.value
        given = found.kind in ("image", "video") and Path(found.text) == path  # no pattern's
        if given and not path.exists():
            what = "a link to nothing" if path.is_symlink() else "no such file or folder"
            raise InputError(f"{found.text}: {what} (an input)")
        if found.kind == "camera":
            groups.append(("camera", found.value))
        elif found.kind in ("video", "stream"):
            groups.append(("video", str(found.value)))
        elif groups and groups[-1][0] == "images":
            groups[-1][1].append(str(found.value))
        else:
            groups.append(("images", [str(found.value)]))
    return groups
