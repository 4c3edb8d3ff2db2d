"""``edge-ssd run``: the daemon. Config -> detector -> Pipeline(sources, sinks) -> MQTT / stdout / file.

systemd integration (``Type=notify``):
  - ``READY=1`` once the model is loaded AND the first frame went through the sinks (after ``READY_TIMEOUT``
    seconds without any frame it becomes ready anyway, with a STATUS saying so, so that a camera that is
    down does not turn into a restart loop: the capture layer keeps reconnecting);
  - ``WATCHDOG=1`` every WatchdogSec/4 while the pipeline's heartbeat advances (see :class:`Watchdog`);
  - ``STATUS=`` with FPS, frames, MQTT state and spool backlog every few seconds;
  - SIGTERM/SIGINT: stop reading, drain the pipeline, send the spool (up to ``flush_timeout``), publish
    ``offline``, exit 0. What cannot be sent stays in the spool for the next start;
  - SIGHUP: re-read and validate the config; a bad config is logged (``file:line: key: problem``) and the
    daemon keeps running with the old one; a good one restarts the pipeline and the publisher in-process
    (the detector is reused when the ``model`` section did not change).
  - ``rollout.enabled``: bundle roll-out commands over MQTT (edge_ssd/fleet/device.py); the swap to a new bundle,
    its first-frames check and the roll-back happen here, on the main loop.
When every source is finite (files, folders) and has ended, the daemon flushes and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from ..model.bundle import fingerprint
from ..publish.messages import json_bytes
from ..publish.topics import Topics
from ..runtime.memory import trim_heap
from .config import Config, ConfigError, LoadedConfig, load_config, source_rules, tracker_settings
from .health import Watchdog, source_status, starting_status, stats_message
from .sdnotify import Notifier, watchdog_interval

if TYPE_CHECKING:
    from ..fleet.device import Candidate, Rollout
    from ..publish.hub import Hub
    from ..publish.mqtt import MqttPublisher, MqttSink
    from ..publish.spool import Spool
    from ..runtime import Detector, Pipeline
    from .metrics import Metrics

log = logging.getLogger("edge_ssd.daemon")

READY_TIMEOUT = 60.0
STATUS_INTERVAL = 5.0
TICK = 0.1


@dataclass
class _Probation:
    """A new bundle on trial: kept after ``check_frames`` good frames, else ``previous`` comes back."""

    candidate: Candidate
    previous: Detector | None  # the Detector to go back to
    deadline: float


def _warn_unknown_labels(cfg: Config, labels: list[str]) -> None:
    """A filter or zone naming a label the model does not have never matches: say so once, at start."""
    known = set(labels)
    for s in cfg.sources:
        named = set(s.filters) | {lab for z in s.zones for lab in (z.labels or [])}
        unknown = sorted(named - known)
        if unknown:
            log.warning("source %s: filters/zones name label(s) the model does not know: %s (it knows %s)",
                        s.name, ", ".join(unknown), ", ".join(x for x in labels if x.upper() != "BACKGROUND"))


class Daemon:
    def __init__(self, config_path: str | Path, notifier: Notifier | None = None):
        self.config_path = Path(config_path)
        self.notifier = notifier or Notifier()
        self.watchdog = Watchdog(watchdog_interval())
        self._stop = threading.Event()
        self._reload = threading.Event()
        self.loaded: LoadedConfig | None = None
        self.detector: Detector | None = None
        self.pipeline: Pipeline | None = None
        self.spool: Spool | None = None
        self.publisher: MqttPublisher | None = None
        self.mqtt_sink: MqttSink | None = None
        self.hub: Hub | None = None
        self.metrics: Metrics | None = None  # the Prometheus endpoint (metrics: section), kept across reloads
        self.model_sha: str | None = None  # fingerprint of the loaded model (reload compares it)
        self.ready = False
        self.started = time.monotonic()
        self.rollout: Rollout | None = None
        self._probation: _Probation | None = None

    @property
    def _cfg(self) -> Config:
        """The running config (set by the first start)."""
        assert self.loaded is not None
        return self.loaded.config

    @property
    def _pipe(self) -> Pipeline:
        """The running pipeline (between a start and a stop)."""
        assert self.pipeline is not None
        return self.pipeline

    # -- components -----------------------------------------------------------------------------------------
    def _pipeline_sources(self, cfg: Config, labels: list[str]):
        from ..runtime import SourceConfig

        bg = {"BACKGROUND", "__BACKGROUND__"}
        out = []
        for s in cfg.sources:
            include = s.labels.include
            if include is None and s.labels.exclude:
                include = [x for x in labels if x.upper() not in bg]
            keep = None if include is None else [x for x in include if x not in s.labels.exclude]
            opts = {}
            if s.max_frame_age:
                opts["max_frame_age"] = s.max_frame_age
            if s.loop:
                opts["loop"] = True
            if s.realtime is not None:
                opts["realtime"] = s.realtime
            out.append(SourceConfig(s.url, name=s.name, score_threshold=s.score_threshold, labels=keep,
                                    max_fps=s.max_fps, options=opts))
        return out

    def _start(self, loaded: LoadedConfig, reuse_detector: bool = False) -> None:
        from ..capture import source_kind
        from ..publish.filesink import FileSink
        from ..publish.hub import Hub
        from ..publish.identity import MessageIds
        from ..publish.stdout import StdoutSink
        from ..runtime import Pipeline, load_detector

        cfg = loaded.config
        logging.getLogger().setLevel(cfg.log_level.upper())
        if not (reuse_detector and self.detector is not None):
            self.notifier.status(f"loading model {cfg.model.bundle}")
            bundle = self.rollout.bundle_for() if self.rollout else cfg.model.bundle
            self.model_sha = fingerprint(bundle)
            labels = cfg.model.labels if bundle == cfg.model.bundle else None  # a rolled-out bundle has its own
            self.detector = load_detector(bundle, backend=cfg.model.backend, threads=cfg.model.threads,
                                          labels=labels, edgetpu_device=cfg.model.edgetpu_device)
        det = self.detector
        assert det is not None
        outputs: list = []
        if cfg.sinks.file:
            f = cfg.sinks.file
            outputs.append(FileSink(f.path, max_bytes=f.max_bytes, backups=f.backups))
        if cfg.stdout_enabled:
            outputs.append(StdoutSink())
        if cfg.mqtt:
            outputs.append(self._start_mqtt(loaded, det))
        # the run counter lives beside the spool; a stdout/file-only run without a state directory gets a random run
        keep = cfg.mqtt or cfg.spool.dir or os.environ.get("STATE_DIRECTORY")
        ids = MessageIds(cfg.spool.resolved_dir() if keep else None)
        _warn_unknown_labels(cfg, det.labels)
        self.hub = Hub(cfg.device, ids, outputs, rules=source_rules(cfg),
                       tracking=tracker_settings(cfg))
        if self.metrics is not None:
            self.hub.observer = self.metrics.observe
        process_all = all(source_kind(s.url) in ("file", "images") and not s.loop for s in cfg.sources)
        self.pipeline = Pipeline(det, self._pipeline_sources(cfg, det.labels), [self.hub], process_all=process_all)
        self.pipeline.start()
        self.loaded = loaded
        log.info("publishing as run %s (message ids %s-<n>)", ids.run, ids.run)

    def _start_mqtt(self, loaded: LoadedConfig, det):
        from ..publish.homeassistant import DeviceDiscovery, labels_for_source
        from ..publish.mqtt import MqttPublisher, MqttSink
        from ..publish.spool import Spool

        cfg = loaded.config
        m = cfg.mqtt
        assert m is not None
        topics = Topics(m.topic_prefix, cfg.device)
        sp = cfg.spool
        spool = self.spool = Spool(sp.resolved_dir(), max_bytes=sp.max_bytes, max_age=sp.max_age, fsync=sp.fsync,
                                   reserve_bytes=sp.reserve_bytes)
        ha = cfg.homeassistant
        pub = self.publisher = MqttPublisher(
            m.host, m.port, topics=topics, spool=spool, client_id=cfg.client_id(), username=m.username,
            password=loaded.password, tls=m.tls, keepalive=m.keepalive, qos=m.qos, min_delay=m.reconnect_min_delay,
            max_delay=m.reconnect_max_delay, inflight=m.inflight,
            discovery_prefix=ha.discovery_prefix if ha.enabled else None, protocol=m.protocol,
            expiry={"detections": m.expiry.detections, "events": m.expiry.events})
        count_labels = {s.name: labels_for_source(cfg, i, det.labels) if (ha.enabled or s.labels.include) else []
                        for i, s in enumerate(cfg.sources)}
        if ha.enabled:
            pub.set_discovery(DeviceDiscovery.for_config(cfg, topics, det.labels, det.name))
        for s in cfg.sources:  # every field the status carries, null until measured (Home Assistant: unknown)
            pub.set_state(topics.status(s.name), json_bytes(starting_status(s.name)), retain=m.retain.status)
        if self.rollout is not None:
            pub.subscribe(topics.model_set, self.rollout.on_command("device"))
            pub.subscribe(topics.fleet_model_set, self.rollout.on_command("all"))
        sink = self.mqtt_sink = MqttSink(pub, count_labels=count_labels,
                                  zones={s.name: {z.name: z.labels for z in s.zones} for s in cfg.sources},
                                  retain_counts=m.retain.counts, retain_detections=m.retain.detections,
                                  detections=m.detections, events=m.events,
                                  snapshots={s.name for s in cfg.sources if s.snapshot})
        pub.start()
        return sink

    def _stop_components(self, flush_timeout: float) -> bool:
        drained = True
        if self.pipeline is not None:
            self.pipeline.stop(drain=True)
            self._publish_status()
        if self.publisher is not None:
            drained = self.publisher.stop(flush_timeout)
            if not drained and self.spool is not None:
                log.warning("stopping with %d messages still in the spool (%s); they are sent after the next start",
                            len(self.spool), self.spool.dir)
        if self.spool is not None:
            self.spool.close()
        self.pipeline = self.publisher = self.spool = self.mqtt_sink = self.hub = None
        return drained

    # -- periodic work --------------------------------------------------------------------------------------
    def _source_fps(self) -> dict[str, float]:
        if self.mqtt_sink is None:
            return {}
        return {n: self.mqtt_sink.fps(n) for n in self.mqtt_sink.rates}

    def _publish_status(self) -> None:
        pub, sink, cfg = self.publisher, self.mqtt_sink, self._cfg
        if pub is None or sink is None or self.pipeline is None or cfg.mqtt is None:
            return
        ps = self.pipeline.stats()
        for s in cfg.sources:
            st = source_status(s.name, ps, sink.fps(s.name), sink.last_inference_ms.get(s.name))
            if st["state"] == "ok":
                st["state"] = "streaming"
            pub.set_state(pub.topics.status(s.name), json_bytes(st), retain=cfg.mqtt.retain.status)

    def stats(self) -> dict | None:
        """The stats message (the stats topic and the metrics endpoint); None while (re)starting."""
        pipeline, hub = self.pipeline, self.hub
        if pipeline is None or hub is None or self.loaded is None:
            return None
        spool = self.spool.stats() if self.spool is not None else None
        mqtt = self.publisher.stats() if self.publisher is not None else None
        msg = stats_message(self.loaded.config.device, pipeline.stats(), spool, mqtt, self.started,
                            self._source_fps())
        e2e = hub.e2e_ms.summary()
        msg["latency_e2e_ms"] = {"p50": e2e.p50, "p95": e2e.p95}
        msg["events"] = hub.events
        return msg

    def _publish_stats(self) -> dict:
        msg = self.stats()
        assert msg is not None  # called while running
        mq = self._cfg.mqtt
        if self.publisher is not None and mq is not None:
            self.publisher.set_state(self.publisher.topics.stats, json_bytes(msg), retain=mq.retain.stats)
            self._publish_status()
        else:
            log.info("stats: %s fps, %s frames, dropped %s", msg["fps"], msg["processed"], msg["dropped"])
        return msg

    def _status_line(self) -> str:
        ps = self._pipe.stats()
        parts = [f"{ps.fps:.1f} fps", f"{ps.processed} frames"]
        if self.publisher is not None:
            parts.append("mqtt connected" if self.publisher.connected else "mqtt DISCONNECTED")
            parts.append(f"spool {len(self.publisher.spool)}")
        bad = [n for n, s in ps.sources.items() if s.status not in ("ok", "ended")]
        if bad:
            parts.append("waiting for " + ", ".join(bad))
        return ", ".join(parts)

    def _do_reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("reload: new config is invalid, keeping the running one: %s", "; ".join(e.problems))
            self.notifier.notify("READY=1", "STATUS=reload failed: " + e.problems[0])
            return
        log.info("reload: applying %s", self.config_path)
        if self.loaded is not None and new.config.metrics != self.loaded.config.metrics:
            log.warning("reload: the metrics section changed; it takes effect at the next restart")
        same_model = self.loaded is not None and new.config.model == self.loaded.config.model
        if same_model and fingerprint(new.config.model.bundle) != self.model_sha:
            log.info("reload: %s changed on disk (sha256 %s -> %s): loading the new model",
                     new.config.model.bundle, (self.model_sha or "?")[:12],
                     (fingerprint(new.config.model.bundle) or "unreadable")[:12])
            same_model = False
        self._stop_components(self.loaded.config.flush_timeout if self.loaded else 5.0)
        self._probation = None  # a bundle on trial is not committed: the next command delivery tries it again
        self._make_rollout(new.config)
        try:
            self._start(new, reuse_detector=same_model)
        except UserError as e:
            if self.loaded is None:
                raise
            log.error("reload: %s; keeping the previous config", e)
            self._start(self.loaded, reuse_detector=same_model)
        self.notifier.notify("READY=1", f"STATUS=reloaded: {self._status_line()}")

    # -- bundle roll-out -----------------------------------------------------------------------------------
    def _make_rollout(self, cfg: Config) -> None:
        from ..fleet.device import Rollout

        if self.rollout is not None:
            self.rollout.stop()
        r = cfg.rollout
        self.rollout = Rollout(r.resolved_dir(), r.public_key, cfg.model.bundle).start() if r.enabled else None

    def _publish_rollout_reports(self) -> None:
        if self.rollout is None:
            return
        for msg in self.rollout.take_reports():
            if self.publisher is not None:
                self.publisher.publish_durable(self.publisher.topics.model_state, json_bytes(msg), qos=1, retain=True)

    def _rollout_tick(self, now: float) -> None:
        assert self.rollout is not None
        self._publish_rollout_reports()
        if self._probation is not None:
            self._check_probation(now)
            return
        cand = self.rollout.take_candidate()
        if cand is None:
            return
        from ..runtime import load_detector

        m = self._cfg.model
        try:
            det = load_detector(cand.path, backend=m.backend, threads=m.threads, edgetpu_device=m.edgetpu_device)
        except UserError as e:
            self.rollout.failed(cand, f"cannot load bundle {cand.command.version}: {e}")
            return
        log.info("rollout: switching to bundle %s (%s)", cand.command.version, cand.path)
        self._probation = _Probation(cand, self.detector, now + self._cfg.rollout.check_timeout)
        self._swap_detector(det)

    def _swap_detector(self, det) -> None:
        loaded = self.loaded
        assert loaded is not None
        self._stop_components(loaded.config.flush_timeout)
        self.detector = det
        self._start(loaded, reuse_detector=True)

    def _check_probation(self, now: float) -> None:
        p, pb, r, rollout = self._pipe, self._probation, self._cfg.rollout, self.rollout
        assert pb is not None and rollout is not None
        errors = p.dropped.get("error", 0) + p.dropped.get("crash", 0)
        if errors == 0 and p.processed >= r.check_frames:
            self._probation = None
            rollout.activate(pb.candidate)
            return
        if errors:
            reason = f"{errors} frame(s) failed on the new bundle within its first {p.processed + errors}"
        elif now > pb.deadline:
            reason = f"only {p.processed} of {r.check_frames} frames processed within {r.check_timeout:g} s"
        else:
            return
        log.error("rollout: %s; rolling back", reason)
        self._probation = None
        self._swap_detector(pb.previous)
        rollout.rolled_back(pb.candidate, reason)

    # -- main ---------------------------------------------------------------------------------------------
    def _signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *a: self._stop.set())
        signal.signal(signal.SIGINT, lambda *a: self._stop.set())
        signal.signal(signal.SIGHUP, lambda *a: self._reload.set())

    def run(self) -> int:
        loaded = load_config(self.config_path)
        for w in loaded.warnings:
            log.warning("%s", w)
        self._signals()
        self._make_rollout(loaded.config)
        if loaded.config.metrics:
            from .metrics import Metrics

            mc = loaded.config.metrics
            self.metrics = Metrics(mc.port, mc.host, self.stats).start()
        log.info("edge-ssd daemon starting: device %s, %d source(s)%s", loaded.config.device,
                 len(loaded.config.sources),
                 f", mqtt {loaded.config.mqtt.host}:{loaded.config.mqtt.port}" if loaded.config.mqtt else "")
        self._start(loaded)
        cfg = loaded.config
        next_stats = time.monotonic() + min(cfg.stats_interval, 5.0)
        next_status = time.monotonic()
        t_start = time.monotonic()
        exit_reason = "signal"
        while not self._stop.wait(TICK):
            now = time.monotonic()
            cfg = self._cfg
            if self._reload.is_set():
                self._reload.clear()
                self._do_reload()
                continue
            if self.rollout is not None:
                self._rollout_tick(now)
            p = self._pipe
            if not self.ready and (p.processed >= 1 or now - t_start > READY_TIMEOUT):
                self.ready = True
                why = "" if p.processed else f" (no frame within {READY_TIMEOUT:.0f} s)"
                log.info("ready: model loaded, %d frame(s) processed%s", p.processed, why)
                trim_heap()  # hand start-up memory (model loading, imports) back to the kernel
                self.notifier.ready(f"running{why}: {self._status_line()}")
            if self.hub is not None:
                self.hub.tick()
            if self.watchdog.due(p.last_progress, now):
                self.notifier.watchdog()
            if now >= next_status:
                next_status = now + STATUS_INTERVAL
                self.notifier.status(self._status_line())
            if now >= next_stats:
                next_stats = now + cfg.stats_interval
                self._publish_stats()
            if p.wait(0):
                exit_reason = "all sources ended"
                break
        self._shutdown(exit_reason)
        return 0

    def _shutdown(self, exit_reason: str) -> None:
        """Drain the pipeline, send the last stats, flush the spool (up to flush_timeout), publish offline."""
        log.info("stopping (%s)", exit_reason)
        self.notifier.stopping()
        self.notifier.status(f"stopping ({exit_reason}), flushing")
        if self.pipeline is not None:
            self.pipeline.stop(drain=True)
            if self.publisher is not None:
                self._publish_stats()
        if self.rollout is not None:
            self.rollout.stop()
            self._publish_rollout_reports()
        drained = self._stop_components(self._cfg.flush_timeout)
        if self.metrics is not None:
            self.metrics.stop()
        log.info("stopped%s", "" if drained else " (spool not empty)")
        self.notifier.close()
