"""What nextpose returns: the poses of one image (:class:`Poses`) and of one frame of a stream
(:class:`Frame`). Both carry their :class:`~nextpose.keypoints.KeypointSet`, so drawing and
output records know what the K keypoints are."""

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from .keypoints import COCO_KEYPOINTS, KeypointSet
from .visualize import draw_poses


def rescore(
    keypoint_scores: np.ndarray, bbox_scores: np.ndarray, threshold: float = 0.2
) -> np.ndarray:
    """Instance scores: box score times the mean of the keypoint scores above ``threshold``.

    Args:
        keypoint_scores: (N, K) keypoint confidences (cast to float32, as the model outputs them).
        bbox_scores: (N,) detector scores (cast to float32); 1 for ground-truth boxes.
        threshold: keypoints count only when their score is ``> threshold`` (strict).

    Returns:
        (N,) float64 scores; 0 where no keypoint passes. The comparison, the sequential sum in
        keypoint order, the division and the product are float64, as under the reference's NumPy 1.
    """
    scores = np.asarray(keypoint_scores, dtype=np.float32).astype(np.float64)
    if scores.ndim != 2:
        raise ValueError(f"keypoint_scores must be (N, K), got shape {scores.shape}")
    box = np.asarray(bbox_scores, dtype=np.float32).astype(np.float64).reshape(-1)
    if len(box) != len(scores):
        raise ValueError(f"{len(scores)} keypoint score rows but {len(box)} bbox scores")
    passed = scores > float(threshold)
    total = np.zeros(len(scores), dtype=np.float64)
    for k in range(scores.shape[1]):  # sequential, keypoint order (adding 0.0 changes nothing)
        total = total + np.where(passed[:, k], scores[:, k], 0.0)
    count = passed.sum(axis=1)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return box * mean


def _integer(value: Any, name: str) -> int:
    """``value`` as a Python int (JSON writes NumPy's as errors), or a TypeError naming it."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    return int(value)


def _json_floats(values: np.ndarray) -> list:
    out = np.asarray(values, np.float64).tolist()

    def clean(v: Any) -> Any:
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v if np.isfinite(v) else None

    return clean(out)


@dataclass(eq=False)  # == below: the generated one compares arrays by truth value
class Poses:
    """The people found in one image, in the order of their boxes.

    Attributes:
        keypoints: (N, K, 2) float32, image pixels.
        scores: (N, K) float32, heatmap maxima (not normalised, not clipped).
        boxes: (N, 4) float32 xyxy image pixels, the person boxes used.
        box_scores: (N,) float32, detector scores (1 when unknown).
        centers, scales: (N, 2) float32, the crop regions in image pixels (aspect-fixed, padded).
        keypoint_set: what the K keypoints are (names, skeleton, flip partners, OKS sigmas).
    """

    keypoints: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    box_scores: np.ndarray
    centers: np.ndarray
    scales: np.ndarray
    keypoint_set: KeypointSet = field(default=COCO_KEYPOINTS, repr=False)

    def __len__(self) -> int:
        return len(self.keypoints)

    def __repr__(self) -> str:
        n = len(self)
        return (
            f"Poses({n} person{'' if n == 1 else 's'}, {self.keypoint_set.num_keypoints} keypoints)"
        )

    def __iter__(self) -> Iterator["Poses"]:
        """Each person as a one-person :class:`Poses`, in box order."""
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        """The same keypoint set and arrays equal value for value (NaN unequal, as floats)."""
        if not isinstance(other, Poses):
            return NotImplemented
        fields = ("keypoints", "scores", "boxes", "box_scores", "centers", "scales")
        return self.keypoint_set == other.keypoint_set and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in fields
        )

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def __getitem__(self, index: Any) -> "Poses":
        """The people selected by an integer (one person), a slice, an index array or a boolean
        mask."""
        if isinstance(index, bool | np.bool_):
            raise TypeError("index people by an integer, a slice, an index array or a mask, "
                            "not a bool")  # fmt: skip
        if isinstance(index, int | np.integer):
            n = len(self)
            if not -n <= index < n:
                raise IndexError(f"person {int(index)} of {n}")
            index = int(index) % n
            index = slice(index, index + 1)
        return Poses(
            self.keypoints[index],
            self.scores[index],
            self.boxes[index],
            self.box_scores[index],
            self.centers[index],
            self.scales[index],
            self.keypoint_set,
        )

    @classmethod
    def empty(cls, keypoint_set: KeypointSet = COCO_KEYPOINTS) -> "Poses":
        k = keypoint_set.num_keypoints
        z2 = np.zeros((0, 2), np.float32)
        return cls(
            np.zeros((0, k, 2), np.float32),
            np.zeros((0, k), np.float32),
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            z2,
            z2.copy(),
            keypoint_set,
        )

    def to_coco(
        self, image_id: int, category_id: int = 1, score_threshold: float = 0.2
    ) -> list[dict[str, Any]]:
        """COCO keypoint results, one dict per person in box order: ``image_id, category_id,
        keypoints`` (K*3 floats x, y, score), ``score`` (the box score times the mean keypoint
        score above ``score_threshold``, as the reference rescores) and ``bbox`` (x, y, w, h)."""
        image_id, category_id = _integer(image_id, "image_id"), _integer(category_id, "category_id")
        instance_scores = rescore(self.scores, self.box_scores, score_threshold)
        out = []
        for i in range(len(self)):
            x1, y1, x2, y2 = (float(v) for v in self.boxes[i][:4])
            kpts = np.concatenate([self.keypoints[i], self.scores[i][:, None]], axis=1)
            out.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "keypoints": _json_floats(kpts.reshape(-1)),
                    "score": _json_floats(instance_scores[i : i + 1])[0],
                    "bbox": _json_floats(np.array([x1, y1, x2 - x1, y2 - y1])),
                }
            )
        return out

    def to_records(self, image: str) -> list[dict[str, Any]]:
        """nextpose's own output records, one per person: ``{"image", "bbox"`` (xyxy),
        ``"bbox_score", "keypoints"`` ([[x, y, score] x K])``}``; non-finite numbers as null."""
        if not isinstance(image, str | PurePath):
            raise TypeError(f"image must be the image's name (a str), not {type(image).__name__}")
        image = str(image)
        out = []
        for i in range(len(self)):
            kpts = np.concatenate([self.keypoints[i], self.scores[i][:, None]], axis=1)
            out.append(
                {
                    "image": image,
                    "bbox": _json_floats(self.boxes[i]),
                    "bbox_score": _json_floats(self.box_scores[i : i + 1])[0],
                    "keypoints": _json_floats(kpts),
                }
            )
        return out

    def draw(
        self,
        image: np.ndarray,
        score_threshold: float = 0.3,
        boxes: bool = True,
        labels: list[str] | None = None,
    ) -> np.ndarray:
        """A copy of ``image`` (H, W, 3) uint8 RGB with these poses drawn with their keypoint
        set's skeleton; keypoints scoring at or below ``score_threshold`` are hidden."""
        return draw_poses(
            image,
            self.keypoints,
            self.scores,
            self.boxes if boxes else None,
            self.keypoint_set,
            score_threshold,
            labels=labels,
        )


