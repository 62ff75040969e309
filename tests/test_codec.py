"""Heatmap decoding: argmax ties, invalid maps and the exact quarter-pixel refinement bounds."""

import numpy as np

from nextpose.codec import decode_heatmaps


def _single(h=8, w=6):
    return np.zeros((1, 1, h, w), np.float32)


def test_peak_moves_a_quarter_toward_the_higher_neighbour():
    hm = _single()
    hm[0, 0, 4, 3] = 10
    hm[0, 0, 4, 4] = 5  # right neighbour higher than left
    hm[0, 0, 3, 3] = 2  # upper neighbour higher than lower
    loc, score = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0, 0], [3.25, 3.75])
    assert score[0, 0] == 10


def test_first_maximum_wins_ties():
    hm = _single()
    hm[0, 0, 5, 2] = 7
    hm[0, 0, 2, 4] = 7
    loc, _ = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0, 0], [4, 2])  # row 2 comes first


def test_non_positive_map_gives_minus_one_and_keeps_score():
    hm = _single() - 3
    hm[0, 0, 1, 1] = -0.5
    loc, score = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0, 0], [-1, -1])
    assert score[0, 0] == np.float32(-0.5)
    hm = _single()  # an all-zero map: score 0 is also invalid
    loc, score = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0, 0], [-1, -1])


def test_refinement_bounds_match_the_reference():
    # x = 1 is never refined along x (bound is x > 1); y = 0 disables the x refinement.
    hm = _single()
    hm[0, 0, 3, 1] = 10
    hm[0, 0, 3, 2] = 5
    loc, _ = decode_heatmaps(hm)
    assert loc[0, 0, 0] == 1
    hm = _single()
    hm[0, 0, 0, 3] = 10
    hm[0, 0, 0, 4] = 5
    loc, _ = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0, 0], [3, 0])
    hm = _single()  # the last column is not refined along x
    hm[0, 0, 4, 5] = 10
    hm[0, 0, 4, 4] = 5
    loc, _ = decode_heatmaps(hm)
    assert loc[0, 0, 0] == 5


def test_batch_shapes():
    rng = np.random.default_rng(1)
    hm = rng.normal(size=(3, 17, 64, 48)).astype(np.float32)
    loc, score = decode_heatmaps(hm)
    assert loc.shape == (3, 17, 2) and score.shape == (3, 17)
    np.testing.assert_array_equal(score, hm.reshape(3, 17, -1).max(-1))


def test_a_nan_maximum_keeps_its_place_in_both_decoders():
    """The reference marks a keypoint invalid where its maximum is <= 0; NaN is not, so it keeps
    the argmax (NumPy's and PyTorch's argmax both take the first NaN)."""
    import torch

    from nextpose.codec_torch import decode_heatmaps_torch

    hm = np.zeros((1, 2, 8, 6), np.float32)
    hm[0, 0, 5, 2] = np.nan
    hm[0, 1] -= 1  # and a negative map: invalid in both
    loc, score = decode_heatmaps(hm)
    np.testing.assert_array_equal(loc[0], [[2, 5], [-1, -1]])
    assert np.isnan(score[0, 0])
    t_loc, t_score = decode_heatmaps_torch(torch.from_numpy(hm))
    np.testing.assert_array_equal(t_loc.numpy(), loc)
    np.testing.assert_array_equal(t_score.numpy(), score)
