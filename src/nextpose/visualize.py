"""Drawing poses on images: boxes, keypoints and skeleton limbs."""

from collections.abc import Sequence

import numpy as np

from .keypoints import COCO_KEYPOINTS, KeypointSet
from .opencv import cv2

_LEFT, _RIGHT, _CENTRE = (0, 200, 0), (255, 128, 0), (51, 153, 255)  # RGB
_DARK = (20, 20, 20)


def _side_color(names: tuple[str, ...], i: int) -> tuple[int, int, int]:
    name = names[i] if i < len(names) else ""
    return _LEFT if name.startswith("left") else _RIGHT if name.startswith("right") else _CENTRE


def draw_poses(
    image: np.ndarray,
    keypoints: np.ndarray,
    scores: np.ndarray,
    boxes: np.ndarray | None = None,
    keypoint_set: KeypointSet = COCO_KEYPOINTS,
    score_threshold: float = 0.3,
    labels: Sequence[str] | None = None,
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 RGB with each person's skeleton drawn.

    Args:
        keypoints: (N, K, 2) image pixels.
        scores: (N, K); keypoints scoring at or below ``score_threshold`` are not drawn.
        boxes: optional (N, 4) xyxy boxes, drawn as thin rectangles.
        keypoint_set: names (left/right/centre colours) and the skeleton's limbs.
        labels: optional text per person (e.g. a track id), written at the box's top left.
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be an (H, W, 3) uint8 RGB array, not {type(image).__name__} "
                        "(nextpose.read_image reads a file)")  # fmt: skip
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be an (H, W, 3) uint8 RGB array, got {image.dtype} "
                         f"{image.shape}")  # fmt: skip
    if labels is not None and len(labels) != len(keypoints):
        raise ValueError(f"{len(labels)} labels for {len(keypoints)} people")
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 320))
    radius = thickness + 2
    names = keypoint_set.names
    for n in range(len(keypoints)):
        if boxes is not None:
            x1, y1, x2, y2 = (round(float(v)) for v in boxes[n][:4])
            # A light line with a dark edge shows on bright and dark backgrounds alike.
            cv2.rectangle(out, (x1, y1), (x2, y2), _DARK, thickness + 1, cv2.LINE_AA)
            cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), max(1, thickness - 1))
            if labels is not None:
                _label(out, str(labels[n]), (x1, y1), thickness)
        shown = scores[n] > score_threshold
        pts = [(round(float(x)), round(float(y))) for x, y in keypoints[n]]
        limbs = [(a, b) for a, b in keypoint_set.skeleton if shown[a] and shown[b]]
        for a, b in limbs:
            cv2.line(out, pts[a], pts[b], _DARK, thickness + 2, cv2.LINE_AA)
        for a, b in limbs:
            side_a, side_b = _side_color(names, a), _side_color(names, b)
            color = side_a if side_a == side_b else _CENTRE
            cv2.line(out, pts[a], pts[b], color, thickness, cv2.LINE_AA)
        for k, p in enumerate(pts):
            if shown[k]:
                cv2.circle(out, p, radius, _side_color(names, k), -1, cv2.LINE_AA)
                cv2.circle(out, p, radius, _DARK, 1, cv2.LINE_AA)
    return out


def _label(image: np.ndarray, text: str, corner: tuple[int, int], thickness: int) -> None:
    """Black text on a white patch just inside the top left corner of a box."""
    scale = 0.4 * thickness
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness // 2))
    x, y = max(corner[0], 0), max(corner[1], 0)
    cv2.rectangle(image, (x, y), (x + tw + 4, y + th + base + 4), (255, 255, 255), -1)
    cv2.putText(
        image,
        text,
        (x + 2, y + th + 2),
        cv2.FONT_HERSHEY_SIMPLEX,
        scale,
        (0, 0, 0),
        max(1, thickness // 2),
        cv2.LINE_AA,
    )
