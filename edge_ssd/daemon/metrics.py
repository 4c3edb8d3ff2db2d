"""The optional Prometheus endpoint (``metrics: {port: 9108}``; prometheus_client, the ``metrics`` extra).

Counters and gauges are read at scrape time from the very stats message the daemon publishes on
``<prefix>/<device>/stats`` (one source of truth: the topic and the endpoint always agree); the two
histograms (inference time and end-to-end latency, capture to publish, per source) are observed per frame.
It listens on localhost unless ``metrics.host`` says otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ..errors import UserError

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

log = logging.getLogger("edge_ssd.metrics")

BUCKETS = (0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)


class _StatsCollector:
    def __init__(self, stats: Callable[[], dict[str, Any] | None]):
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        s = self.stats()
        if not s:
            return
        frames = CounterMetricFamily("edge_ssd_frames", "frames processed", labels=["source"])
        for name, src in (s.get("sources") or {}).items():
            frames.add_metric([name], src.get("processed") or 0)
        yield frames
        drops = CounterMetricFamily("edge_ssd_dropped_frames", "frames not processed, by reason", labels=["reason"])
        for reason, n in (s.get("dropped") or {}).items():
            drops.add_metric([reason], n)
        yield drops
        yield CounterMetricFamily("edge_ssd_events", "tracked-object events (new/update/end)",
                                  value=s.get("events") or 0)
        yield GaugeMetricFamily("edge_ssd_fps", "processed frames per second (last 5 s)", value=s.get("fps") or 0)
        yield GaugeMetricFamily("edge_ssd_rss_bytes", "resident memory", value=(s.get("rss_mb") or 0) * 2**20)
        yield GaugeMetricFamily("edge_ssd_uptime_seconds", "since the daemon started", value=s.get("uptime_s") or 0)
        yield from self._spool(s.get("spool") or {})
        yield from self._mqtt(s.get("mqtt") or {})

    @staticmethod
    def _spool(sp: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if not sp:
            return
        yield GaugeMetricFamily("edge_ssd_spool_queued", "messages waiting in the spool", value=sp.get("queued", 0))
        yield GaugeMetricFamily("edge_ssd_spool_bytes", "bytes in the spool", value=sp.get("bytes", 0))
        yield CounterMetricFamily("edge_ssd_spool_appended", "messages stored", value=sp.get("appended", 0))
        yield CounterMetricFamily("edge_ssd_spool_acked", "messages acknowledged by the broker",
                                  value=sp.get("acked", 0))
        drops = CounterMetricFamily("edge_ssd_spool_dropped", "messages the spool dropped, by reason",
                                    labels=["reason"])
        for key in ("limit", "age", "disk", "expired"):
            drops.add_metric([key], sp.get(f"dropped_{key}", 0))
        yield drops

    @staticmethod
    def _mqtt(m: dict[str, Any]) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if not m:
            return
        yield GaugeMetricFamily("edge_ssd_mqtt_connected", "1 while connected to the broker",
                                value=1 if m.get("connected") else 0)
        for key, doc in (("connects", "successful connections"), ("disconnects", "lost connections"),
                         ("sent", "durable messages handed to the broker"), ("acked", "durable messages acked")):
            yield CounterMetricFamily(f"edge_ssd_mqtt_{key}", doc, value=m.get(key, 0))


class Metrics:
    """``start()`` serves ``/metrics``; ``observe(source, inference_s, e2e_s)`` per frame; ``stop()``."""

    def __init__(self, port: int, host: str, stats: Callable[[], dict[str, Any] | None]):
        try:
            from prometheus_client import CollectorRegistry, Histogram
        except ImportError:
            raise UserError("metrics: prometheus_client is not installed; pip install 'edge-ssd[metrics]' "
                            "(or remove the metrics: section)") from None
        self.port, self.host = int(port), host
        self.registry = CollectorRegistry()
        self.inference = Histogram("edge_ssd_inference_seconds", "model invoke time per frame", ["source"],
                                   buckets=BUCKETS, registry=self.registry)
        self.e2e = Histogram("edge_ssd_e2e_latency_seconds", "capture to publish, per frame", ["source"],
                             buckets=BUCKETS, registry=self.registry)
        self.registry.register(_StatsCollector(stats))
        self._server: WSGIServer | None = None

    def start(self) -> Metrics:
        from prometheus_client import start_http_server

        try:
            self._server, _ = start_http_server(self.port, addr=self.host, registry=self.registry)
        except OSError as e:
            raise UserError(f"metrics: cannot listen on {self.host}:{self.port} ({e.strerror}); choose a free "
                            "metrics.port") from None
        log.info("metrics: Prometheus endpoint on http://%s:%d/metrics", self.host, self.port)
        return self

    def observe(self, source: str, inference_s: float, e2e_s: float) -> None:
        self.inference.labels(source).observe(inference_s)
        self.e2e.labels(source).observe(e2e_s)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
