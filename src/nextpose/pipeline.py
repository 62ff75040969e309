"""Pose estimation over real inputs: images, folders, videos and cameras, streamed.

:class:`PosePipeline` joins a person detector (or a boxes file, or whole-image boxes) and a
:class:`~nextpose.inference.PoseEstimator`. ``pipeline(image)`` gives the :class:`Poses` of one
image; ``pipeline.run(source)`` yields one :class:`Frame` per image or video frame, in order.

``run`` keeps both networks busy with three stages running at once, joined by bounded queues
(so memory stays bounded on videos of any length):

1. decoding: image files are decoded by a pool of threads, video frames by a reader thread;
2. detection: a thread sends batches of frames through the detector (or looks their boxes up)
   and cuts the pose crops;
3. pose: the caller's thread sends the crops of several frames through the pose network in one
   batch, maps keypoints back to the image, tracks and smooths people, and yields the frames.

Keypoints are exactly those of :meth:`PoseEstimator.predict` for the same boxes: the same crops,
network and decoding are used; only the batching differs.
"""

import contextlib
import copy
import json
import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from .data.coco import is_json_number
from .data.images import ImageError, VideoReader, is_video_file, list_images, read_image
from .detection import DEFAULT_DETECTOR, PersonDetector, load_detector
from .inference import Crops, PoseEstimator, Poses, _check_image, as_boxes, load, prepare_crops
from .tracking import OneEuro, PoseTracker

log = logging.getLogger("nextpose")

ImageLike = str | Path | np.ndarray
Source = ImageLike | int | Iterable[ImageLike]
ErrorHandler = Callable[[str, Exception], None]

DEFAULT_FPS = 30.0  # time step assumed for smoothing when a stream has no frame rate


@dataclass
class Frame:
    """The people found in one image or video frame.

    Attributes:
        index: position in the stream, from 0 (frames that could not be read count too).
        name: the image's file name (its path inside the folder, for a folder), the video's file
            name, or ``image<index>`` for an array.
        image_id: COCO image id: the file's number for files named by numbers (``000785.jpg``),
            the frame number for videos, otherwise ``index``.
        poses: keypoints (N, K, 2), scores (N, K), boxes (N, 4)... in image pixels.
        image: the (H, W, 3) uint8 RGB image.
        path: the image file, or the video file; None for arrays and cameras.
        frame: the frame number in a video or camera stream; None for images.
        time: the frame's time in seconds from the start of the stream; None for images.
        fps: the video's frame rate, when known.
        track_ids: (N,) int64 track ids when tracking is on, else None.
    """

    index: int
    name: str
    image_id: int
    poses: Poses
    image: np.ndarray
    path: Path | None = None
    frame: int | None = None
    time: float | None = None
    fps: float | None = None
    track_ids: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def keypoints(self) -> np.ndarray:
        """(N, K, 2) float32 image pixels."""
        return self.poses.keypoints

    @property
    def scores(self) -> np.ndarray:
        """(N, K) float32 keypoint scores."""
        return self.poses.scores

    @property
    def boxes(self) -> np.ndarray:
        """(N, 4) float32 xyxy person boxes, image pixels."""
        return self.poses.boxes

    def to_coco(self, category_id: int = 1) -> list[dict[str, Any]]:
        """COCO keypoint results (see :meth:`Poses.to_coco`), each with ``file_name`` and, for
        video frames, ``frame`` and ``time``; with ``track_id`` when tracking."""
        records = self.poses.to_coco(self.image_id, category_id)
        for i, record in enumerate(records):
            record["file_name"] = self.name
            if self.frame is not None:
                record["frame"] = self.frame
                record["time"] = self.time
            if self.track_ids is not None:
                record["track_id"] = int(self.track_ids[i])
        return records

    def draw(self, score_threshold: float = 0.3, boxes: bool = True) -> np.ndarray:
        """The image with boxes, keypoints and skeleton drawn (track ids when tracking);
        keypoints scoring at or below ``score_threshold`` are hidden."""
        labels = None if self.track_ids is None else [f"#{t}" for t in self.track_ids]
        return self.poses.draw(self.image, score_threshold, boxes=boxes, labels=labels)


