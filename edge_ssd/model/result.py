"""What the pipeline hands to sinks (stdout, file, MQTT): one processed frame."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .box import Detections


@dataclass
class FrameResult:
    source: str  # source name from the config (e.g. "front-door"), or the input path/URL
    frame: int  # frame index within the source, from 0
    ts: float  # capture time, unix seconds
    width: int  # original frame size in pixels
    height: int
    detections: Detections  # boxes normalised 0..1, corner form
    labels: list[str]  # index = class_id
    model: str = ""  # model name (bundle or ONNX file stem)
    inference_ms: float = 0.0
    latency_ms: float = 0.0  # capture to result
    image: np.ndarray | None = field(default=None, repr=False)  # the BGR frame, only when a sink wants it
    path: str | None = None  # image sources: the file the frame came from

    def objects(self) -> list[dict]:
        """Detections as plain dicts: label, class_id, score, box (normalised), box_px (pixels, clipped)."""
        px = self.detections.scaled(self.width, self.height)
        out = []
        for i in range(len(self.detections)):
            cid = int(self.detections.class_ids[i])
            b = np.clip(self.detections.boxes[i], 0.0, 1.0)
            out.append(
                {
                    "label": self.labels[cid] if 0 <= cid < len(self.labels) else str(cid),
                    "class_id": cid,
                    "score": round(float(self.detections.scores[i]), 4),
                    "box": [round(float(v), 5) for v in b],
                    "box_px": [round(float(v), 1) for v in px[i]],
                }
            )
        return out
