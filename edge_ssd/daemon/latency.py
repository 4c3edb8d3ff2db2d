"""End-to-end latency of the daemon's path in live (latest-frame) mode: a camera-paced source, the pipeline,
the Hub (filters, ids, tracker, messages) and the durable publish step (JSON into a real on-disk spool), i.e.
capture to "published" as the daemon defines it. ``edge-ssd bench`` reports it next to the frame's own
processing time (preprocess + inference + decode/NMS)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..runtime.stats import Summary


def _camera(frame: np.ndarray, fps: float, name: str = "cam"):
    """A live source that delivers ``frame`` at ``fps`` like a camera (latest-frame mode, capture thread)."""
    from ..capture.base import Source

    class _Live(Source):
        kind = "memory"

        def _connect(self) -> None:
            pass

        def _grab(self) -> np.ndarray:
            return frame

    return _Live(name, latest=True, reconnect=False, fps=fps)


class _SpoolOutput:
    """The durable publish step of the MQTT sink without the network: the message JSON appended to a Spool."""

    def __init__(self, spool, topic: str):
        self.spool, self.topic = spool, topic

    def handle(self, u) -> None:
        from ..publish.messages import json_bytes

        if u.detection is not None:
            rid = self.spool.append(self.topic, json_bytes(u.detection))
            if rid is not None:
                self.spool.ack(rid)  # keep it small: the broker would ack it

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class E2ELatency:
    """Capture -> published in live mode, next to the frame's own processing time (all ms)."""

    camera_fps: float
    processed_fps: float
    e2e_ms: Summary  # capture -> in the spool (what the daemon calls published)
    pipeline_latency_ms: Summary  # capture -> decoded (before the Hub and the spool)
    processing_ms_p50: float  # preprocess + inference + postprocess, p50 of each
    dropped: dict[str, int]

    @property
    def ratio(self) -> float | None:
        """e2e p50 / processing p50 (the target: within 1.5)."""
        p50 = self.e2e_ms.p50
        return round(p50 / self.processing_ms_p50, 2) if p50 is not None and self.processing_ms_p50 else None

    def to_json(self) -> dict:
        return {**asdict(self), "e2e_p50_vs_processing": self.ratio}


def bench_e2e(det, frame: np.ndarray, fps: float = 30.0, seconds: float = 10.0) -> E2ELatency:
    """Run the live path for ``seconds`` (after 1 s of warm-up); p50/p95 of capture -> published and the
    p50 of the frame's own processing time (preprocess + inference + postprocess)."""
    from ..publish.hub import Hub
    from ..publish.identity import MessageIds
    from ..publish.spool import Spool
    from ..runtime.pipeline import Pipeline, SourceConfig

    with tempfile.TemporaryDirectory(prefix="edge-ssd-bench-") as tmp:
        spool = Spool(tmp, reserve_bytes=0)
        hub = Hub("bench", MessageIds(None), [_SpoolOutput(spool, "edge-ssd/bench/cam/detections")])
        p = Pipeline(det, [SourceConfig(_camera(frame, fps))], [hub])
        p.start()
        time.sleep(1.0)  # warm-up: the percentiles below are over the last 1000 frames, mostly after it
        n0 = p.processed
        time.sleep(seconds)
        st = p.stats()
        e2e = hub.e2e_ms.summary()
        p.stop()
        spool.close()
    parts = (st.preprocess_ms.p50, st.inference_ms.p50, st.postprocess_ms.p50)
    known = [v for v in parts if v is not None]
    proc = round(sum(known), 2) if len(known) == len(parts) else 0.0
    return E2ELatency(camera_fps=fps, processed_fps=round((st.processed - n0) / seconds, 1), e2e_ms=e2e,
                      pipeline_latency_ms=st.latency_ms, processing_ms_p50=proc, dropped=st.dropped)


def format_e2e(e: dict) -> str:
    """One line for ``edge-ssd bench`` (``e``: :meth:`E2ELatency.to_json` plus model and backend)."""
    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    return (f"end-to-end latency, live mode ({e['backend']}, camera {e['camera_fps']:g} fps, processed "
            f"{e['processed_fps']} fps): capture -> published p50 {f(e['e2e_ms']['p50'])} ms, p95 "
            f"{f(e['e2e_ms']['p95'])} ms; the frame's own processing p50 {f(e['processing_ms_p50'])} ms "
            f"(ratio {f(e['e2e_p50_vs_processing'], 2)}, target <= 1.5)")