class BoxTable:
    """Person boxes per image, given by the user.

    Two file layouts are read by :meth:`read`:

    - ``{"<image>": [[x1, y1, x2, y2, score?], ...], ...}``: xyxy image pixels, keyed by file
      name, path as given, or path inside a folder (video frames: the frame number as a string);
    - COCO detection results ``[{"image_id": 785, "bbox": [x, y, w, h], "score": 0.99,
      "category_id": 1}, ...]``: matched by image id (an image's file number, a video's frame
      number) or an optional ``"file_name"``; other categories than 1 (person) are ignored.

    A missing score counts as 1. Numbers must be finite and boxes not inverted (x2 >= x1,
    y2 >= y1; w, h >= 0), or :meth:`read` names the entry. ``misses`` counts the images that
    were looked up and had no entry.
    """

    def __init__(
        self,
        by_name: Mapping[str, np.ndarray] | None = None,
        by_id: Mapping[int, np.ndarray] | None = None,
    ):
        self.by_name = dict(by_name or {})
        self.by_id = dict(by_id or {})
        self.lookups = self.misses = 0

    def __len__(self) -> int:
        return len(self.by_name) + len(self.by_id)

    def get(self, names: Sequence[str] = (), image_id: int | None = None) -> np.ndarray | None:
        """(N, 5) float32 boxes of the first of ``names`` present, else of ``image_id``; None
        when the image has no entry."""
        self.lookups += 1
        found = next((self.by_name[name] for name in names if name in self.by_name), None)
        if found is None and image_id is not None:
            found = self.by_id.get(image_id)
        self.misses += found is None
        return found

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "boxes") -> "BoxTable":
        """From ``{"<image>": [[x1, y1, x2, y2, score?], ...]}``."""
        by_name = {}
        for name, boxes in data.items():
            ok = isinstance(boxes, list | tuple | np.ndarray) and all(
                isinstance(b, list | tuple | np.ndarray)
                and len(b) in (4, 5)
                and all(map(is_json_number, b))
                for b in boxes
            )
            if not ok:
                raise ValueError(
                    f"{source}: entry '{name}' must be a list of [x1, y1, x2, y2] or "
                    f"[x1, y1, x2, y2, score] boxes of finite numbers, got {boxes!r:.80}"
                )
            inverted = [b for b in boxes if b[2] < b[0] or b[3] < b[1]]
            if inverted:
                raise ValueError(
                    f"{source}: entry '{name}': box {list(inverted[0])} has x2 < x1 or y2 < y1 "
                    "(boxes are [x1, y1, x2, y2], not [x, y, w, h])"
                )
            by_name[str(name)] = np.array(
                [[*map(float, b), 1.0][:5] for b in boxes], np.float32
            ).reshape(-1, 5)
        return cls(by_name)

    @classmethod
    def from_coco(cls, data: Sequence[Any], source: str = "boxes") -> "BoxTable":
        """From COCO detection results (``bbox`` is x, y, w, h)."""
        by_id: dict[int, list] = {}
        by_name: dict[str, list] = {}
        for i, det in enumerate(data):
            ok = (
                isinstance(det, dict)
                and (
                    isinstance(det.get("image_id"), int)
                    or (isinstance(det.get("image_id"), str) and det["image_id"].isdigit())
                    or isinstance(det.get("file_name"), str)
                )
                and isinstance(det.get("bbox"), list)
                and len(det["bbox"]) == 4
                and all(map(is_json_number, det["bbox"]))
                and det["bbox"][2] >= 0
                and det["bbox"][3] >= 0
                and is_json_number(det.get("score", 1.0))
            )
            if not ok:
                raise ValueError(
                    f"{source}: entry {i} must be a COCO detection {{'image_id': int, 'bbox': "
                    f"[x, y, w, h] (finite, w and h >= 0), 'score': s, 'category_id': 1}}, "
                    f"got {det!r:.80}"
                )
            if det.get("category_id", 1) != 1:
                continue
            x, y, w, h = np.asarray(det["bbox"], np.float32)
            box = [x, y, x + w, y + h, np.float32(det.get("score", 1.0))]
            if isinstance(det.get("file_name"), str):
                by_name.setdefault(det["file_name"], []).append(box)
            else:
                by_id.setdefault(int(det["image_id"]), []).append(box)
        return cls(
            {k: np.array(v, np.float32).reshape(-1, 5) for k, v in by_name.items()},
            {k: np.array(v, np.float32).reshape(-1, 5) for k, v in by_id.items()},
        )

    @classmethod
    def read(cls, path: str | Path) -> "BoxTable":
        """A boxes file in either layout; ValueError explains what is wrong with a bad one."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"{path}: no such boxes file") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            return cls.from_dict(data, str(path))
        if isinstance(data, list):
            return cls.from_coco(data, str(path))
        raise ValueError(
            f'{path}: expected {{"<image file name>": [[x1, y1, x2, y2, score?], ...]}} or a '
            "list of COCO detections"
        )


@dataclass
class _Item:
    """What the stages know about a frame before it is decoded."""

    index: int
    name: str
    image_id: int
    keys: tuple[str, ...] = ()  # names in a BoxTable
    path: Path | None = None
    frame: int | None = None
    time: float | None = None


@dataclass
class _Stream:
    """A source opened for :meth:`PosePipeline.run`."""

    entries: Iterator[tuple[_Item, Callable[[], np.ndarray] | np.ndarray]]
    total: int | None
    name: str
    fps: float | None = None
    live: bool = False  # a camera: process what is there rather than wait for full batches
    reader: VideoReader | None = None


@dataclass
class _Detected:
    item: _Item
    image: np.ndarray
    boxes: np.ndarray  # (N, 5)
    crops: Crops


@dataclass
class _Skipped:
    item: _Item
    error: Exception


@dataclass
class _Failed:
    error: BaseException


_END = object()


def _put(q: queue.Queue, value: Any, stop: threading.Event) -> bool:
    """Put, waiting while the queue is full, unless the run is stopped (then False)."""
    while not stop.is_set():
        try:
            q.put(value, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event) -> Any:
    """Get, waiting while the queue is empty; ``_END`` once the run is stopped."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return _END


