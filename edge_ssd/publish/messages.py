"""The wire format (schema 1, docs/mqtt.md): what every sink and topic carries, in one place.

``SCHEMA`` is the payload version every JSON message carries; ``slug`` turns labels and names into topic levels
and Home Assistant ids; ``detection_message`` is the per-frame payload (the MQTT ``detections`` topic and the
stdout / file sinks, one object per line); ``event_message`` the ``events`` topic's (new / update / end of a
tracked object); ``dumps`` / ``json_bytes`` are the one JSON encoding (compact,
UTF-8). Nothing here imports from ``daemon/`` or ``commands/``: those layers build on this one.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from ..model.result import FrameResult

if TYPE_CHECKING:
    from .tracker import Track

SCHEMA = 1


def slug(label: str) -> str:
    """A label as an MQTT topic level / Home Assistant object id: lowercase, [a-z0-9_] only."""
    s = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return s or "unknown"


def detection_message(r: FrameResult, device: str, msg_id: str) -> dict[str, Any]:
    """The schema-1 detection payload (docs/mqtt.md); ``msg_id`` from :class:`~.identity.MessageIds`."""
    return {
        "schema": SCHEMA,
        "id": msg_id,
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


def event_message(kind: str, t: Track, *, device: str, source: str, msg_id: str, ts: float) -> dict[str, Any]:
    """The schema-1 event payload: ``kind`` is new / update / end; ``event_id`` names the tracked object,
    ``id`` this message; ``ts`` is the capture time of the frame that caused it (or the time it ended)."""
    return {
        "schema": SCHEMA,
        "id": msg_id,
        "type": kind,
        "event_id": t.id,
        "device": device,
        "source": source,
        "label": t.label,
        "score": round(float(t.score), 4),
        "top_score": round(float(t.top_score), 4),
        "box": [round(float(v), 5) for v in t.box],
        "zones": list(t.zones),
        "entered_zones": list(t.entered_zones),
        "frame": int(t.frame),
        "frames": int(t.hits),
        "start": round(float(t.start), 6),
        "end": round(float(t.last_seen), 6) if kind == "end" else None,
        "ts": round(float(ts), 6),
    }


def dumps(msg: Any) -> str:
    """The one JSON encoding of every payload: compact separators, UTF-8 kept as is."""
    return json.dumps(msg, separators=(",", ":"), ensure_ascii=False)


def json_bytes(msg: Any) -> bytes:
    return dumps(msg).encode()
