"""Pose estimation over real inputs: images, folders, videos and cameras, streamed.

:class:`PosePipeline` joins a person detector (or a table of boxes, or whole-image boxes) to a
:class:`~nextpose.predictor.PoseEstimator`, and tracks and smooths people over video frames.
``pipeline(image)`` gives the :class:`~nextpose.structures.Poses` of one image;
``pipeline.run(source)`` yields one :class:`~nextpose.structures.Frame` per image or frame, in
order. Both run the estimator's :class:`~nextpose.engine.Engine`, so keypoints are exactly those of
:meth:`PoseEstimator.predict` for the same boxes, with the estimator's run options.
"""

import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .boxes import BoxTable
from .engine import Task
from .errors import InputError
from .options import DEFAULT_DETECTOR
from .predictor import PoseEstimator, load
from .progress import Progress
from .sources import Entry, ImageLike, NewestFrames, Source, open_stream
from .structures import Frame, Poses
from .tracking import OneEuro, PoseTracker

if TYPE_CHECKING:
    from .detection import PersonDetector

log = logging.getLogger("nextpose")

ErrorHandler = Callable[[str, Exception], None]
DEFAULT_FPS = 30.0  # time step assumed for smoothing when a stream has no frame rate


class PosePipeline:
    """Person detection and pose estimation over images, folders, videos and cameras.

    Person boxes come from ``detector``, else from ``boxes`` (an image without an entry gets one
    whole-image box), else every image is one whole-image box.

    Args:
        estimator: the pose model (:func:`nextpose.load`); its run options (device, backend,
            precision, batch size, read threads, device crops) are the pipeline's.
        detector: a :class:`~nextpose.detection.PersonDetector` (:func:`~nextpose.load_detector`).
        boxes: a :class:`~nextpose.boxes.BoxTable`, or ``{"<image>": [[x1, y1, x2, y2, s?]]}``.
        flip: flip test on/off; None uses the estimator's config (on).
        track: give people track ids across frames (greedy IoU matching).
        smooth: smooth keypoints over time per track (implies ``track``): True for the default
            One-Euro settings, or :class:`~nextpose.tracking.OneEuro` settings.
        iou_threshold, max_missed: tracking settings, see :class:`~nextpose.tracking.PoseTracker`.
        batch_size, workers: deprecated; use ``estimator.with_options(batch_size=...,
            read_threads=...)``.
    """

    def __init__(
        self,
        estimator: PoseEstimator,
        detector: "PersonDetector | None" = None,
        *,
        boxes: BoxTable | Mapping[str, Any] | None = None,
        flip: bool | None = None,
        track: bool = False,
        smooth: bool | OneEuro = False,
        iou_threshold: float = 0.3,
        max_missed: int = 10,
        batch_size: int | None = None,
        workers: int | None = None,
        **deprecated: Any,
    ):
        if detector is not None and boxes is not None:
            raise InputError("give person boxes either by a detector or by a boxes table, not both")
        changes = {}
        if batch_size is not None:
            changes["batch_size"] = batch_size
        if workers is not None:
            changes["read_threads"] = workers
        given = {"batch_size": batch_size, "workers": workers}
        for name in [*deprecated, *(k for k, v in given.items() if v is not None)]:
            if name not in ("frames_per_batch", "prefetch", "workers", "batch_size"):
                raise TypeError(f"PosePipeline() got an unexpected keyword argument '{name}'")
            warnings.warn(
                f"PosePipeline({name}=...) is deprecated: run options belong to the estimator "
                "(estimator.with_options(batch_size=..., read_threads=...))",
                DeprecationWarning,
                2,
            )
        self.estimator = estimator.with_options(**changes) if changes else estimator
        self.detector = detector
        if boxes is not None and not isinstance(boxes, BoxTable):
            if not isinstance(boxes, Mapping):
                raise TypeError(
                    "boxes must be a BoxTable or a {image name: boxes} dict, not "
                    f"{type(boxes).__name__} (one image's boxes: pipeline(image, boxes))"
                )
            boxes = BoxTable.from_dict(boxes)
        self.boxes = boxes
        self.flip = flip
        self.smoothing = (OneEuro() if smooth is True else smooth) or None
        self.track = track or self.smoothing is not None
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed

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
        run_options: Mapping[str, Any] | None = None,
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
            run_options: passed to :func:`nextpose.load`, e.g. ``{"backend": "onnxruntime",
                "batch_size": 8}``.
            options: passed to :class:`PosePipeline`, e.g. ``smooth=True``.
        """
        estimator = load(model, checkpoint, device=device, **(run_options or {}))
        found = None
        if detector is not None:
            from .detection import load_detector

            found = load_detector(
                detector, weights=detector_weights, device=device, **(detector_options or {})
            )
        return cls(estimator, found, **options)

    def _task(self, entry: Entry, image: Any, block_size: int | None = None) -> Task:
        """The engine's task for an entry: boxes from the table (an image without an entry, or
        no table and no detector: None, one whole-image box), else the detector's."""
        boxes = None
        if self.detector is None and self.boxes is not None:
            boxes = self.boxes.get(entry.keys, entry.box_id)
        ends = block_size is not None and (entry.index + 1) % block_size == 0
        return Task(image, boxes, entry.name, entry, ends_block=ends)

    def __call__(self, image: ImageLike, boxes: Sequence | np.ndarray | None = None) -> Poses:
        """The poses of one image (a file or an (H, W, 3) uint8 RGB array); ``boxes`` given here
        take the place of the detector's."""
        entry = Entry(0, str(image) if isinstance(image, str | Path) else "the image", -1)
        if isinstance(image, str | Path):
            path = Path(image)
            entry.keys = (str(image), path.name)
            entry.box_id = int(path.stem) if path.stem.isdigit() else None
            entry.image_id = -1 if entry.box_id is None else entry.box_id
        task = self._task(entry, image)
        if boxes is not None:
            task.boxes = boxes
        (result,) = self.estimator.engine(self.detector).run([task], self.flip)
        if result.error is not None:
            raise result.error
        assert result.poses is not None
        return result.poses

    def run(
        self,
        source: Source,
        *,
        on_error: ErrorHandler | None = None,
        progress: bool | None = False,
        max_frames: int | None = None,
        select: Callable[[Entry], bool] | None = None,
        block_size: int | None = None,
        every_frame: bool = False,
    ) -> Iterator[Frame]:
        """Yield a :class:`~nextpose.structures.Frame` for every image or video frame of
        ``source``, in order.

        Args:
            source: an image file, a folder (recursive), a video file, a camera index (an int,
                or a string of digits naming no file), an (H, W, 3) array, or a list/iterable of
                image files, folders and arrays.
            on_error: called with (name, error) for an image that cannot be read; it is skipped.
                By default a warning is logged, and the count of skipped images at the end.
            progress: show a progress bar with frames per second (None: only on a terminal).
            max_frames: stop after this many frames (of a live source: read, estimated or
                dropped).
            select: only the entries (images or frames, by :class:`~nextpose.sources.Entry`:
                index, name, ...) for which it is true are read and yielded; the others keep
                their place (indices, image ids) but are skipped without being decoded.
            block_size: the images ``block_size * k`` to ``block_size * (k + 1) - 1`` form a
                block whose batches never join another block's, so the keypoints of an image
                do not depend on which other blocks run (a sharded or resumed run,
                :mod:`nextpose.sharded`).
            every_frame: a live source (a camera, a stream of no known length): estimate each
                of its frames, however far behind that falls; by default the newest frame is
                taken each time and those the estimator could not keep up with are dropped
                (their indices are skipped).

        Raises:
            VideoError: a video file or camera cannot be opened.
        """
        stream = open_stream(source, max_frames, every_frame)
        count_errors = on_error is None
        on_error = on_error or (lambda name, e: log.warning("skipped %s", e))
        tracker = (
            PoseTracker(self.iou_threshold, self.max_missed, self.smoothing) if self.track else None
        )
        entries = stream.entries
        if select is not None:
            entries = ((entry, image) for entry, image in entries if select(entry))
        tasks = (self._task(entry, image, block_size) for entry, image in entries)
        results = self.estimator.engine(self.detector).run(tasks, self.flip, live=stream.live)
        bar = Progress(stream.total, stream.name, "frame", enabled=progress)
        seen = skipped = 0
        try:
            for result in results:
                seen += 1
                bar.update(1)
                entry: Entry = result.task.tag
                if result.error is not None:
                    skipped += 1
                    on_error(entry.name, result.error)
                    continue
                assert result.poses is not None and result.image is not None
                poses, ids = result.poses, None
                if tracker is not None:
                    t = (
                        entry.time
                        if entry.time is not None
                        else entry.index / (stream.fps or DEFAULT_FPS)
                    )
                    ids, poses = tracker.update(poses, t)
                yield Frame(entry.index, entry.name, entry.image_id, poses, result.image,
                            entry.path, entry.frame, entry.time, stream.fps, ids)  # fmt: skip
            if skipped and count_errors:
                log.warning("%d of %d images were skipped", skipped, seen)
        finally:
            if isinstance(stream.reader, NewestFrames):
                stream.reader.close()  # first: wakes the engine's thread waiting for a frame
            results.close()  # stops the engine's threads
            bar.close()
            if stream.reader is not None:
                stream.reader.close()
