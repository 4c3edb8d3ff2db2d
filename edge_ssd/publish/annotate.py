"""The annotated-output sink of ``edge-ssd detect --save`` and ``edge-ssd demo``: frames with their detections
drawn, as images in a folder or one MJPG video."""

from __future__ import annotations

from pathlib import Path

import cv2

from ..model.result import FrameResult


class SaveSink:
    """Annotated images into a folder, or one annotated video (MJPG .avi) for video input."""

    wants_image = True

    def __init__(self, out_dir, video_name: str | None = None, fps: float = 25.0):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.video_name = video_name
        self.fps = fps
        self.writer: cv2.VideoWriter | None = None
        self.written = 0

    def handle(self, r: FrameResult) -> None:
        from ..runtime.draw import draw_detections

        assert r.image is not None, "the pipeline keeps the frame for a sink with wants_image"
        img = draw_detections(r.image, r.detections, r.labels, copy=False)
        if self.video_name:
            if self.writer is None:
                path = self.dir / self.video_name
                self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), self.fps,
                                              (r.width, r.height))
            self.writer.write(img)
        else:
            src = r.path
            name = f"{Path(src).stem}.jpg" if src else f"{_safe(r.source)}_{r.frame:06d}.jpg"
            cv2.imwrite(str(self.dir / name), img)
        self.written += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None


def _safe(s: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_") or "frame"
