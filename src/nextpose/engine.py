"""The one inference engine: every entry point (``predict``, ``predict_many``, the pipeline over
folders and videos, evaluation) runs its images through :meth:`Engine.run`.

Stages, each bounded so memory does not grow with the number of images or boxes:

1. **read**: image files are decoded by ``read_threads`` threads, in order, a few ahead;
2. **boxes and crops**: person boxes come with the task, from the detector, or cover the whole
   image; the crops of each image are cut in chunks of at most ``batch_size`` (with OpenCV, or on
   the device with ``device_crops``); this stage runs in a background thread when images are
   read ahead (``read_threads > 0``), for a camera and for a service, else in the caller's;
3. **network**: the caller's thread joins chunks of several images into batches of exactly
   ``batch_size`` crops, runs the network (flip test included) and the decoding, maps keypoints
   back to image pixels and hands out each image's :class:`Result` in task order.

The batches depend only on the sequence of boxes and ``batch_size``, never on timing, so every
entry point gives the same keypoints for the same images and boxes (a live camera excepted: it
runs what has arrived rather than wait for a full batch). A service (``max_wait``) feeds one long
run with the requests' tasks as they come: a batch that is not full runs once its first crop has
waited ``max_wait`` seconds, so concurrent requests share batches and none waits for later ones.
A crop's keypoints do not depend on the batch it runs in (tests/test_serve.py checks it against
``predict``); its scores may differ in the last float32 bits, as between ``predict`` and
``predict_many``: the convolution kernels sum in another order for other batch sizes.
"""

import contextlib
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from .boxes import BoxFormat, as_boxes
from .config import Config, check_decode
from .data.images import as_rgb_image, read_image
from .errors import ImageError, InputError, NextposeError, NumericsError
from .geometry import crop_region, crop_to_image, cut_crops
from .opencv import cv2
from .options import Network, RunOptions
from .structures import Poses

ImageSource = str | Path | np.ndarray | Callable[[], np.ndarray]
T = TypeVar("T")


class Detector(Protocol):
    """Person boxes for a batch of images: (N, 5) float32 xyxy + score each."""

    batch_size: int

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]: ...


@dataclass
class Task:
    """One image for the engine.

    Attributes:
        image: a file path, an (H, W, 3) uint8 RGB array, or a function returning one.
        boxes: person boxes in ``bbox_format`` image pixels ((N, 4) or (N, 5) with scores);
            None: the detector's, or one whole-image box without a detector.
        name: how messages name the image (default: the path).
        tag: anything the caller wants back with the result.
        ends_block: no batch (of the detector or the network) joins this task's crops to the
            next task's: the results up to here do not depend on what follows (the unit of
            work of a sharded or resumed run, :mod:`nextpose.sharded`).
        keep_inverted: crop boxes with x2 < x1 or y2 < y1 as given instead of refusing them
            (a detection file's negative sizes, which the reference's evaluation crops, §1.4).
    """

    image: ImageSource
    boxes: Any = None
    name: str = ""
    tag: Any = None
    bbox_format: BoxFormat = "xyxy"
    ends_block: bool = False
    keep_inverted: bool = False

    def label(self) -> str:
        if self.name:
            return self.name
        return str(self.image) if isinstance(self.image, str | Path) else "the image"


@dataclass
class Result:
    """What became of a :class:`Task`: its image and poses, or the error that skipped it."""

    task: Task
    image: np.ndarray | None
    poses: Poses | None
    error: NextposeError | None = None


@dataclass
class _Chunk:
    """At most ``batch_size`` crops of one image (all of an image's chunks share ``item``)."""

    item: "_Item"
    start: int  # index of the first crop among the image's boxes
    crops: Any  # (n, h, w, 3) uint8: an array, or a tensor on the device (device crops)
    centers: np.ndarray  # (n, 2) float32
    scales: np.ndarray  # (n, 2) float32


