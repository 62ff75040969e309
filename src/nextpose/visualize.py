"""Drawing poses on images: boxes, keypoints and skeleton limbs."""

import cv2
import numpy as np

from .keypoints import COCO_KEYPOINTS, KeypointSet

_LEFT, _RIGHT, _CENTRE = (0, 200, 0), (255, 128, 0), (51, 153, 255)  # RGB


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
) -> np.ndarray:
    """A copy of ``image`` (H, W, 3) uint8 RGB with each person's skeleton drawn.

    Args:
        keypoints: (N, K, 2) image pixels.
        scores: (N, K); keypoints scoring at or below ``score_threshold`` are not drawn.
        boxes: optional (N, 4) xyxy boxes, drawn as thin rectangles.
    """
    out = np.ascontiguousarray(image.copy())
    h, w = out.shape[:2]
    thickness = max(1, round(max(h, w) / 300))
    radius = thickness + 1
    names = keypoint_set.names
    for n in range(len(keypoints)):
        if boxes is not None:
            x1, y1, x2, y2 = (round(float(v)) for v in boxes[n][:4])
            cv2.rectangle(out, (x1, y1), (x2, y2), (255, 255, 255), thickness, cv2.LINE_AA)
        shown = scores[n] > score_threshold
        pts = [(round(float(x)), round(float(y))) for x, y in keypoints[n]]
        for a, b in keypoint_set.skeleton:
            if shown[a] and shown[b]:
                color = (
                    _side_color(names, a)
                    if _side_color(names, a) == _side_color(names, b)
                    else _CENTRE
                )
                cv2.line(out, pts[a], pts[b], color, thickness, cv2.LINE_AA)
        for k, p in enumerate(pts):
            if shown[k]:
                cv2.circle(out, p, radius, _side_color(names, k), -1, cv2.LINE_AA)
    return out
