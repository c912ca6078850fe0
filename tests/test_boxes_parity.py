"""The native box formation against its Python reference and against RapidOCR's
DBPostProcess, on real probability maps."""

from __future__ import annotations

import numpy as np
import pytest
from boxmatch import match
from rapidocr_onnxruntime.ch_ppocr_det.utils import DBPostProcess

import edgedb
from edgedb.reference import boxes_from_prob_reference


def assert_same_boxes(pairs_of_lists, *, min_iou=0.9, min_fraction=0.99, score_tol=0.01):
    """Pooled over maps: boxes matched one to one, and their scores close. A box whose
    score sits on box_thresh may tip either way in one implementation, so no single map
    is required to agree completely."""
    total = matched = 0
    for ours, reference in pairs_of_lists:
        pairs = match([b.points for b in ours], [b.points for b in reference], min_iou)
        total += max(len(ours), len(reference))
        matched += len(pairs)
        for i, j in pairs:
            assert abs(ours[i].score - reference[j].score) <= score_tol
    assert total > 100
    assert matched >= min_fraction * total, f"{matched} of {total} matched"


@pytest.mark.parametrize("score_mode", ["fast", "slow"])
def test_quads_match_rapidocr(real_maps, score_mode):
    post = DBPostProcess(thresh=0.3, box_thresh=0.6, max_candidates=1000, unclip_ratio=1.5, score_mode=score_mode)
    total = matched = close = 0
    for prob, shape in real_maps.values():
        ours = edgedb.boxes_from_prob(prob, score_mode=score_mode, dest_size=shape)
        boxes, scores = post(prob[None, None], shape)
        pairs = match([b.points for b in ours], list(boxes), 0.9)
        total += max(len(ours), len(boxes))
        matched += len(pairs)
        close += sum(abs(ours[i].score - scores[j]) < 0.01 for i, j in pairs)
    assert total > 200
    assert matched >= 0.99 * total, f"{matched}/{total}"
    # RapidOCR truncates box corners carrying float noise (258.99998 -> 258), which can
    # shift an axis-aligned box by a pixel and lower its score; edgedb snaps first.
    assert close >= 0.9 * matched


@pytest.mark.parametrize("score_mode", ["fast", "slow"])
@pytest.mark.parametrize("use_dilation", [False, True])
def test_quads_match_reference(real_maps, score_mode, use_dilation):
    def both(prob, shape):
        kwargs = dict(score_mode=score_mode, use_dilation=use_dilation, dest_size=shape)
        return edgedb.boxes_from_prob(prob, **kwargs), boxes_from_prob_reference(prob, **kwargs)

    assert_same_boxes(both(prob, shape) for prob, shape in real_maps.values())


@pytest.mark.parametrize("score_mode", ["fast", "slow"])
def test_polygons_match_reference(real_maps, score_mode):
    # Border tracing and Douglas-Peucker may keep other vertices than OpenCV's
    # findContours + approxPolyDP: the outlined region is the same, and a polygon's fast
    # score (the mean inside it) moves a little with its vertices. Pooled over all maps.
    total = matched = close = 0
    for prob, shape in real_maps.values():
        kwargs = dict(box_type="poly", score_mode=score_mode, dest_size=shape)
        ours = edgedb.boxes_from_prob(prob, **kwargs)
        reference = boxes_from_prob_reference(prob, **kwargs)
        pairs = match([b.points for b in ours], [b.points for b in reference], 0.8)
        total += max(len(ours), len(reference))
        matched += len(pairs)
        close += sum(abs(ours[i].score - reference[j].score) <= 0.02 for i, j in pairs)
    assert matched >= 0.97 * total, f"{matched}/{total}"
    assert close >= 0.95 * matched


def quantized(prob):
    return np.round(prob * 255).astype(np.uint8)


def test_uint8_map_matches_reference(real_maps):
    assert_same_boxes(
        (edgedb.boxes_from_prob(quantized(prob), dest_size=shape),
         boxes_from_prob_reference(quantized(prob), dest_size=shape))
        for prob, shape in real_maps.values()
    )


def test_uint8_map_gives_the_float_boxes(real_maps):
    assert_same_boxes(
        ((edgedb.boxes_from_prob(quantized(prob), dest_size=shape), edgedb.boxes_from_prob(prob, dest_size=shape))
         for prob, shape in real_maps.values()),
        min_fraction=0.97,
        score_tol=5e-3,
    )


def test_row_strided_view_is_read_as_is(real_maps):
    prob, shape = next(iter(real_maps.values()))
    padded = np.zeros((prob.shape[0] + 40, prob.shape[1] + 64), np.float32)
    padded[10 : 10 + prob.shape[0], 32 : 32 + prob.shape[1]] = prob
    view = padded[10 : 10 + prob.shape[0], 32 : 32 + prob.shape[1]]
    assert not view.flags.c_contiguous
    a = edgedb.boxes_from_prob(view, dest_size=shape)
    b = edgedb.boxes_from_prob(prob, dest_size=shape)
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.points, y.points)
        assert x.score == y.score


def test_flipped_rows_are_accepted(real_maps):
    prob, _ = next(iter(real_maps.values()))
    flipped = prob[::-1]
    assert flipped.strides[0] < 0
    a, b = edgedb.boxes_from_prob(flipped), edgedb.boxes_from_prob(np.ascontiguousarray(flipped))
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.points, y.points)
        assert x.score == y.score
