"""JSON-lines sinks: one detection message (the same JSON as the MQTT ``detections`` topic) per frame."""

from __future__ import annotations

import json
import sys
import threading

from ..model.result import FrameResult
from .topics import SCHEMA


def detection_message(r: FrameResult, device: str = "") -> dict:
    """The schema-1 detection payload (docs/mqtt.md)."""
    return {
        "schema": SCHEMA,
        "device": device,
        "source": r.source,
        "frame": int(r.frame),
        "ts": round(float(r.ts), 6),
        "width": int(r.width),
        "height": int(r.height),
        "model": r.model,
        "inference_ms": round(float(r.inference_ms), 3),
        "objects": r.objects(),
    }


def dumps(msg: dict) -> str:
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


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
