"""Boxes, crops and the affine maps between image and crop pixels.

Frames: *image* pixels of the decoded picture and *crop* pixels of the network input, both with
pixel centres at integer coordinates. Arithmetic follows the reference bit for bit (spec 2, 3, 6.5):
the float32/float64 choices below are deliberate.
"""

import cv2
import numpy as np


def box_to_center_scale(boxes: np.ndarray, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """Centre and padded size of xyxy boxes.

    Args:
        boxes: (N, 4) xyxy, image pixels.
        padding: enlargement of the box side lengths.

    Returns:
        center (N, 2) and scale (N, 2) float32; scale is (w, h) in image pixels.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    center = np.stack([(x1 + x2) * np.float32(0.5), (y1 + y2) * np.float32(0.5)], axis=1)
    scale = np.stack([(x2 - x1) * np.float32(padding), (y2 - y1) * np.float32(padding)], axis=1)
    return center, scale


def fix_aspect_ratio(scale: np.ndarray, aspect_ratio: float) -> np.ndarray:
    """Grow each (w, h) so that w / h equals the crop's ``aspect_ratio``; never shrinks.

    Args:
        scale: (N, 2) float32, (w, h) image pixels.
        aspect_ratio: crop width / height, e.g. 0.75 for 192x256.
    """
    scale = np.asarray(scale, dtype=np.float32).reshape(-1, 2)
    w, h = scale[:, 0], scale[:, 1]
    wider = w > h * np.float32(aspect_ratio)
    return np.where(
        wider[:, None],
        np.stack([w, w / np.float32(aspect_ratio)], axis=1),
        np.stack([h * np.float32(aspect_ratio), h], axis=1),
    ).astype(np.float32)


def image_to_crop_matrix(
    center: np.ndarray, scale: np.ndarray, rotation: float, crop_size: tuple[int, int]
) -> np.ndarray:
    """The 2x3 float64 matrix mapping image pixels to crop pixels.

    The crop shows the square-pixel region of width ``scale[0]`` around ``center`` rotated by
    ``rotation`` degrees, resized to ``crop_size`` (w, h). Solved from three point pairs with
    OpenCV's own solver so the matrix has the reference's last bits (spec 3.2-3.3).
    """
    center = np.asarray(center, dtype=np.float32)
    w_out, h_out = crop_size
    if isinstance(rotation, np.float32):  # training: the angle is float32, so is its sine/cosine
        theta = np.deg2rad(rotation)
        sin, cos = np.float64(np.sin(theta)), np.float64(np.cos(theta))
    else:
        theta = np.deg2rad(float(rotation))
        sin, cos = np.sin(theta), np.cos(theta)
    half_w = -0.5 * np.float64(np.float32(scale[0]))
    direction = np.array([half_w * cos, half_w * sin])  # R(theta) @ (-sw/2, 0)
    src = np.zeros((3, 2), dtype=np.float32)
    src[0] = center
    src[1] = center + direction
    src[2] = src[1] + np.array([src[1, 1] - src[0, 1], src[0, 0] - src[1, 0]], dtype=np.float32)
    dst = np.array([[w_out / 2, h_out / 2], [0, h_out / 2], [0, h_out / 2 + w_out / 2]], np.float32)
    return cv2.getAffineTransform(src, dst)


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, crop_size: tuple[int, int]) -> np.ndarray:
    """Bilinear crop of ``image`` (H, W, C) uint8 by image->crop ``matrix``; outside is black."""
    return cv2.warpAffine(image, matrix, crop_size, flags=cv2.INTER_LINEAR)


def crop_region(
    boxes: np.ndarray, crop_size: tuple[int, int], padding: float = 1.25
) -> tuple[np.ndarray, np.ndarray]:
    """Padded, aspect-fixed (N, 2) centres and scales of xyxy boxes: what each crop shows."""
    center, scale = box_to_center_scale(boxes, padding)
    return center, fix_aspect_ratio(scale, crop_size[0] / crop_size[1])


def crop(
    image: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    crop_size: tuple[int, int],
    rotation: float = 0.0,
) -> np.ndarray:
    """The (h, w, C) crop of ``image`` showing region (center, scale), rotated by ``rotation``°."""
    return warp_to_crop(image, image_to_crop_matrix(center, scale, rotation, crop_size), crop_size)


def crop_to_image(
    points: np.ndarray, center: np.ndarray, scale: np.ndarray, crop_size: tuple[int, int]
) -> np.ndarray:
    """Map crop pixels back to image pixels (no rotation), as the reference does (spec 6.5).

    Args:
        points: (N, K, 2) crop pixels.
        center, scale: (N, 2) float32, the aspect-fixed crop region in image pixels.
        crop_size: (w, h) of the crop.

    Returns:
        (N, K, 2) float32 image pixels; computed in float64, rounded once.
    """
    points = np.asarray(points, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float32)
    size = np.asarray(crop_size, dtype=np.float64)
    half = (np.float32(0.5) * scale).astype(np.float64)  # the reference halves in float32
    out = (
        points / size * scale[:, None].astype(np.float64) + np.asarray(center, np.float64)[:, None]
    )
    return (out - half[:, None]).astype(np.float32)
