"""Drawing detections on frames: boxes, labels and scores, one stable colour per class."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

from ..model.box import Detections


def class_color(class_id: int) -> tuple[int, int, int]:
    """A distinct, stable BGR colour per class id (golden-ratio hue steps)."""
    h = (int(class_id) * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def draw_detections(image: np.ndarray, detections: Detections, labels: list[str] | None = None,
                    copy: bool = True, thickness: int | None = None) -> np.ndarray:
    """``image`` (BGR) with each detection drawn: its box, and ``label score`` on a filled tag."""
    out = image.copy() if copy else image
    h, w = out.shape[:2]
    if not len(detections):
        return out
    t = thickness or max(1, round(min(h, w) / 300))
    font_scale = max(0.4, min(h, w) / 900)
    px = detections.scaled(w, h)
    for i in range(len(detections)):
        cid = int(detections.class_ids[i])
        color = class_color(cid)
        x1, y1, x2, y2 = (int(round(v)) for v in px[i])
        cv2.rectangle(out, (x1, y1), (x2, y2), color, t, cv2.LINE_8)  # axis-aligned: no AA blur
        name = labels[cid] if labels and 0 <= cid < len(labels) else str(cid)
        text = f"{name} {float(detections.scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        ty = y1 - 2 if y1 - th - base - 2 >= 0 else y1 + th + base + 2
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + base - 2), color, -1)
        lum = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
        cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale,
                    (0, 0, 0) if lum > 140 else (255, 255, 255), 1, cv2.LINE_AA)
    return out
