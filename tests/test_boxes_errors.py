"""Bad input to boxes_from_prob gets a clear exception, never a crash or a hang."""

from __future__ import annotations

import time

import numpy as np
import pytest

import edgedb
from edgedb import InvalidInputError, InvalidInputTypeError


def good_map():
    prob = np.zeros((64, 96), np.float32)
    prob[20:40, 10:80] = 0.9
    return prob


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, -0.5, 1.5, -7.0, 12.0])
def test_values_far_outside_probabilities_are_rejected(value):
    prob = good_map()
    prob[50, 90] = value
    with pytest.raises(InvalidInputError, match=r"NaN, inf or a value far outside \[0, 1\]"):
        edgedb.boxes_from_prob(prob)


def test_small_overshoot_is_accepted_and_scores_stay_in_range():
    # Real exports give 1.0000001 (a rounded sigmoid) or more after a bicubic resize.
    prob = good_map()
    prob[20:40, 10:80] = 1.1
    prob[0, 0] = -0.1
    boxes = edgedb.boxes_from_prob(prob)
    assert len(boxes) == 1 and boxes[0].score == 1.0


def test_nan_inside_text_is_rejected():
    prob = good_map()
    prob[30, 40] = np.nan
    with pytest.raises(InvalidInputError):
        edgedb.boxes_from_prob(prob)


def test_negative_zero_is_a_valid_probability():
    prob = good_map()
    prob[0, :] = -0.0
    assert len(edgedb.boxes_from_prob(prob)) == 1


@pytest.mark.parametrize("shape", [(64,), (1, 1, 64, 96), (2, 64, 96)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(InvalidInputError, match="2-D"):
        edgedb.boxes_from_prob(np.zeros(shape, np.float32))


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.uint16, np.bool_])
def test_unsupported_dtype(dtype):
    with pytest.raises(InvalidInputTypeError, match="float32.*uint8"):
        edgedb.boxes_from_prob(np.zeros((8, 8), dtype))


@pytest.mark.parametrize("value", [None, [[0.5, 0.5]], "map", 3.0])
def test_not_an_array(value):
    with pytest.raises(InvalidInputTypeError, match="numpy array"):
        edgedb.boxes_from_prob(value)


@pytest.mark.parametrize("shape", [(0, 10), (10, 0), (0, 0)])
def test_empty_map(shape):
    with pytest.raises(InvalidInputError, match="empty"):
        edgedb.boxes_from_prob(np.zeros(shape, np.float32))


def test_negative_column_stride():
    with pytest.raises(InvalidInputError, match="column stride"):
        edgedb.boxes_from_prob(good_map()[:, ::-1])


def test_column_step_and_transpose_need_a_copy():
    for view in (good_map()[:, ::2], good_map().T):
        with pytest.raises(InvalidInputError, match="ascontiguousarray"):
            edgedb.boxes_from_prob(view)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"thresh": np.nan},
        {"thresh": -0.1},
        {"thresh": 1.5},
        {"box_thresh": np.nan},
        {"box_thresh": 2.0},
        {"unclip_ratio": -1.0},
        {"unclip_ratio": np.inf},
        {"unclip_ratio": np.nan},
        {"min_size": -3},
        {"min_size": np.nan},
        {"max_candidates": -1},
        {"dest_size": (0, 10)},
        {"dest_size": (-5, 10)},
    ],
)
def test_bad_parameter_values(kwargs):
    with pytest.raises(InvalidInputError):
        edgedb.boxes_from_prob(good_map(), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"thresh": "0.3"},
        {"thresh": None},
        {"max_candidates": 2.5},
        {"dest_size": 100},
        {"dest_size": (100,)},
        {"dest_size": (1.5, 2)},
    ],
)
def test_bad_parameter_types(kwargs):
    with pytest.raises(InvalidInputTypeError):
        edgedb.boxes_from_prob(good_map(), **kwargs)


@pytest.mark.parametrize("kwargs", [{"score_mode": "medium"}, {"box_type": "circle"}, {"score_mode": None}])
def test_unknown_modes(kwargs):
    with pytest.raises(InvalidInputError, match="must be one of"):
        edgedb.boxes_from_prob(good_map(), **kwargs)


def test_errors_are_value_and_type_errors():
    assert issubclass(InvalidInputError, ValueError)
    assert issubclass(InvalidInputTypeError, TypeError)
    assert issubclass(InvalidInputError, edgedb.EdgeDBError)


def test_millions_of_one_pixel_regions_stay_bounded():
    # 4 million isolated pixels: every region is considered only up to max_candidates,
    # and the labelling is linear in the number of runs.
    prob = np.zeros((4000, 4000), np.float32)
    prob[::2, ::2] = 0.9
    start = time.perf_counter()
    boxes = edgedb.boxes_from_prob(prob, min_size=0, box_thresh=0)
    elapsed = time.perf_counter() - start
    assert boxes == []  # a pixel's rectangle has no area, so nothing survives the offset
    assert elapsed < 10, f"{elapsed:.1f} s"


def test_max_candidates_bounds_the_count():
    prob = np.zeros((200, 200), np.float32)
    for y in range(5, 200, 20):
        for x in range(5, 200, 20):
            prob[y : y + 8, x : x + 12] = 0.9
    assert len(edgedb.boxes_from_prob(prob)) == 100
    assert len(edgedb.boxes_from_prob(prob, max_candidates=7)) == 7
    assert edgedb.boxes_from_prob(prob, max_candidates=0) == []