@dataclass
class _Item:
    """An image in flight: its boxes, and its keypoints as they are filled in."""

    task: Task
    image: np.ndarray | None
    boxes: np.ndarray  # (N, 5)
    keypoints: np.ndarray
    scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    error: NextposeError | None = None
    cut: bool = False  # all chunks made
    queued: bool = False  # in the network stage's queue
    missing: int = field(default=0)  # crops not yet through the network


_END = object()
_WAITED = object()  # nothing arrived in time


class _BlockEnd:
    """After the chunks of a task that ends a block: run the partial batch now."""


class _Raised:
    def __init__(self, error: BaseException):
        self.error = error


class _Background(Iterator[T]):
    """Iterates a generator in a daemon thread, a bounded queue ahead of the consumer; an
    exception in the thread is raised in the consumer at its place in the sequence."""

    def __init__(self, items: Iterator[T], maxsize: int):
        self._queue: queue.Queue = queue.Queue(maxsize)
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._run, daemon=True, name="nextpose-crops")
        self._thread.start()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for value in self._items:
                if not self._put(value):
                    break
            else:
                self._put(_END)
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(_Raised(e))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()  # e.g. a video reader releases its capture, in the thread reading it

    def __next__(self) -> T:
        return self.next_within(None)

    def next_within(self, timeout: float | None) -> Any:
        """The next value, or ``_WAITED`` when none arrives within ``timeout`` seconds."""
        try:
            value = self._queue.get(timeout=timeout)
        except queue.Empty:
            return _WAITED
        if value is _END:
            self._queue.put(_END)  # stay exhausted
            raise StopIteration
        if isinstance(value, _Raised):
            raise value.error
        return value

    def idle(self) -> bool:
        """Nothing is waiting: the consumer would block."""
        return self._queue.empty()

    def close(self, wait: bool = True) -> None:
        """Stop reading; ``wait``: until the thread has ended (a thread blocked in a source
        that its caller wakes, as a service's feed, is not waited for)."""
        self._stop.set()
        if wait:
            self._thread.join(timeout=30)


def ordered_map(
    fn: Callable[..., T], items: Iterable[tuple], threads: int = 2, depth: int | None = None
) -> Iterator[T]:
    """``fn(*args)`` for each args tuple of ``items``, computed in ``threads`` threads at most
    ``depth`` (2 x threads) ahead and yielded in order; an exception is raised where its result
    would have been. ``items`` itself is consumed in the calling thread. Image decoding and
    OpenCV release the GIL, so this overlaps reading with the forward pass."""
    if threads < 1:
        yield from (fn(*args) for args in items)
        return
    depth = depth or 2 * threads
    pool = ThreadPoolExecutor(threads, thread_name_prefix="nextpose-read")
    pending: deque[Future] = deque()
    try:
        for args in items:
            pending.append(pool.submit(fn, *args))
            if len(pending) >= depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _join(crops: list[Any]) -> Any:
    """The crops of several chunks as one batch (arrays, or tensors on the device)."""
    if len(crops) == 1:
        return crops[0]
    if isinstance(crops[0], np.ndarray):
        return np.concatenate(crops)
    import torch

    return torch.cat(crops)


def _per_image(error: Exception, where: str) -> NextposeError:
    """An error at a per-image step as the :class:`ImageError` that skips that image."""
    if isinstance(error, NextposeError):
        return error
    return ImageError(f"{where}: {error}".strip())


