"""Box -> crop geometry: centre/scale, aspect fix, the affine matrix and the way back."""

import numpy as np
import pytest

from nextpose.geometry import (
    box_to_center_scale,
    crop_to_image,
    fix_aspect_ratio,
    image_to_crop_matrix,
    warp_to_crop,
)


def test_center_scale_of_box():
    center, scale = box_to_center_scale(np.array([[10, 20, 110, 220]]), padding=1.25)
    np.testing.assert_array_equal(center, [[60, 120]])
    np.testing.assert_array_equal(scale, [[125, 250]])
    assert center.dtype == scale.dtype == np.float32


def test_aspect_fix_only_grows():
    scale = np.array([[100, 100], [30, 200]], np.float32)
    fixed = fix_aspect_ratio(scale, 0.75)
    np.testing.assert_allclose(fixed, [[100, 100 / 0.75], [150, 200]], rtol=1e-6)
    assert np.all(fixed >= scale)
    np.testing.assert_allclose(fixed[:, 0] / fixed[:, 1], 0.75, rtol=1e-6)


def test_matrix_maps_box_to_crop_at_zero_rotation():
    center, scale, size = (
        np.array([50.5, 80.0], np.float32),
        np.array([60, 80], np.float32),
        (192, 256),
    )
    m = image_to_crop_matrix(center, scale, 0.0, size)
    # x_crop = (x - cx) * w/sw + w/2, one isotropic scale (§3.2)
    k = size[0] / scale[0]
    np.testing.assert_allclose(
        m, [[k, 0, size[0] / 2 - k * center[0]], [0, k, size[1] / 2 - k * center[1]]], atol=1e-9
    )


@pytest.mark.parametrize("rotation", [np.float32(30.0), np.float32(-75.0)])
def test_rotation_turns_the_crop_about_the_centre(rotation):
    center, scale, size = (
        np.array([100, 100], np.float32),
        np.array([96, 128], np.float32),
        (96, 128),
    )
    m = image_to_crop_matrix(center, scale, rotation, size)
    np.testing.assert_allclose(m @ [100, 100, 1], [48, 64], atol=1e-4)  # centre -> crop centre
    np.testing.assert_allclose(np.linalg.det(m[:, :2]), 1.0, rtol=1e-5)  # no zoom: sw == w_out


def test_crop_to_image_inverts_the_matrix():
    rng = np.random.default_rng(0)
    centers = rng.uniform(50, 500, (20, 2)).astype(np.float32)
    scales = fix_aspect_ratio(rng.uniform(20, 300, (20, 2)).astype(np.float32), 0.75)
    points = rng.uniform(0, 192, (20, 17, 2)).astype(np.float32)
    back = crop_to_image(points, centers, scales, (192, 256))
    for i in range(20):
        m = image_to_crop_matrix(centers[i], scales[i], 0.0, (192, 256))
        again = back[i] @ m[:, :2].T + m[:, 2]
        np.testing.assert_allclose(again, points[i], atol=2e-3)


def test_warp_crops_the_box():
    image = np.zeros((100, 200, 3), np.uint8)
    image[40:60, 90:110] = 255  # a white square centred at (99.5, 49.5)
    m = image_to_crop_matrix(
        np.array([99.5, 49.5], np.float32), np.array([40, 40], np.float32), 0.0, (40, 40)
    )
    crop = warp_to_crop(image, m, (40, 40))
    assert crop.shape == (40, 40, 3)
    # crop pixel X sits at image x = 79.5 + X: the square covers X = 10.5 .. 29.5
    assert crop[11:30, 11:30].min() == 255
    assert crop[10, 15, 0] == 128  # half way between a black and a white pixel
    assert crop[:10].max() == 0 and crop[:, 31:].max() == 0
