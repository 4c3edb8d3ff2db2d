"""The wire format (schema 1, docs/mqtt.md): what every sink and topic carries, in one place.

``SCHEMA`` is the payload version every JSON message carries; ``slug`` turns labels and names into topic levels
and Home Assistant ids; ``detection_message`` is the per-frame payload (the MQTT ``detections`` topic and the
stdout / file sinks, one object per line); ``dumps`` / ``json_bytes`` are the one JSON encoding (compact,
UTF-8). Nothing here imports from ``daemon/`` or ``commands/``: those layers build on this one.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..model.result import FrameResult

SCHEMA = 1


def slug(label: str) -> str:
    """A label as an MQTT topic level / Home Assistant object id: lowercase, [a-z0-9_] only."""
    s = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return s or "unknown"


def detection_message(r: FrameResult, device: str = "") -> dict[str, Any]:
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


def dumps(msg: Any) -> str:
    """The one JSON encoding of every payload: compact separators, UTF-8 kept as is."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def json_bytes(msg: Any) -> bytes:
    return dumps(msg).encode()
