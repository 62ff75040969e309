"""COCO keypoint annotations and person-detection files -> person instances (§1.1-1.4)."""

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AnnotationError

_FLOAT32_MAX = float(np.finfo(np.float32).max)


def is_json_number(value: Any) -> bool:
    """A JSON number that is finite in float32 (not NaN, inf, too large, or a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value) and abs(value) <= _FLOAT32_MAX
    except OverflowError:  # an int beyond float range
        return False


_PLAIN_NUMBERS = frozenset((int, float))


def are_json_numbers(values: list) -> bool:
    """``all(map(is_json_number, values))``, ~6x faster for lists of plain ints and floats.

    The sum of the magnitudes is finite and at most float32's maximum only when every value is
    (NaN, inf and too large values all push it past, or make it NaN); anything else (a sum
    that is too large, another type, an int beyond float range) is checked value by value.
    """
    if set(map(type, values)) <= _PLAIN_NUMBERS:
        try:
            if sum(map(abs, values)) <= _FLOAT32_MAX:
                return True
        except OverflowError:
            pass
    return all(map(is_json_number, values))


@dataclass
class PersonInstance:
    """One person box to estimate, with its ground truth when known.

    Attributes:
        id: annotation id (ground truth) or running index over person detections.
        image_id, image_file, image_size: the COCO image, and its (w, h) from the annotation file.
        bbox: (4,) float32 xyxy image pixels.
        bbox_score: detector score, 1 for ground-truth boxes.
        keypoints: (K, 2) float32 image pixels (zeros for detections).
        visible: (K,) float32, 1 where the keypoint is labelled (COCO v > 0).
        area: annotated segmentation area (ground truth only).
    """

    id: int
    image_id: int
    image_file: str
    image_size: tuple[int, int]
    bbox: np.ndarray
    bbox_score: float
    keypoints: np.ndarray
    visible: np.ndarray
    area: float = 0.0
    category_id: int = 1


def load_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise AnnotationError(f"{path}: a folder, not a {what} file") from None
    except OSError as e:
        raise AnnotationError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise AnnotationError(f"{path}: not a {what} file (not UTF-8 text)") from None
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise AnnotationError(
            f"{path}: cannot read the {what} file: its JSON nests too deeply"
        ) from None


class CocoKeypoints:
    """A COCO person-keypoints annotation file, indexed by image.

    Images keep the order of the file's ``images`` list; each image's annotations keep file order.
    ``data`` is the file's parsed JSON when the caller has read it already (it is not changed).
    """

    def __init__(self, ann_file: str | Path, num_keypoints: int = 17, data: Any = None):
        self.path = Path(ann_file)
        self.num_keypoints = num_keypoints
        if data is None:
            data = load_json(self.path, "annotation")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise AnnotationError(f"{self.path}: not a COCO annotation file (no 'images' list)")
        self.images: dict[int, dict] = {}
        for i, img in enumerate(data["images"]):
            try:
                image_id = img["id"]
                name, _, _ = img["file_name"], int(img["width"]), int(img["height"])
            except (KeyError, TypeError, ValueError, OverflowError):
                raise AnnotationError(
                    f"{self.path}: images[{i}] needs 'id', 'file_name', 'width' and 'height' "
                    "(finite numbers)"
                ) from None
            if not isinstance(name, str):
                raise AnnotationError(
                    f"{self.path}: images[{i}]: 'file_name' must be a string, not {name!r}"
                )
            if image_id in self.images:
                raise AnnotationError(f"{self.path}: duplicate image id {image_id}")
            self.images[image_id] = img
        self.annotations: dict[int, list[dict]] = {i: [] for i in self.images}
        seen: dict[Any, int] = {}
        annotations = data.get("annotations", [])
        if not isinstance(annotations, list):
            raise AnnotationError(f"{self.path}: 'annotations' must be a list")
        for i, ann in enumerate(annotations):
            image_id = ann.get("image_id") if isinstance(ann, dict) else None
            if not isinstance(image_id, int | str) or image_id not in self.images:
                raise AnnotationError(
                    f"{self.path}: annotations[{i}] refers to unknown image_id {image_id!r}"
                )
            ann_id = ann.get("id")
            if not isinstance(ann_id, int | str):
                raise AnnotationError(f"{self.path}: annotations[{i}] has no 'id'")
            if ann_id in seen:
                # The evaluation tells instances apart by id: a repeat would be dropped silently.
                raise AnnotationError(
                    f"{self.path}: duplicate annotation id {ann_id!r} "
                    f"(annotations[{seen[ann_id]}] and [{i}])"
                )
            seen[ann_id] = i
            self.annotations[image_id].append(ann)

    def ground_truth_instances(self) -> list[PersonInstance]:
        """Labelled persons usable as boxes: not crowd, with keypoints, non-empty clipped box."""
        out = []
        for image_id, img in self.images.items():
            for ann in self.annotations[image_id]:
                inst = self._parse(ann, img)
                if inst is not None:
                    out.append(inst)
        return out

    def _parse(self, ann: dict, img: dict) -> PersonInstance | None:
        if "bbox" not in ann or "keypoints" not in ann:
            return None
        k = self.num_keypoints
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            kpts = np.asarray(ann["keypoints"], dtype=np.float32).reshape(k, 3)
        except (TypeError, ValueError, OverflowError):
            raise AnnotationError(
                f"{self.path}: annotation {ann.get('id')}: 'bbox' must be 4 numbers and "
                f"'keypoints' {3 * k} numbers"
            ) from None
        if not (np.isfinite([x, y, w, h]).all() and np.isfinite(kpts).all()):
            raise AnnotationError(f"{self.path}: annotation {ann.get('id')} has NaN/inf values")
        width, height = int(img["width"]), int(img["height"])
        # Clip in float64 to the last pixel index, then store as float32 (§1.2); the reference
        # clips to the file's width - 1 as written (639.5 for a width of 640.5).
        right, bottom = float(img["width"]) - 1, float(img["height"]) - 1
        clipped = np.array(
            [
                np.clip(x, 0, right),
                np.clip(y, 0, bottom),
                np.clip(x + w, 0, right),
                np.clip(y + h, 0, bottom),
            ]
        )
        bbox = clipped.astype(np.float32)
        coords = kpts[:, :2]
        visible = np.minimum(1, kpts[:, 2]).astype(np.float32)
        num_keypoints = ann.get("num_keypoints", int((coords.max(axis=1) > 0).sum()))
        if (
            ann.get("iscrowd", 0)
            or num_keypoints == 0
            or bbox[2] - bbox[0] <= 0
            or bbox[3] - bbox[1] <= 0
            or coords.max() <= 0
        ):
            return None
        area = ann.get("area")
        if area is not None and not is_json_number(area):
            raise AnnotationError(
                f"{self.path}: annotation {ann.get('id')}: 'area' must be a finite number, "
                f"got {area!r:.60}"
            )
        if area is None:  # the reference's estimate, in float64 from the unrounded box
            x1, y1, x2, y2 = clipped
            area = max(1.0, (x2 - x1) * (y2 - y1) * 0.53)
        area = float(np.float32(area))
        return PersonInstance(
            id=ann["id"],
            image_id=img["id"],
            image_file=img["file_name"],
            image_size=(width, height),
            bbox=bbox,
            bbox_score=1.0,
            keypoints=coords.copy(),
            visible=visible,
            area=area,
            category_id=ann.get("category_id", 1),
        )

    def detection_instances(
        self, det_file: str | Path, score_threshold: float | None = None
    ) -> list[PersonInstance]:
        """Person boxes of a COCO detection-results file, in file order (§1.4).

        Entries of other categories are skipped; the kept ones get ids 0, 1, 2, ... Boxes are not
        clipped, and one with a negative width or height is kept (with a warning), as the
        reference keeps it. ``score_threshold`` (off by default, as in the reference) drops
        lower scores.
        """
        det_file = Path(det_file)
        dets = load_json(det_file, "detection")
        if not isinstance(dets, list):
            raise AnnotationError(f"{det_file}: expected a JSON list of detections")
        k = self.num_keypoints
        out: list[PersonInstance] = []
        person_index = 0
        negative: int | None = None  # the first box with a negative width or height
        for i, det in enumerate(dets):
            try:
                if det["category_id"] != 1:
                    continue
                image_id = det["image_id"]
                x, y, w, h = np.asarray(det["bbox"][:4], dtype=np.float32)
                score = np.float32(det["score"])
            except (KeyError, TypeError, ValueError, IndexError, OverflowError):
                raise AnnotationError(
                    f"{det_file}: entry {i} needs 'image_id', 'category_id', 'bbox' [x, y, w, h] "
                    "and 'score'"
                ) from None
            if not isinstance(image_id, int | str) or image_id not in self.images:
                raise AnnotationError(
                    f"{det_file}: entry {i} refers to image_id {image_id}, not in {self.path}"
                )
            if not np.isfinite([x, y, w, h, score]).all():
                raise AnnotationError(
                    f"{det_file}: entry {i} has bbox {det['bbox'][:4]} and score {det['score']}: "
                    "need finite numbers ([x, y, w, h])"
                )
            if (w < 0 or h < 0) and negative is None:
                negative = i
            index = person_index
            person_index += 1
            if score_threshold is not None and score < score_threshold:
                continue
            img = self.images[image_id]
            out.append(
                PersonInstance(
                    id=index,
                    image_id=image_id,
                    image_file=img["file_name"],
                    image_size=(int(img["width"]), int(img["height"])),
                    bbox=np.array([x, y, x + w, y + h], dtype=np.float32),
                    bbox_score=float(score),
                    keypoints=np.zeros((k, 2), np.float32),
                    visible=np.ones(k, np.float32),
                )
            )
        if negative is not None:
            # The reference has no size check (§1.4): such a box is cropped as given.
            warnings.warn(
                f"{det_file}: entry {negative} (and maybe others) has bbox "
                f"{dets[negative]['bbox'][:4]} with a negative width or height; it is cropped "
                "as the reference crops it, from the corners (x, y) and (x + w, y + h)",
                stacklevel=2,
            )
        return out