def _image_stream(inputs: Iterable[ImageLike], max_frames: int | None) -> _Stream:
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
            raise ValueError(f"{path}: a video; run it as a source of its own")
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

    def items() -> Iterator[tuple[_Item, Callable[[], np.ndarray] | np.ndarray]]:
        for index, (x, name, keys, path) in enumerate(entries):
            if max_frames is not None and index >= max_frames:
                return
            image_id = int(path.stem) if numeric and path is not None else index
            item = _Item(index, name or f"image{index}", image_id, keys, path)
            if isinstance(x, np.ndarray):
                yield item, _check_image(x)
            else:
                yield item, (lambda p=x: read_image(p))

    return _Stream(items(), len(listing) if sized else None, "images")


def _video_stream(source: str | Path | int, max_frames: int | None) -> _Stream:
    reader = VideoReader(source, max_frames)
    name = f"camera{source}" if reader.is_camera else Path(source).name
    path = None if reader.is_camera else Path(source)

    def items() -> Iterator[tuple[_Item, np.ndarray]]:
        for number, stamp, image in reader:
            yield _Item(number, name, number, (str(number),), path, number, stamp), image

    return _Stream(items(), reader.frame_count, name, reader.fps, reader.is_camera, reader)


def open_stream(source: Source, max_frames: int | None = None) -> _Stream:
    """Classify a source: a camera index, a video file, or images (files, folders, arrays)."""
    if isinstance(source, int) and not isinstance(source, bool):
        return _video_stream(source, max_frames)
    if isinstance(source, str | Path):
        text = str(source)
        if text.isdigit() and not Path(text).exists():
            return _video_stream(int(text), max_frames)
        if is_video_file(text):
            return _video_stream(Path(text), max_frames)
        return _image_stream([source], max_frames)
    if isinstance(source, np.ndarray):
        return _image_stream([source], max_frames)
    if isinstance(source, Iterable):
        return _image_stream(source if isinstance(source, Sequence) else iter(source), max_frames)
    raise TypeError(f"cannot read poses from a {type(source).__name__}")


