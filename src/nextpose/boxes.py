"""Person boxes: validating the boxes given for an image, and tables of boxes read from files.

Boxes are (N, 5) float32 ``x1, y1, x2, y2, score`` in image pixels everywhere inside nextpose;
``bbox_format="xywh"`` reads COCO-style ``x, y, w, h`` at the API boundary.
"""

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .data.coco import is_json_number
from .errors import AnnotationError, InputError

log = logging.getLogger("nextpose")

BoxFormat = Literal["xyxy", "xywh"]
BOX_FORMATS: tuple[str, ...] = ("xyxy", "xywh")


def whole_image_box(height: int, width: int) -> np.ndarray:
    """(1, 5) float32 box ``[0, 0, w, h, 1]``: the whole image, as the reference's
    ``inference_topdown`` makes it when no boxes are given."""
    return np.array([[0, 0, width, height, 1]], np.float32)


def outside_image(boxes: np.ndarray, image_shape: tuple[int, ...]) -> np.ndarray:
    """Indices of the (N, >= 4) xyxy ``boxes`` that lie entirely outside an image of shape
    (H, W, ...) (touching its edge is inside)."""
    h, w = image_shape[:2]
    b = boxes
    return np.flatnonzero((b[:, 2] < 0) | (b[:, 3] < 0) | (b[:, 0] > w) | (b[:, 1] > h))


def _is_pixel(value: Any) -> bool:
    """A box coordinate a file may hold: a finite JSON number of at most 1e9 pixels (what
    :func:`as_boxes` takes)."""
    return is_json_number(value) and abs(value) <= 1e9


