"""Health: the systemd watchdog policy and the stats / status messages."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from .. import __version__
from ..publish.messages import SCHEMA
from ..redact import mask

if TYPE_CHECKING:
    from ..runtime.pipeline import PipelineStats


def rss_bytes() -> int:
    """Resident set size of this process (from /proc; no psutil on the device)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Watchdog:
    """Decides when to send ``WATCHDOG=1``: every ``interval/4`` seconds, but only while the pipeline proves
    progress (its ``last_progress`` heartbeat, the oldest of its stage threads' beats, is younger than half the
    watchdog interval). A stuck interpreter, sink or capture stage stops the pings and systemd restarts us."""

    def __init__(self, interval: float | None):
        self.interval = interval
        self.last_ping = 0.0
        self.pings = 0
        self.withheld = 0

    def due(self, last_progress: float, now: float | None = None) -> bool:
        if not self.interval:
            return False
        now = time.monotonic() if now is None else now
        if now - self.last_ping < self.interval / 4:
            return False
        if now - last_progress > self.interval / 2:
            self.withheld += 1
            return False
        self.last_ping = now
        self.pings += 1
        return True


def source_status(name: str, pstats: PipelineStats | None, fps: float | None, inference_ms: float | None) -> dict:
    s = pstats.sources.get(name) if pstats is not None else None
    return {"schema": SCHEMA, "state": s.status if s else "unknown", "fps": fps,
            "inference_ms": None if inference_ms is None else round(inference_ms, 2),
            "frames": s.processed if s else 0, "errors": s.errors if s else 0,
            "reconnects": s.reconnects if s else 0, "error": mask(s.error) if s and s.error else None}


def starting_status(name: str) -> dict:
    """The status of a source before its first frame: the same fields, nothing measured yet."""
    return {**source_status(name, None, None, None), "state": "starting"}


def stats_message(device: str, pstats: PipelineStats, spool: dict | None, mqtt: dict | None, started: float,
                  source_fps: dict[str, float]) -> dict:
    return {
        "schema": SCHEMA,
        "device": device,
        "ts": round(time.time(), 3),
        "version": __version__,
        "uptime_s": round(time.monotonic() - started, 1),
        "model": pstats.model,
        "backend": pstats.backend,
        "fps": pstats.fps,
        "processed": pstats.processed,
        "dropped": pstats.dropped,
        "inference_ms": pstats.inference_ms.mean,
        "inference_ms_p95": pstats.inference_ms.p95,
        "latency_ms": pstats.latency_ms.mean,
        "sources": {n: {"status": s.status, "fps": source_fps.get(n, 0.0), "processed": s.processed}
                    for n, s in pstats.sources.items()},
        "spool": spool or {},
        "mqtt": mqtt or {},
        "rss_mb": round(rss_bytes() / 2**20, 1),
    }