@dataclass
class Frame:
    """The people found in one image or video frame of a stream.

    Attributes:
        index: position in the stream, from 0 (frames that could not be read count too).
        name: the image's file name (its path inside the folder, for a folder), the video's file
            name, or ``image<index>`` for an array.
        image_id: COCO image id: the file's number when every input file is named by a
            distinct number (``000785.jpg``), the frame number for videos, otherwise ``index``.
            (Boxes from COCO detection results follow each file's own number either way.)
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

    def __repr__(self) -> str:
        h, w = self.image.shape[:2]
        return f"Frame({self.name!r}, image_id={self.image_id}, {h}x{w} (h x w), {self.poses!r})"

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

    def _extras(self, records: list[dict[str, Any]], after: str) -> list[dict[str, Any]]:
        """Records with ``frame``, ``time`` (video) inserted after key ``after`` (or at the
        end) and ``track_id`` (tracking) at the end."""
        out = []
        for i, record in enumerate(records):
            items = list(record.items())
            at = next((j + 1 for j, (k, _) in enumerate(items) if k == after), len(items))
            if self.frame is not None:
                items[at:at] = [("frame", self.frame), ("time", self.time)]
            if self.track_ids is not None:
                items.append(("track_id", int(self.track_ids[i])))
            out.append(dict(items))
        return out

    def to_coco(self, category_id: int = 1) -> list[dict[str, Any]]:
        """COCO keypoint results (see :meth:`Poses.to_coco`), each with ``file_name`` and, for
        video frames, ``frame`` and ``time``; with ``track_id`` when tracking."""
        records = self.poses.to_coco(self.image_id, category_id)
        for record in records:
            record["file_name"] = self.name
        return self._extras(records, "file_name")

    def to_records(self) -> list[dict[str, Any]]:
        """nextpose's records (see :meth:`Poses.to_records`) with ``frame``, ``time`` for video
        frames and ``track_id`` when tracking."""
        return self._extras(self.poses.to_records(self.name), "image")

    def to_line(self, coco: bool = False) -> dict[str, Any]:
        """One JSON Lines record: this frame and all its people (also when there are none)."""
        line: dict[str, Any] = {"image": self.name, "image_id": self.image_id}
        if self.frame is not None:
            line["frame"], line["time"] = self.frame, self.time
        line["height"], line["width"] = self.image.shape[:2]
        line["poses"] = self.to_coco() if coco else self.to_records()
        return line

    def draw(self, score_threshold: float = 0.3, boxes: bool = True) -> np.ndarray:
        """The image with boxes, keypoints and skeleton drawn (track ids when tracking);
        keypoints scoring at or below ``score_threshold`` are hidden."""
        labels = None if self.track_ids is None else [f"#{t}" for t in self.track_ids]
        return self.poses.draw(self.image, score_threshold, boxes=boxes, labels=labels)