class Engine:
    """Runs :class:`Task` s through a :class:`~nextpose.options.Network` (see the module doc).

    Args:
        network: the pose network (:func:`~nextpose.runtime.build_network`).
        config: the model's config (input size, padding, keypoint set, default flip).
        options: run options (batch size, read threads, device crops).
        detector: person boxes for tasks that give none; None: whole-image boxes.
    """

    def __init__(
        self,
        network: Network,
        config: Config,
        options: RunOptions,
        detector: Detector | None = None,
    ):
        self.network = network
        self.config = config
        self.options = options
        self.detector = detector
        # On a CPU the detector and the pose network compete for the same cores: one forward
        # pass at a time is faster than two interleaved ones. On a GPU they overlap.
        cpu = options.device_type == "cpu"
        self._compute = threading.Lock() if cpu else contextlib.nullcontext()
        self.batch_sizes: Counter[int] = Counter()  # crops per network batch -> batches run
        self._counting = threading.Lock()  # runs in several threads share the counts

    def run(
        self,
        tasks: Iterable[Task],
        flip: bool | None = None,
        live: bool = False,
        max_wait: float | None = None,
        decode: str | None = None,
    ) -> Iterator[Result]:
        """A :class:`Result` per task, in order. An unreadable image gives a result with its
        ``error`` (the run goes on); a network problem (non-finite heatmaps) raises, except in
        a service (``max_wait``), where it is the error of the tasks whose crops it concerns.

        Args:
            flip: flip test on/off; None uses the model config's (on).
            live: a camera: run what has arrived instead of waiting for full batches.
            max_wait: a service whose ``tasks`` arrive over time (the iterator blocks until
                the next): run a batch that is not full once its first crop has waited this
                many seconds. Tasks are read in the calling order without reading ahead (a
                service gives decoded images), and cut in a background thread.
            decode: ``msra`` or ``dark``; None uses the model config's.
        """
        if flip is not None and not isinstance(flip, bool):  # "false" would be truthy
            raise InputError(f"flip must be True, False or None, not {flip!r}")
        flip = self.config.inference.flip if flip is None else flip
        decode = check_decode(self.config.inference.decode if decode is None else decode)
        service = max_wait is not None
        # A camera's frames are read as they come (nothing to decode ahead, and each frame
        # read ahead is one the estimate lags behind), so are a service's requests.
        threads = 0 if service or live else self.options.read_threads
        decoded = ordered_map(self._read, ((t,) for t in tasks), threads)
        chunks: Iterator[_Item | _Chunk | _BlockEnd] = self._cut(decoded, live or service)
        background = None
        if threads > 0 or service or live:
            # A service holds a batch's worth of requests ahead (an image, its crops, its end
            # mark each), so those that arrived during a batch are all there for the next one;
            # a camera's next frame is cut while the network runs this one.
            depth = 3 * self.options.batch_size if service else 1 if live else 2 * threads + 2
            background = _Background(chunks, maxsize=depth)
            chunks = background
        try:
            yield from self._estimate(
                chunks, (flip, decode), background if live else None, max_wait
            )
        finally:
            if background is not None:
                background.close(wait=not service)

    # -- stage 1 ---------------------------------------------------------------------------

    @staticmethod
    def _read(task: Task) -> tuple[Task, np.ndarray | None, NextposeError | None]:
        """Decode one task's image; an error is returned for its result, not raised."""
        try:
            source = task.image
            if isinstance(source, str | Path):
                image = read_image(source)
            elif callable(source):  # checked as an array given directly is
                image = as_rgb_image(source(), task.label())
            else:
                image = as_rgb_image(source, task.label())
            return task, image, None
        except (NextposeError, cv2.error, OSError) as e:
            return task, None, _per_image(e, task.label())

    # -- stage 2 ---------------------------------------------------------------------------

    def _cut(
        self, decoded: Iterator[tuple[Task, np.ndarray | None, NextposeError | None]], live: bool
    ) -> Iterator["_Item | _Chunk | _BlockEnd"]:
        """Boxes for each image (the detector's in batches), then its crops chunk by chunk."""
        pending: list[tuple[Task, np.ndarray]] = []
        batch = 1 if live or self.detector is None else max(1, self.detector.batch_size)
        for task, image, error in decoded:
            if error is not None:
                yield from self._flush(pending)
                yield self._failed(task, error)
                if task.ends_block:
                    yield _BlockEnd()
                continue
            assert image is not None
            if task.boxes is None and self.detector is not None:
                pending.append((task, image))
                if len(pending) >= batch or task.ends_block:
                    yield from self._flush(pending)
            else:
                yield from self._flush(pending)
                yield from self._chunks(task, image, task.boxes)
            if task.ends_block:
                yield _BlockEnd()
        yield from self._flush(pending)

    def _flush(self, pending: list[tuple[Task, np.ndarray]]) -> Iterator["_Item | _Chunk"]:
        if not pending:
            return
        assert self.detector is not None
        with self._compute:
            found = self.detector([image for _, image in pending])
        done = list(pending)
        pending.clear()
        for (task, image), boxes in zip(done, found, strict=True):
            yield from self._chunks(task, image, boxes, "xyxy")

    def _failed(self, task: Task, error: NextposeError) -> _Item:
        k = self.config.model.num_keypoints
        z = np.zeros((0, 2), np.float32)
        empty = np.zeros((0, 5), np.float32)
        item = _Item(task, None, empty, np.zeros((0, k, 2), np.float32), z[:, 0], z, z, error)
        item.cut = True
        return item

    def _chunks(
        self, task: Task, image: np.ndarray, boxes: Any, bbox_format: BoxFormat | None = None
    ) -> Iterator["_Item | _Chunk"]:
        label = task.label()
        try:
            b = as_boxes(
                boxes, image.shape, label, bbox_format or task.bbox_format, task.keep_inverted
            )
        except NextposeError as e:
            yield self._failed(task, e)
            return
        n, k = len(b), self.config.model.num_keypoints
        size, padding = self.config.model.input_size, self.config.inference.padding
        centers, scales = crop_region(b[:, :4], size, padding)
        item = _Item(
            task,
            image,
            b,
            np.zeros((n, k, 2), np.float32),
            np.zeros((n, k), np.float32),
            centers,
            scales,
            missing=n,
        )
        yield item
        step = self.options.batch_size
        on_device = None
        for start in range(0, n, step):
            c, s = centers[start : start + step], scales[start : start + step]
            try:
                if self.options.device_crops:
                    if on_device is None:
                        on_device = self.network.to_device(image)
                    crops: Any = self.network.cut_crops(on_device, c, s)
                else:
                    crops = cut_crops(image, c, s, size, label)
            except (cv2.error, ImageError, RuntimeError) as e:
                item.error = _per_image(
                    e, f"{label}: cannot crop the {image.shape[1]} x {image.shape[0]} image"
                )
                break
            yield _Chunk(item, start, crops, c, s)
        item.cut = True
        yield item  # marks the end of its chunks

    # -- stage 3 ---------------------------------------------------------------------------

    def _estimate(
        self,
        chunks: Iterator["_Item | _Chunk | _BlockEnd"],
        how: tuple[bool, str],
        live: _Background | None = None,
        max_wait: float | None = None,
    ) -> Iterator[Result]:
        """Join chunks into batches of ``batch_size`` crops and run them; a partial batch runs
        at a block's end, at the end, for a camera (``live``) when no chunk is waiting, and for
        a service (``max_wait``, with ``chunks`` a :class:`_Background`) once its first crop has
        waited ``max_wait`` seconds. A service's failing batch fails its tasks only."""
        service = max_wait is not None
        assert not service or isinstance(chunks, _Background)
        order: deque[_Item] = deque()
        pending: list[_Chunk] = []
        count = 0
        deadline = 0.0  # when the oldest waiting crop of a service must run
        while True:
            try:
                if service:
                    wait = max(0.0, deadline - time.monotonic()) if count else None
                    entry = chunks.next_within(wait)  # type: ignore[attr-defined]
                else:
                    entry = next(chunks)
            except StopIteration:  # for a service: it is closing, finish what it has
                break
            if entry is _WAITED or isinstance(entry, _BlockEnd):
                if count:
                    pending, count = self._run_batch(pending, how, count, service)
            elif isinstance(entry, _Item):
                if not entry.queued:  # its first appearance (its last marks its end)
                    entry.queued = True
                    order.append(entry)
            else:
                pending.append(entry)
                if not count:
                    deadline = time.monotonic() + (max_wait or 0.0)
                count += len(entry.centers)
                while count >= self.options.batch_size:
                    pending, count = self._run_batch(pending, how, self.options.batch_size, service)
                    deadline = time.monotonic() + (max_wait or 0.0)  # the rest waits anew
            if live is not None and count and live.idle():
                pending, count = self._run_batch(pending, how, count)
            yield from self._done(order)
        if count:
            self._run_batch(pending, how, count, service)
        yield from self._done(order)

    def _run_batch(
        self, pending: list[_Chunk], how: tuple[bool, str], size: int, isolate: bool = False
    ) -> tuple[list[_Chunk], int]:
        """Run the first ``size`` crops of ``pending`` with ``how`` = (flip test, decoding);
        returns what is left and its count. ``isolate``: non-finite heatmaps become the error of
        the images they belong to (an fp16 overflow depends on the crop) instead of being
        raised."""
        taken: list[_Chunk] = []
        left, rest = size, []
        for i, chunk in enumerate(pending):
            n = len(chunk.centers)
            if n <= left:
                taken.append(chunk)
                left -= n
                if left == 0:
                    rest = pending[i + 1 :]
                    break
            else:  # split: the front goes now, the back waits for the next batch
                taken.append(
                    _Chunk(
                        chunk.item,
                        chunk.start,
                        chunk.crops[:left],
                        chunk.centers[:left],
                        chunk.scales[:left],
                    )
                )
                back = _Chunk(
                    chunk.item,
                    chunk.start + left,
                    chunk.crops[left:],
                    chunk.centers[left:],
                    chunk.scales[left:],
                )
                rest = [back, *pending[i + 1 :]]
                break
        joined = _join([c.crops for c in taken])
        with self._counting:
            self.batch_sizes[size] += 1
        with self._compute:
            keypoints, scores = self.network.keypoints(joined, *how)
        if not isinstance(keypoints, np.ndarray):  # tensors on the device
            keypoints, scores = keypoints.cpu().numpy(), scores.cpu().numpy()
        try:
            self._check_finite(scores)
        except NumericsError as e:
            if not isolate:
                raise
            bad = ~np.isfinite(scores).all(axis=1)
            at = 0
            for chunk in taken:
                n = len(chunk.centers)
                if bad[at : at + n].any():
                    self._fail([chunk], e)
                at += n
        size_ = self.config.model.input_size
        at = 0
        for chunk in taken:
            n, item, s = len(chunk.centers), chunk.item, chunk.start
            item.keypoints[s : s + n] = crop_to_image(
                keypoints[at : at + n], chunk.centers, chunk.scales, size_
            )
            item.scores[s : s + n] = scores[at : at + n]
            item.missing -= n
            at += n
        return rest, sum(len(c.centers) for c in rest)

    @staticmethod
    def _fail(chunks: list[_Chunk], error: NextposeError) -> None:
        """These chunks' images end with ``error`` (their other crops are still counted)."""
        for chunk in chunks:
            chunk.item.error = chunk.item.error or error

    def _check_finite(self, scores: np.ndarray) -> None:
        """Refuse heatmaps holding inf or NaN (a score is its heatmap's maximum, and NaN wins
        argmax), rather than return keypoints that mean nothing."""
        bad = int((~np.isfinite(scores)).any(axis=1).sum())
        if not bad:
            return
        precision = self.options.precision
        if precision == "fp16":
            why = (
                "the activations exceed float16's range (65504); use precision bf16 "
                "(same range as float32) or fp32"
            )
        else:
            why = "the checkpoint's weights hold inf/NaN or its activations overflow float32"
        raise NumericsError(
            f"the heatmaps of {bad} of {len(scores)} people are not finite (inf or NaN) with "
            f"precision {precision} on the {self.options.backend} backend: {why}"
        )

    def _done(self, order: deque[_Item]) -> Iterator[Result]:
        """Hand out the finished images at the front of the queue."""
        while order and order[0].cut and (order[0].missing == 0 or order[0].error is not None):
            item = order.popleft()
            if item.error is not None:
                yield Result(item.task, item.image, None, item.error)
                continue
            b = item.boxes
            poses = Poses(
                item.keypoints,
                item.scores,
                b[:, :4].copy(),
                b[:, 4].copy(),
                item.centers,
                item.scales,
                self.config.keypoints,
            )
            yield Result(item.task, item.image, poses)
