"""End-to-end latency of the daemon's path in live (latest-frame) mode: a camera-paced source, the pipeline,
the Hub (filters, ids, tracker, messages) and the durable publish step (JSON into a real on-disk spool), i.e.
capture to "published" as the daemon defines it. ``edge-ssd bench`` reports it next to the frame's own
processing time (preprocess + inference + decode/NMS)."""

from __future__ import annotations

import tempfile
import time

import numpy as np


class _Camera:
    """A live source that delivers ``frame`` at ``fps`` like a camera (latest-frame mode, capture thread)."""

    def __new__(cls, frame: np.ndarray, fps: float, name: str = "cam"):
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


def bench_e2e(det, frame: np.ndarray, fps: float = 30.0, seconds: float = 10.0) -> dict:
    """Run the live path for ``seconds`` (after 1 s of warm-up); p50/p95 of capture -> published and the
    p50 of the frame's own processing time (preprocess + inference + postprocess)."""
    from ..publish.hub import Hub
    from ..publish.identity import MessageIds
    from ..publish.spool import Spool
    from ..runtime.pipeline import Pipeline, SourceConfig
    from ..runtime.stats import summarize_ms

    with tempfile.TemporaryDirectory(prefix="edge-ssd-bench-") as tmp:
        spool = Spool(tmp, reserve_bytes=0)
        hub = Hub("bench", MessageIds(None), [_SpoolOutput(spool, "edge-ssd/bench/cam/detections")])
        p = Pipeline(det, [SourceConfig(_Camera(frame, fps))], [hub])
        p.start()
        time.sleep(1.0)  # warm-up: the percentiles below are over the last 1000 frames, mostly after it
        n0 = p.processed
        time.sleep(seconds)
        st = p.stats()
        e2e = hub.e2e_ms.values()
        p.stop()
        spool.close()
    proc = st["preprocess_ms"]["p50"] + st["inference_ms"]["p50"] + st["postprocess_ms"]["p50"]
    out = {"camera_fps": fps, "processed_fps": round((st["processed"] - n0) / seconds, 1),
           "e2e_ms": summarize_ms(e2e, 2), "processing_ms_p50": round(proc, 2),
           "pipeline_latency_ms": st["latency_ms"], "dropped": st["dropped"]}
    out["e2e_p50_vs_processing"] = round(out["e2e_ms"]["p50"] / proc, 2) if proc else None
    return out