class PosePipeline:
    """Person detection and pose estimation over images, folders, videos and cameras.

    Person boxes come from ``detector``, else from ``boxes`` (an image without an entry gets one
    whole-image box), else every image is one whole-image box.

    Args:
        estimator: the pose model (:func:`nextpose.load`).
        detector: a :class:`~nextpose.detection.PersonDetector` (:func:`~nextpose.load_detector`).
        boxes: a :class:`BoxTable`, or ``{"<image>": [[x1, y1, x2, y2, score?], ...]}``.
        flip: flip test on/off; None uses the estimator's config (on).
        batch_size: crops per pose forward pass; None uses the estimator's config.
        frames_per_batch: at most this many frames share a pose batch.
        workers: image decoding threads.
        prefetch: frames held between stages (bounds memory).
        track: give people track ids across frames (greedy IoU matching).
        smooth: smooth keypoints over time per track (implies ``track``): True for the default
            One-Euro settings, or :class:`~nextpose.tracking.OneEuro` settings.
        iou_threshold, max_missed: tracking settings, see :class:`~nextpose.tracking.PoseTracker`.
    """

    def __init__(
        self,
        estimator: PoseEstimator,
        detector: PersonDetector | None = None,
        *,
        boxes: BoxTable | Mapping[str, Any] | None = None,
        flip: bool | None = None,
        batch_size: int | None = None,
        frames_per_batch: int = 16,
        workers: int = 2,
        prefetch: int = 8,
        track: bool = False,
        smooth: bool | OneEuro = False,
        iou_threshold: float = 0.3,
        max_missed: int = 10,
    ):
        if detector is not None and boxes is not None:
            raise ValueError("give person boxes either by a detector or by a boxes table, not both")
        if min(frames_per_batch, workers, prefetch) < 1:
            raise ValueError("frames_per_batch, workers and prefetch must be >= 1")
        if batch_size is not None and batch_size != estimator.config.inference.batch_size:
            estimator = copy.copy(estimator)  # shares the network; only the batch size differs
            inference = replace(estimator.config.inference, batch_size=batch_size)
            estimator.config = replace(estimator.config, inference=inference)
        self.estimator = estimator
        self.detector = detector
        if boxes is not None and not isinstance(boxes, BoxTable):
            boxes = BoxTable.from_dict(boxes)
        self.boxes = boxes
        self.flip = flip
        self.frames_per_batch = frames_per_batch
        self.workers = workers
        self.prefetch = prefetch
        self.smoothing = (OneEuro() if smooth is True else smooth) or None
        self.track = track or self.smoothing is not None
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        # On a CPU both networks compete for the same cores: one forward pass at a time is
        # faster than two interleaved ones. On a GPU they overlap.
        on_cpu = self.estimator.device.type == "cpu"
        self._compute = threading.Lock() if on_cpu else contextlib.nullcontext()

    @classmethod
    def load(
        cls,
        model: str | Path,
        detector: str | None = DEFAULT_DETECTOR,
        *,
        checkpoint: str | Path | None = None,
        detector_weights: str | Path | None = "default",
        device: str = "cpu",
        detector_options: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> "PosePipeline":
        """A pipeline from names: ``PosePipeline.load("resnext50_coco_256x192", device="cuda")``.

        Args:
            model: a preset or a nextpose checkpoint, as for :func:`nextpose.load`.
            detector: a name in :data:`~nextpose.detection.DETECTORS`; None: whole-image boxes.
            checkpoint: pose weights instead of the preset's.
            detector_weights: see :func:`~nextpose.detection.build_detector_model`.
            detector_options: passed to :func:`~nextpose.detection.load_detector`, e.g.
                ``{"score_threshold": 0.7, "max_people": 1}``.
            options: passed to :class:`PosePipeline`, e.g. ``smooth=True``.
        """
        estimator = load(model, checkpoint, device=device)
        found = None
        if detector is not None:
            found = load_detector(
                detector, weights=detector_weights, device=device, **(detector_options or {})
            )
        return cls(estimator, found, **options)

    def _boxes(self, images: list[np.ndarray], items: list[_Item]) -> list[np.ndarray | None]:
        if self.detector is not None:
            return self.detector(images)
        if self.boxes is not None:
            return [self.boxes.get(item.keys, item.image_id) for item in items]
        return [None] * len(images)

    def __call__(self, image: ImageLike, boxes: Sequence | np.ndarray | None = None) -> Poses:
        """The poses of one image (a file or an (H, W, 3) uint8 RGB array); ``boxes`` given here
        take the place of the detector's."""
        image_id, keys = -1, ()
        if isinstance(image, str | Path):
            path = Path(image)
            keys = (str(image), path.name)
            image_id = int(path.stem) if path.stem.isdigit() else -1
            image = read_image(path)
        array = _check_image(image)
        if boxes is None:
            boxes = self._boxes([array], [_Item(0, "", image_id, keys)])[0]
        return self.estimator.predict(array, boxes, flip=self.flip)

    def run(
        self,
        source: Source,
        *,
        on_error: ErrorHandler | None = None,
        progress: bool | None = False,
        max_frames: int | None = None,
    ) -> Iterator[Frame]:
        """Yield a :class:`Frame` for every image or video frame of ``source``, in order.

        Args:
            source: an image file, a folder (recursive), a video file, a camera index (an int,
                or a string of digits naming no file), an (H, W, 3) array, or a list/iterable of
                image files, folders and arrays.
            on_error: called with (name, error) for an image that cannot be read; it is skipped.
                By default a warning is logged, and the count of skipped images at the end.
            progress: show a progress bar with frames per second (None: only on a terminal).
            max_frames: stop after this many frames.

        Raises:
            VideoError: a video file or camera cannot be opened.
        """
        stream = open_stream(source, max_frames)
        count_errors = on_error is None
        on_error = on_error or (lambda name, e: log.warning("skipped %s", e))
        seen = skipped = 0
        stop = threading.Event()
        decoded: queue.Queue = queue.Queue(maxsize=self.prefetch)
        detected: queue.Queue = queue.Queue(maxsize=self.prefetch)
        threads = [
            threading.Thread(
                target=self._stage, args=(self._decode, stream, decoded, stop), daemon=True
            ),
            threading.Thread(
                target=self._stage,
                args=(self._detect, (decoded, stream.live), detected, stop),
                daemon=True,
            ),
        ]
        tracker = (
            PoseTracker(self.iou_threshold, self.max_missed, self.smoothing) if self.track else None
        )
        bar = tqdm(
            total=stream.total,
            desc=stream.name,
            unit="frame",
            disable=None if progress is None else not progress,
            dynamic_ncols=True,
        )
        try:
            for thread in threads:
                thread.start()
            batch: list[_Detected] = []
            crops = 0
            while True:
                msg = _get(detected, stop)
                if msg is _END:
                    break
                if isinstance(msg, _Failed):
                    raise msg.error
                seen += 1
                if isinstance(msg, _Skipped):
                    skipped += 1
                    on_error(msg.item.name, msg.error)
                    bar.update(1)
                    continue
                batch.append(msg)
                crops += len(msg.boxes)
                if (
                    crops >= self.estimator.config.inference.batch_size
                    or len(batch) >= self.frames_per_batch
                    or (stream.live and detected.empty())
                ):
                    for frame in self._estimate(batch, tracker, stream.fps):
                        bar.update(1)
                        yield frame
                    batch, crops = [], 0
            for frame in self._estimate(batch, tracker, stream.fps):
                bar.update(1)
                yield frame
            if skipped and count_errors:
                log.warning("%d of %d images could not be read and were skipped", skipped, seen)
        finally:
            stop.set()
            bar.close()
            for thread in threads:
                if thread.is_alive():
                    thread.join(timeout=10)
            if stream.reader is not None and not threads[0].is_alive():
                stream.reader.close()  # never while the decoding thread may be reading

    @staticmethod
    def _stage(work: Callable, inp: Any, out: queue.Queue, stop: threading.Event) -> None:
        """Run one stage in its thread; always end its output with an error or ``_END``."""
        try:
            work(inp, out, stop)
        except BaseException as e:  # handed to the caller's thread, which raises it
            _put(out, _Failed(e), stop)
        _put(out, _END, stop)

    def _decode(self, stream: _Stream, out: queue.Queue, stop: threading.Event) -> None:
        """Stage 1: hand out frames as futures, in order; image files decode in a thread pool
        (at most ``prefetch`` are waiting at any time)."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="nextpose-decode")
        try:
            for item, load in stream.entries:
                if callable(load):
                    future = pool.submit(load)
                else:
                    future = Future()
                    future.set_result(load)
                if not _put(out, (item, future), stop):
                    return
        finally:
            pool.shutdown(wait=False, cancel_futures=stop.is_set())
            close = getattr(stream.entries, "close", None)
            if close is not None:
                close()  # a video's reader releases its capture

    def _detect(
        self, inp: tuple[queue.Queue, bool], out: queue.Queue, stop: threading.Event
    ) -> None:
        """Stage 2: person boxes for batches of frames, then the pose crops of each frame."""
        decoded, live = inp
        batch_size = self.detector.batch_size if self.detector is not None else 1
        size, padding = self.estimator.input_size, self.estimator.config.inference.padding
        pending: list[tuple[_Item, np.ndarray]] = []

        def flush() -> bool:
            if not pending:
                return True
            items, images = [p[0] for p in pending], [p[1] for p in pending]
            with self._compute:
                found = self._boxes(images, items)
            pending.clear()
            for item, image, boxes in zip(items, images, found, strict=True):
                b = as_boxes(boxes, image.shape, item.name)
                crops = prepare_crops(image, b[:, :4], size, padding)
                if not _put(out, _Detected(item, image, b, crops), stop):
                    return False
            return True

        while True:
            msg = _get(decoded, stop)
            if msg is _END:
                flush()
                return
            if isinstance(msg, _Failed):
                flush()
                _put(out, msg, stop)
                return
            item, future = msg
            try:
                image = future.result()
            except (ImageError, cv2.error) as e:
                if not _put(out, _Skipped(item, e), stop):
                    return
                continue
            pending.append((item, image))
            if (len(pending) >= batch_size or (live and decoded.empty())) and not flush():
                return

    def _estimate(
        self, batch: list[_Detected], tracker: PoseTracker | None, fps: float | None
    ) -> list[Frame]:
        """Stage 3: the pose network on the crops of all frames of ``batch`` at once."""
        if not batch:
            return []
        joined = Crops(
            np.concatenate([d.crops.images for d in batch]),
            np.concatenate([d.crops.centers for d in batch]),
            np.concatenate([d.crops.scales for d in batch]),
        )
        with self._compute:
            keypoints, scores = self.estimator.predict_crops(joined, self.flip)
        frames, start = [], 0
        for d in batch:
            end = start + len(d.boxes)
            poses = Poses(
                keypoints[start:end],
                scores[start:end],
                d.boxes[:, :4].copy(),
                d.boxes[:, 4].copy(),
                d.crops.centers,
                d.crops.scales,
            )
            start = end
            item = d.item
            ids = None
            if tracker is not None:
                t = item.time if item.time is not None else item.index / (fps or DEFAULT_FPS)
                ids, poses = tracker.update(poses, t)
            frames.append(
                Frame(
                    item.index,
                    item.name,
                    item.image_id,
                    poses,
                    d.image,
                    item.path,
                    item.frame,
                    item.time,
                    fps,
                    ids,
                )
            )
        return frames
