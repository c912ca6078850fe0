"""Pictures of detections: polygons and scores drawn on the image."""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from edgedb.boxes import TextBox


def draw_boxes(image: np.ndarray, boxes: Sequence[TextBox], *, color=(0, 200, 0), show_scores: bool = True) -> np.ndarray:
    """A copy of a BGR image with each box's polygon drawn, and its score in small type
    on a translucent tag just above the box's top-left corner (the text stays readable)."""
    canvas = image.copy()
    thickness = max(1, round(min(image.shape[:2]) / 500))
    scale = max(0.3, min(image.shape[:2]) / 2400)
    for box in boxes:
        points = np.round(box.points).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [points], True, color, thickness, cv2.LINE_AA)
    if show_scores:
        tags = canvas.copy()
        for box in boxes:
            x, y = int(box.points[:, 0].min()), int(box.points[:, 1].min())
            label = f"{box.score:.2f}"
            (tw, th), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            y = max(y - 1, th + 2)
            cv2.rectangle(tags, (x, y - th - 2), (x + tw + 2, y + 1), color, -1)
            cv2.putText(tags, label, (x + 1, y - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
        canvas = cv2.addWeighted(tags, 0.6, canvas, 0.4, 0)
    return canvas
