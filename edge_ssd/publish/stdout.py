"""JSON lines on stdout: one detection message (the same JSON as the MQTT ``detections`` topic) per frame."""

from __future__ import annotations

import sys
import threading

from .hub import Update
from .messages import dumps


class StdoutSink:
    """JSON lines on stdout (the default sink when no broker is configured)."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()
        self.written = 0

    def handle(self, u: Update) -> None:
        if u.detection is None:
            return
        line = dumps(u.detection)
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.written += 1

    def close(self) -> None:
        try:
            self.stream.flush()
        except (OSError, ValueError):
            pass
