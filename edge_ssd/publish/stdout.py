"""JSON-lines sinks: one detection message (the same JSON as the MQTT ``detections`` topic) per frame."""

from __future__ import annotations

import sys
import threading

from ..model.result import FrameResult
from .messages import detection_message, dumps


class StdoutSink:
    """JSON lines on stdout (the default sink when no broker is configured)."""

    def __init__(self, device: str = "", stream=None):
        self.device = device
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.written = 0

    def handle(self, result: FrameResult) -> None:
        line = dumps(detection_message(result, self.device))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.written += 1

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
