"""Property tests on random maps: invariants of every result, and agreement with the
Python reference."""

from __future__ import annotations

import cv2
import numpy as np
from boxmatch import match
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import edgedb
from edgedb.reference import boxes_from_prob_reference


@st.composite
def blob_maps(draw, noise=True):
    """A map of soft rotated rectangles and ellipses, optionally with speckle noise."""
    height = draw(st.integers(8, 160))
    width = draw(st.integers(8, 160))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    prob = np.zeros((height, width), np.float32)
    for _ in range(draw(st.integers(0, 12))):
        centre = (float(rng.uniform(0, width)), float(rng.uniform(0, height)))
        size = (float(rng.uniform(1, width / 2)), float(rng.uniform(1, height / 3)))
        value = float(rng.uniform(0.2, 1.0))
        if rng.random() < 0.5:
            corners = cv2.boxPoints((centre, size, float(rng.uniform(0, 180))))
            cv2.fillPoly(prob, [np.round(corners).astype(np.int32)], value)
        else:
            axes = (int(size[0] / 2) + 1, int(size[1] / 2) + 1)
            cv2.ellipse(prob, (int(centre[0]), int(centre[1])), axes, float(rng.uniform(0, 180)), 0, 360, value, -1)
    if noise and draw(st.booleans()):
        prob = np.clip(prob + rng.normal(0, 0.15, prob.shape).astype(np.float32), 0, 1)
    if draw(st.booleans()):
        prob = cv2.GaussianBlur(prob, (3, 3), 0)
    prob = np.clip(prob, 0, 1).astype(np.float32)
    if draw(st.booleans()):
        return np.round(prob * 255).astype(np.uint8)
    return prob


params = st.fixed_dictionaries(
    {
        "thresh": st.floats(0.05, 0.95),
        "box_thresh": st.floats(0.0, 1.0),
        "unclip_ratio": st.floats(0.0, 4.0),
        "max_candidates": st.integers(0, 30),
        "min_size": st.floats(0, 6),
        "score_mode": st.sampled_from(["fast", "slow"]),
        "box_type": st.sampled_from(["quad", "poly"]),
        "use_dilation": st.booleans(),
        "dest_size": st.none() | st.tuples(st.integers(1, 2000), st.integers(1, 2000)),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prob=blob_maps(), kwargs=params)
def test_invariants(prob, kwargs):
    boxes = edgedb.boxes_from_prob(prob, **kwargs)
    height, width = kwargs["dest_size"] or prob.shape
    assert len(boxes) <= kwargs["max_candidates"]
    for box in boxes:
        assert box.points.dtype == np.float32 and box.points.ndim == 2 and box.points.shape[1] == 2
        assert np.isfinite(box.points).all()
        assert (box.points[:, 0] >= 0).all() and (box.points[:, 0] <= width).all()
        assert (box.points[:, 1] >= 0).all() and (box.points[:, 1] <= height).all()
        assert kwargs["box_thresh"] <= box.score <= 1.0
        if kwargs["box_type"] == "quad":
            assert box.points.shape == (4, 2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prob=blob_maps(noise=False),
    score_mode=st.sampled_from(["fast", "slow"]),
    use_dilation=st.booleans(),
    unclip_ratio=st.floats(0.5, 3.0),
)
def test_quads_agree_with_reference(prob, score_mode, use_dilation, unclip_ratio):
    kwargs = dict(score_mode=score_mode, use_dilation=use_dilation, unclip_ratio=unclip_ratio, box_thresh=0.3)
    ours = edgedb.boxes_from_prob(prob, **kwargs)
    reference = boxes_from_prob_reference(prob, **kwargs)
    # Two rectangles of equal area may legitimately tip either way (pixel blobs tie often:
    # 7x16 axis-aligned against 6.55x17.09 rotated, both 112 px^2). The other rectangle
    # changes the score too, so a tie in one region and a score on box_thresh in another
    # can meet in one map; allow two such boxes per map.
    assert abs(len(ours) - len(reference)) <= 2
    matched = match([b.points for b in ours], [b.points for b in reference], 0.8)
    assert len(matched) >= max(len(ours), len(reference)) - 2


def test_boxes_do_not_share_memory_between_calls():
    prob = np.zeros((64, 64), np.float32)
    prob[10:30, 10:50] = 0.9
    first = edgedb.boxes_from_prob(prob)
    kept = first[0].points.copy()
    prob[:] = 0
    prob[40:60, 5:60] = 0.8
    edgedb.boxes_from_prob(prob)
    np.testing.assert_array_equal(first[0].points, kept)