def as_boxes(
    boxes: Sequence | np.ndarray | None,
    image_shape: tuple[int, ...],
    source: str = "the image",
    bbox_format: BoxFormat = "xyxy",
    keep_inverted: bool = False,
    warn_outside: bool = True,
) -> np.ndarray:
    """(N, 5) float32 xyxy + score; None means the whole image; a missing score means 1.

    Args:
        boxes: (N, 4) or (N, 5) (a single box may be flat), in ``bbox_format`` image pixels.
        image_shape: (H, W, ...) of the image the boxes are in.
        source: the image's name, for messages.
        keep_inverted: keep boxes with x2 < x1 or y2 < y1 (or w, h < 0) instead of refusing
            them: the reference crops a detection file's boxes as given.
        warn_outside: log boxes entirely outside the image (for a caller that refuses them
            itself, False).

    Boxes entirely outside the image are kept (the reference keeps them: their crop is black)
    but logged as a warning naming ``source``: their keypoints mean nothing.
    """
    h, w = image_shape[:2]
    if bbox_format not in BOX_FORMATS:
        raise InputError(
            f"bbox_format must be one of {', '.join(BOX_FORMATS)}, not {bbox_format!r}"
        )
    if boxes is None:
        return whole_image_box(h, w)
    if hasattr(boxes, "detach") and hasattr(boxes, "double"):  # a torch tensor (no import)
        # a detector's output may require grad, live on a GPU, or be bf16 (NumPy has none)
        boxes = boxes.detach().cpu().double().numpy()
    try:
        arr = np.array(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{source}: boxes must be numbers, (N, 4) or (N, 5)") from None
    if arr.size == 0:
        return np.zeros((0, 5), np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] not in (4, 5):
        raise InputError(
            f"{source}: boxes must be (N, 4) {bbox_format} or (N, 5) {bbox_format}+score, "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all() or np.abs(arr[:, :4]).max() > 1e9:
        raise InputError(f"{source}: boxes must be finite numbers of at most 1e9 pixels")
    if bbox_format == "xywh":
        if (arr[:, 2:4] < 0).any() and not keep_inverted:
            bad = int(np.flatnonzero((arr[:, 2:4] < 0).any(axis=1))[0])
            raise InputError(f"{source}: box {bad} {arr[bad, :4].tolist()} has w < 0 or h < 0")
        arr[:, 2:4] += arr[:, 0:2]
    arr = arr.astype(np.float32)
    inverted = np.flatnonzero((arr[:, 2] < arr[:, 0]) | (arr[:, 3] < arr[:, 1]))
    if len(inverted) and not keep_inverted:
        raise InputError(
            f"{source}: box {inverted[0]} {arr[inverted[0], :4].tolist()} has x2 < x1 or y2 < y1 "
            "(boxes are x1, y1, x2, y2; pass bbox_format='xywh' for x, y, w, h)"
        )
    points = np.flatnonzero((arr[:, 2] == arr[:, 0]) & (arr[:, 3] == arr[:, 1]))
    if len(points):
        log.warning(
            f"{source}: {len(points)} of {len(arr)} boxes have zero width and height (box "
            f"{points[0]}: {arr[points[0], :4].tolist()}); all their keypoints land on that point"
        )
    outside = outside_image(arr, image_shape) if warn_outside else ()
    if len(outside):
        log.warning(
            f"{source}: {len(outside)} of {len(arr)} boxes lie entirely outside the {w} x {h} "
            f"image (box {outside[0]}: {arr[outside[0], :4].tolist()}); their crops are black "
            "and their keypoints mean nothing"
        )
    if arr.shape[1] == 4:
        arr = np.concatenate([arr, np.ones((len(arr), 1), np.float32)], axis=1)
    return arr


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
    def from_dict(
        cls, data: Mapping[str, Any], source: str = "boxes", bbox_format: BoxFormat = "xyxy"
    ) -> "BoxTable":
        """From ``{"<image>": [[x1, y1, x2, y2, score?], ...]}`` (``bbox_format="xywh"``:
        ``[x, y, w, h, score?]``)."""
        if bbox_format not in BOX_FORMATS:
            raise InputError(f"bbox_format must be one of {', '.join(BOX_FORMATS)}")
        by_name = {}
        for name, boxes in data.items():
            if hasattr(boxes, "detach") and hasattr(boxes, "double"):  # a torch tensor
                boxes = boxes.detach().cpu().double().numpy()
            ok = isinstance(boxes, list | tuple | np.ndarray) and all(
                isinstance(b, list | tuple | np.ndarray)
                and len(b) in (4, 5)
                and all(map(_is_pixel, b[:4]))
                and all(map(is_json_number, b[4:]))
                for b in boxes
            )
            if not ok:
                raise AnnotationError(
                    f"{source}: entry '{name}' must be a list of [x1, y1, x2, y2] or "
                    f"[x1, y1, x2, y2, score] boxes of finite numbers (coordinates of at most "
                    f"1e9 pixels), got {boxes!r:.80}"
                )
            if bbox_format == "xywh":
                negative = [b for b in boxes if b[2] < 0 or b[3] < 0]
                if negative:
                    raise AnnotationError(
                        f"{source}: entry '{name}': box {list(negative[0])} has w < 0 or h < 0"
                    )
                boxes = [[b[0], b[1], b[0] + b[2], b[1] + b[3], *b[4:]] for b in boxes]
            inverted = [b for b in boxes if b[2] < b[0] or b[3] < b[1]]
            if inverted:
                raise AnnotationError(
                    f"{source}: entry '{name}': box {list(inverted[0])} has x2 < x1 or y2 < y1 "
                    "(boxes are [x1, y1, x2, y2]; use bbox_format 'xywh' for [x, y, w, h])"
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
                and all(map(_is_pixel, det["bbox"]))
                and det["bbox"][2] >= 0
                and det["bbox"][3] >= 0
                and is_json_number(det.get("score", 1.0))
            )
            if not ok:
                raise AnnotationError(
                    f"{source}: entry {i} must be a COCO detection {{'image_id': int, 'bbox': "
                    "[x, y, w, h] (finite, at most 1e9 pixels, w and h >= 0), 'score': s, "
                    f"'category_id': 1}}, got {det!r:.80}"
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
    def read(cls, path: str | Path, bbox_format: BoxFormat = "xyxy") -> "BoxTable":
        """A boxes file in either layout; :class:`AnnotationError` names what is wrong.
        ``bbox_format`` is how the ``{"<image>": [...]}`` layout gives boxes (COCO detection
        results are always x, y, w, h)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise AnnotationError(f"{path}: no such boxes file") from None
        except IsADirectoryError:
            raise AnnotationError(f"{path}: a folder, not a boxes file") from None
        except OSError as e:
            raise AnnotationError(
                f"{path}: cannot read the boxes file ({e.strerror or e})"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise AnnotationError(f"{path}: not valid JSON ({e})") from None
        if isinstance(data, dict):
            return cls.from_dict(data, str(path), bbox_format)
        if isinstance(data, list):
            return cls.from_coco(data, str(path))
        raise AnnotationError(
            f'{path}: expected {{"<image file name>": [[x1, y1, x2, y2, score?], ...]}} or a '
            "list of COCO detections"
        )
