"""Reference box formation: the algorithm of :func:`edgedb.boxes_from_prob` written
with OpenCV and pyclipper, one region at a time."""

from __future__ import annotations

from typing import Optional, Tuple

import cv2
import numpy as np
import pyclipper

from edgedb.boxes import TextBox


SNAP = 1e-3  # pixels: vertices closer than this to a whole pixel are on it


def _snap(points: np.ndarray) -> np.ndarray:
    """Removes round-off before truncation to whole pixels (258.99999 is 259)."""
    whole = np.round(points)
    return np.where(np.abs(points - whole) < SNAP, whole, points)


def order_quad(points: np.ndarray) -> np.ndarray:
    """Orders four corners top-left, top-right, bottom-right, bottom-left (y points down)."""
    pts = sorted((tuple(p) for p in np.asarray(points, dtype=np.float32)), key=lambda p: p[0])
    tl, bl = (pts[0], pts[1]) if pts[1][1] > pts[0][1] else (pts[1], pts[0])
    tr, br = (pts[2], pts[3]) if pts[3][1] > pts[2][1] else (pts[3], pts[2])
    return np.array([tl, tr, br, bl], dtype=np.float32)


def _min_rect(points: np.ndarray) -> Tuple[np.ndarray, float]:
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    return order_quad(cv2.boxPoints(rect)), float(min(rect[1]))


def _mean_inside(prob: np.ndarray, polygon: np.ndarray) -> float:
    """Mean of prob over the pixels cv2.fillPoly covers, inside the polygon's bounding box."""
    h, w = prob.shape
    poly = polygon.astype(np.float64)
    x0 = int(np.clip(np.floor(poly[:, 0].min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(poly[:, 0].max()), 0, w - 1))
    y0 = int(np.clip(np.floor(poly[:, 1].min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(poly[:, 1].max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    local = (_snap(poly) - [x0, y0]).astype(np.int32)  # truncation toward zero, as an int cast
    cv2.fillPoly(mask, [local.reshape(-1, 1, 2)], 1)
    return float(cv2.mean(prob[y0 : y1 + 1, x0 : x1 + 1], mask)[0])


def _unclip(polygon: np.ndarray, ratio: float) -> list:
    poly = polygon.astype(np.float64)
    area = abs(cv2.contourArea(poly.astype(np.float32)))
    perimeter = cv2.arcLength(poly.astype(np.float32), True)
    if perimeter <= 0:
        return []
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([(int(x), int(y)) for x, y in _snap(poly)], pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    return offset.Execute(area * ratio / perimeter)


def boxes_from_prob_reference(
    prob: np.ndarray,
    *,
    thresh: float = 0.3,
    box_thresh: float = 0.6,
    unclip_ratio: float = 1.5,
    max_candidates: int = 1000,
    min_size: float = 3,
    score_mode: str = "fast",
    box_type: str = "quad",
    use_dilation: bool = False,
    dest_size: Optional[Tuple[int, int]] = None,
) -> list[TextBox]:
    """Same contract as :func:`edgedb.boxes_from_prob` (without its input checks)."""
    prob = prob.astype(np.float32) / np.float32(255) if prob.dtype == np.uint8 else prob.astype(np.float32)
    h, w = prob.shape
    dest_h, dest_w = dest_size or (h, w)
    mask = (prob > thresh).astype(np.uint8)
    if use_dilation:
        mask = cv2.dilate(mask, np.ones((2, 2), np.uint8))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    # Regions in raster order of their first pixel.
    ids, first = np.unique(labels.ravel(), return_index=True)
    order = [int(i) for i in ids[np.argsort(first)] if i != 0]  # label 0 is the background

    boxes = []
    for label in order[:max_candidates]:
        x, y, bw, bh = stats[label, :4]
        region = (labels[y : y + bh, x : x + bw] == label).astype(np.uint8)
        ys, xs = np.nonzero(region)
        pixels = np.stack([xs + x, ys + y], axis=1)
        kernel, short_side = _min_rect(pixels)
        if short_side < min_size:
            continue
        contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        contour = contours[0].reshape(-1, 2) + [x, y]
        if box_type == "quad":
            shape = kernel
        else:
            epsilon = 0.002 * cv2.arcLength(contour.reshape(-1, 1, 2).astype(np.float32), True)
            shape = cv2.approxPolyDP(contour.reshape(-1, 1, 2).astype(np.int32), epsilon, True).reshape(-1, 2)
            if len(shape) < 4:
                continue
        score = _mean_inside(prob, shape if score_mode == "fast" else contour)
        if score < box_thresh:
            continue
        grown = _unclip(shape, unclip_ratio)
        if not grown or (box_type == "poly" and len(grown) != 1):
            continue
        outer, outer_short = _min_rect(np.concatenate([np.asarray(g) for g in grown]))
        if outer_short < min_size + 2:
            continue
        points = (outer if box_type == "quad" else np.asarray(grown[0])).astype(np.float64)
        points[:, 0] = np.clip(np.round(points[:, 0] * dest_w / w), 0, dest_w)
        points[:, 1] = np.clip(np.round(points[:, 1] * dest_h / h), 0, dest_h)
        boxes.append(TextBox(points.astype(np.float32), score))
    return boxes
