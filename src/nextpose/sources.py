"""Where images come from: files, folders (recursive), arrays, video files and cameras, opened
as a :class:`Stream` of entries in order."""

import re
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


@dataclass
class Stream:
    """A source opened for reading: its entries, in order, each with its image or a function
    that decodes it."""

    entries: Iterator[tuple[Entry, Callable[[], np.ndarray] | np.ndarray]]
    total: int | None
    name: str
    fps: float | None = None
    live: bool = False  # a camera: process what is there rather than wait for full batches
    reader: VideoReader | None = None


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
            image_id = int(path.stem) if numeric and path is not None else index
            item = Entry(index, name or f"image{index}", image_id, keys, path)
            if isinstance(x, np.ndarray):
                yield item, as_rgb_image(x, item.name)
            else:
                yield item, (lambda p=x: read_image(p))

    return Stream(items(), len(listing) if sized else None, "images")


def _video_stream(source: str | Path | int, max_frames: int | None) -> Stream:
    reader = VideoReader(source, max_frames)
    if reader.is_camera:
        name, path = f"camera{source}", None
    elif is_stream_url(source):  # a name for outputs: the URL's last part, made file-safe
        tail = str(source).rstrip("/").rsplit("/", 1)[-1] or "stream"
        name, path = re.sub(r"[^A-Za-z0-9._-]+", "_", tail).strip("._") or "stream", None
    else:
        name, path = Path(source).name, Path(source)

    def items() -> Iterator[tuple[Entry, np.ndarray]]:
        for number, stamp, image in reader:
            yield Entry(number, name, number, (str(number),), path, number, stamp), image

    live = reader.is_camera or reader.is_live
    return Stream(items(), reader.frame_count, name, reader.fps, live, reader)


def open_stream(source: Source, max_frames: int | None = None) -> Stream:
    """Classify a source: a camera index, a video file, or images (files, folders, arrays)."""
    if isinstance(source, int) and not isinstance(source, bool):
        return _video_stream(source, max_frames)
    if isinstance(source, str | Path):
        text = str(source)
        if isinstance(source, str) and is_stream_url(source):
            return _video_stream(source, max_frames)
        if text.isdigit() and not Path(text).exists():
            return _video_stream(int(text), max_frames)
        if is_video_file(text):
            return _video_stream(Path(text), max_frames)
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
        InputError: a glob pattern matches nothing.
    """
    groups: list[tuple[str, Any]] = []
    for found in expand_inputs(inputs):
        if found.kind == "camera":
            groups.append(("camera", found.value))
        elif found.kind in ("video", "stream"):
            groups.append(("video", str(found.value)))
        elif groups and groups[-1][0] == "images":
            groups[-1][1].append(str(found.value))
        else:
            groups.append(("images", [str(found.value)]))
    return groups
