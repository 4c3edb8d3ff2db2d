"""The detection pipeline: sources -> preprocess -> invoke -> decode/NMS -> sinks, each stage on its own thread,
joined by small bounded queues.

::

    from edge_ssd.runtime import Pipeline, SourceConfig, load_detector

    det = load_detector("model.bundle")
    p = Pipeline(det, [SourceConfig("rtsp://cam/stream", name="front", score_threshold=0.6, max_fps=5),
                       SourceConfig("0", name="desk", labels=["person"])],
                 sinks=[my_sink])        # objects with handle(result: FrameResult) and optional close()
    p.start()
    ...
    p.stats()                            # PipelineStats: counters, latencies, per-source status
    p.last_progress                      # monotonic time the pipeline last proved it is not stuck
    p.stop()                             # drain, join threads, close sources and sinks

Modes:

* live (default, ``process_all=False``): the sources keep only their newest frame, every stage has one slot,
  and a preprocessed frame still waiting for the interpreter is replaced by a newer one (``dropped["queue"]``),
  so the latency of a published frame stays close to its own processing time. The preprocessing of a frame
  starts when the interpreter asks for it (it is the newest then), so live throughput gives up the preprocess
  time (about 2% with a 300x300 int8 model here) for that latency. ``max_fps`` per source skips frames
  (``dropped["rate"]``).
* ``process_all=True`` (files, folders, tests, ``edge-ssd detect``): nothing is dropped, every frame of every
  source is processed, in order per source; ``run_until_done()`` returns when all sources have ended.

A sink that raises is logged and counted (``sink_errors``), never fatal. A frame that fails to preprocess
or infer is counted (``dropped["error"]``) and skipped. Input tensors come from a pool of preallocated
buffers; nothing per frame is allocated that can be reused.

``last_progress`` is the oldest of the stage threads' heartbeats: every stage beats when it finishes an item
or wakes up idle, so a camera that is down does not stop it, but a stuck interpreter or a sink that blocks
does (the daemon's watchdog pings only while it advances).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..capture.base import Frame, Source
from ..errors import UserError
from ..model.box import Detections
from ..model.result import FrameResult
from .stats import RateMeter, Rolling, Summary

log = logging.getLogger(__name__)

_END = object()  # end-of-stream marker flowing through the queues
_TICK = 0.25  # seconds: how often idle threads wake up to check for stop and beat their heartbeat


@dataclass
class SourceConfig:
    """One input of the pipeline. ``source``: a :class:`Source` or a spec string for ``open_source``
    (``options`` are passed to it). ``score_threshold`` overrides the model's default; ``labels`` keeps only
    those labels; ``max_fps`` caps the processed rate of this source (live mode)."""

    source: Source | str
    name: str | None = None
    score_threshold: float | None = None
    labels: Sequence[str] | None = None
    max_fps: float | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SourceStats:
    """One source in :class:`PipelineStats`: the capture layer's state and the pipeline's counts."""

    name: str
    kind: str
    status: str  # connecting, ok, reconnecting, ended, failed
    frames: int  # captured
    dropped: dict[str, int]  # by the capture layer (stale, corrupt ...)
    errors: int
    reconnects: int
    error: str | None
    frames_in: int  # accepted into the pipeline
    processed: int  # through the sinks

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PipelineStats:
    """What :meth:`Pipeline.stats` returns: counters, stage latencies (ms), rates and the sources."""

    frames_in: int
    processed: int
    dropped: dict[str, int]  # the pipeline's and the sources' drops, by reason
    sink_errors: dict[str, int]  # by sink name
    preprocess_ms: Summary
    inference_ms: Summary
    postprocess_ms: Summary
    latency_ms: Summary  # capture to result
    fps: float  # over the last few seconds
    fps_overall: float
    uptime_s: float
    last_progress: float
    sources: dict[str, SourceStats]
    backend: str
    model: str

    @property
    def dropped_total(self) -> int:
        return int(sum(self.dropped.values()))

    def to_json(self) -> dict:
        d = asdict(self)
        d["dropped_total"] = self.dropped_total
        return d


@dataclass
class _Item:
    idx: int  # source index in the pipeline
    frame: Frame
    tensor: np.ndarray | None = None
    raw: dict | None = None
    t_pre: float = 0.0
    t_infer: float = 0.0
    size: tuple[int, int] = (0, 0)  # (height, width) of the frame; its pixels are let go after preprocessing


class _Src:
    def __init__(self, cfg: SourceConfig, source: Source, labels: list[str]):
        self.cfg = cfg
        self.source = source
        self.name = cfg.name or source.name
        self.min_interval = 1.0 / cfg.max_fps if cfg.max_fps else 0.0
        self.last_accept = -1e18
        self.frames_in = 0
        self.processed = 0
        self.done = False
        self.keep: np.ndarray | None = None
        if cfg.labels:
            unknown = [lab for lab in cfg.labels if lab not in labels]
            if unknown:
                raise UserError(f"source {self.name}: unknown label(s) {', '.join(unknown)}; the model knows "
                                f"{', '.join(labels[1:] if labels and labels[0].upper() == 'BACKGROUND' else labels)}")
            self.keep = np.array([lab in cfg.labels for lab in labels], dtype=bool)


class Pipeline:
    """See the module docstring. ``sinks``: objects with ``handle(result)`` (called from one sink thread, in
    order) and optional ``close()``; a sink with ``wants_image = True`` gets the BGR frame in
    ``result.image`` (or pass ``keep_image=True``)."""

    def __init__(self, detector, sources: Iterable[SourceConfig | Source | str], sinks: Iterable = (), *,
                 process_all: bool = False, queue_size: int | None = None, keep_image: bool = False):
        self.detector = detector
        self.sinks = list(sinks)
        self.process_all = process_all
        self.keep_image = keep_image or any(getattr(s, "wants_image", False) for s in self.sinks)
        self._srcs: list[_Src] = []
        for s in sources:
            cfg = s if isinstance(s, SourceConfig) else SourceConfig(s)
            src = cfg.source
            if isinstance(src, str):
                from ..capture.factory import open_source

                opts = dict(cfg.options)
                # a live pipeline treats files like cameras (latest frame, paced at the file's FPS);
                # process-all reads every frame in order, as fast as the detector goes
                opts.setdefault("latest", not process_all)
                src = open_source(src, name=cfg.name, **opts)
            elif process_all and not src._opened:
                src.latest = False
            self._srcs.append(_Src(cfg, src, detector.labels))
        if not self._srcs:
            raise UserError("no sources configured; give at least one camera, stream, file or folder")
        names = [s.name for s in self._srcs]
        if len(set(names)) != len(names):
            raise UserError(f"source names must be unique, got {names}; set a name per source")
        # live: one slot per stage, so a frame never waits behind older ones (latency ~ its own processing);
        # process-all: two, to keep every stage busy
        qs = max(1, int(queue_size if queue_size is not None else (2 if process_all else 1)))
        self._q_pre: queue.Queue = queue.Queue(qs if process_all else max(qs, len(self._srcs)))
        self._q_infer: queue.Queue = queue.Queue(qs)
        self._q_post: queue.Queue = queue.Queue(qs)
        self._q_sink: queue.Queue = queue.Queue(qs * 2)
        self._pool: queue.Queue = queue.Queue()
        for _ in range(qs + 2):  # enough for every slot between preprocess and invoke, plus one in each stage
            self._pool.put(detector.new_input_buffer())
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()  # stop reading sources
        self._abort = threading.Event()  # discard queued work
        self._done = threading.Event()  # the sink stage has seen the end marker
        self._infer_ready = threading.Event()  # live mode: the interpreter waits for its next frame
        self._readers_left = len(self._srcs)
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._beats: dict[str, float] = {}
        # counters
        self.dropped: Counter = Counter()
        self.sink_errors: Counter = Counter()
        self.processed = 0
        self.t_pre = Rolling()
        self.t_infer = Rolling()
        self.t_post = Rolling()
        self.t_latency = Rolling()
        self.rate = RateMeter()
        self.started_at = 0.0
        self.last_result = 0.0

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> Pipeline:
        if self._started:
            return self
        self._started = True
        self.started_at = time.monotonic()
        opened = []
        try:
            for s in self._srcs:
                s.source.open()
                opened.append(s)
        except BaseException:
            for s in opened:
                s.source.close()
            raise
        stages: list[tuple[str, Callable[[], None]]] = [
            ("preprocess", self._run_pre), ("invoke", self._run_infer), ("postprocess", self._run_post),
            ("sinks", self._run_sinks)]
        for i, s in enumerate(self._srcs):
            stages.append((f"read-{s.name}", functools.partial(self._run_reader, i)))
        now = time.monotonic()
        for name, fn in stages:
            self._beats[name] = now
            t = threading.Thread(target=self._guard, args=(name, fn), name=f"pipeline-{name}", daemon=True)
            self._threads.append(t)
        for t in self._threads:
            t.start()
        log.info("pipeline started: %d source(s), %d sink(s), %s", len(self._srcs), len(self.sinks),
                 "process all frames" if self.process_all else "latest frames")
        return self

    def stop(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop reading, process what is queued (``drain``) or discard it, join all threads, close sources
        and sinks. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if not drain:
            self._abort.set()
        for s in self._srcs:
            try:
                s.source.close()
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                log.warning("closing source %s: %s", s.name, e)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._threads):
            self._abort.set()
            for t in self._threads:
                t.join(2.0)
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            log.warning("pipeline threads still running after stop: %s", ", ".join(alive))
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close:
                try:
                    close()
                except Exception as e:  # noqa: BLE001 - a sink that fails to close is counted, never fatal
                    self._count(self.sink_errors, type(sink).__name__)
                    log.warning("closing sink %s: %s", type(sink).__name__, e)
        log.info("pipeline stopped: %d frames processed", self.processed)

    def run_until_done(self, timeout: float | None = None) -> PipelineStats:
        """Start, wait until every source has ended and every frame went through the sinks, stop; returns
        ``stats()``. For finite sources (files, folders). ``timeout``: stop anyway after that many seconds."""
        self.start()
        self._done.wait(timeout)
        self.stop(drain=True)
        return self.stats()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until all sources ended and everything was processed; True if so."""
        return self._done.wait(timeout)

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._started and not self._closed and not self._done.is_set()

    @property
    def last_progress(self) -> float:
        """Monotonic time up to which every stage thread is known to be alive and not stuck."""
        if not self._beats:
            return 0.0
        return min(self._beats.values())

    # -- stats --------------------------------------------------------------------------------------------
    def _count(self, counter: Counter, key: str) -> int:
        """``counter[key] += 1`` under the lock (stage threads and readers count concurrently)."""
        with self._lock:
            counter[key] += 1
            return counter[key]

    def stats(self) -> PipelineStats:
        sources = {}
        with self._lock:
            dropped = Counter(self.dropped)
            sink_errors = dict(self.sink_errors)
            processed = self.processed
            counts = [(s.frames_in, s.processed) for s in self._srcs]
        for s, (frames_in, done) in zip(self._srcs, counts, strict=True):
            src = s.source
            src_dropped = dict(src.dropped)
            dropped.update(src_dropped)
            sources[s.name] = SourceStats(name=src.name, kind=src.kind, status=src.status, frames=src.frames,
                                          dropped=src_dropped, errors=src.errors, reconnects=src.reconnects,
                                          error=src.error, frames_in=frames_in, processed=done)
        elapsed = (time.monotonic() - self.started_at) if self.started_at else 0.0
        return PipelineStats(
            frames_in=sum(c[0] for c in counts), processed=processed, dropped=dict(dropped), sink_errors=sink_errors,
            preprocess_ms=self.t_pre.summary(), inference_ms=self.t_infer.summary(),
            postprocess_ms=self.t_post.summary(), latency_ms=self.t_latency.summary(),
            fps=round(self.rate.rate(), 2), fps_overall=round(processed / elapsed, 2) if elapsed > 0 else 0.0,
            uptime_s=round(elapsed, 1), last_progress=self.last_progress, sources=sources,
            backend=self.detector.backend_name, model=self.detector.name,
        )  # fmt: skip

    # -- stages -------------------------------------------------------------------------------------------
    def _guard(self, name: str, fn) -> None:
        try:
            fn()
        except Exception:
            log.exception("pipeline stage %s crashed", name)
            self._count(self.dropped, "crash")
            self._abort.set()
            self._stop.set()
            self._done.set()

    def _beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def _put(self, q: queue.Queue, item, stage: str) -> bool:
        """Blocking put that keeps beating and gives up on abort."""
        while True:
            try:
                q.put(item, timeout=_TICK)
                return True
            except queue.Full:
                self._beat(stage)
                if self._abort.is_set():
                    return False

    def _get(self, q: queue.Queue, stage: str):
        """Blocking get that keeps beating; None on timeout."""
        try:
            return q.get(timeout=_TICK)
        except queue.Empty:
            self._beat(stage)
            return None

    def _run_reader(self, i: int) -> None:
        s = self._srcs[i]
        stage = f"read-{s.name}"
        src = s.source
        try:
            while not self._stop.is_set():
                f = src.read(timeout=_TICK)
                self._beat(stage)
                if f is None:
                    if src.ended:
                        break
                    continue
                if s.min_interval and not self.process_all:
                    if f.mono - s.last_accept < s.min_interval * 0.999:
                        self._count(self.dropped, "rate")
                        continue
                    s.last_accept = f.mono
                with self._lock:
                    s.frames_in += 1
                item = _Item(i, f)
                if self.process_all:
                    if not self._put(self._q_pre, item, stage):
                        break
                else:
                    while True:  # latest semantics: make room by dropping the oldest queued frame
                        try:
                            self._q_pre.put_nowait(item)
                            break
                        except queue.Full:
                            try:
                                self._q_pre.get_nowait()
                                self._count(self.dropped, "queue")
                            except queue.Empty:
                                pass
        finally:
            s.done = True
            with self._lock:
                self._readers_left -= 1
                last = self._readers_left == 0
            if last:
                self._put(self._q_pre, _END, stage)
            self._beats.pop(stage, None)  # a finished reader no longer holds back last_progress

    def _run_pre(self) -> None:
        det = self.detector
        while True:
            if not self.process_all and not self._infer_ready.wait(_TICK):
                self._beat("preprocess")  # live: take a frame only when the interpreter wants one, so the
                continue  # frame it gets is the newest, not one that aged while the previous one ran
            item = self._get(self._q_pre, "preprocess")
            if item is None:
                continue
            if item is _END:
                self._put(self._q_infer, _END, "preprocess")
                return
            if self._abort.is_set():
                continue
            buf = self._pool.get()
            t0 = time.perf_counter()
            try:
                item.tensor = det.preprocess(item.frame.image, out=buf)
            except Exception as e:  # noqa: BLE001 - a frame that fails is counted and skipped, never fatal
                self._pool.put(buf)
                self._count(self.dropped, "error")
                log.warning("source %s frame %d: preprocess failed: %s", self._srcs[item.idx].name,
                            item.frame.index, e)
                continue
            item.t_pre = (time.perf_counter() - t0) * 1000
            item.size = item.frame.image.shape[:2]
            if not self.keep_image:  # nothing downstream needs the pixels: free the frame now, not at the sink
                item.frame = replace(item.frame, image=None)
            self.t_pre.add(item.t_pre)
            self._beat("preprocess")
            if not self.process_all:
                self._infer_ready.clear()
                self._put_latest(item)
            elif not self._put(self._q_infer, item, "preprocess"):
                self._pool.put(buf)

    def _put_latest(self, item: _Item) -> None:
        """Live mode: hand the freshest preprocessed frame to the interpreter; one still waiting there is
        stale now and is dropped (``dropped["queue"]``), its buffer back to the pool."""
        while True:
            try:
                self._q_infer.put_nowait(item)
                return
            except queue.Full:
                try:
                    old = self._q_infer.get_nowait()
                except queue.Empty:
                    continue
                self._pool.put(old.tensor)  # (only this thread puts into q_infer, the end marker last)
                self._count(self.dropped, "queue")

    def _run_infer(self) -> None:
        det = self.detector
        while True:
            if self._q_infer.empty():
                self._infer_ready.set()
            item = self._get(self._q_infer, "invoke")
            if item is None:
                continue
            if item is _END:
                self._put(self._q_post, _END, "invoke")
                return
            buf = item.tensor
            item.tensor = None
            if self._abort.is_set():
                self._pool.put(buf)
                continue
            t0 = time.perf_counter()
            try:
                item.raw = det.infer(buf)
            except Exception as e:  # noqa: BLE001 - a frame that fails is counted and skipped, never fatal
                self._count(self.dropped, "error")
                log.warning("source %s frame %d: inference failed: %s", self._srcs[item.idx].name,
                            item.frame.index, e)
                continue
            finally:
                self._pool.put(buf)
            item.t_infer = (time.perf_counter() - t0) * 1000
            self.t_infer.add(item.t_infer)
            self._beat("invoke")
            self._put(self._q_post, item, "invoke")

    def _run_post(self) -> None:
        det = self.detector
        labels = det.labels
        while True:
            item = self._get(self._q_post, "postprocess")
            if item is None:
                continue
            if item is _END:
                self._put(self._q_sink, _END, "postprocess")
                return
            if self._abort.is_set():
                continue
            s = self._srcs[item.idx]
            t0 = time.perf_counter()
            try:
                d = det.postprocess(item.raw, s.cfg.score_threshold)
                if s.keep is not None and len(d):
                    m = s.keep[np.clip(d.class_ids, 0, len(s.keep) - 1)]
                    d = Detections(d.boxes[m], d.scores[m], d.class_ids[m])
            except Exception as e:  # noqa: BLE001 - a frame that fails is counted and skipped, never fatal
                self._count(self.dropped, "error")
                log.warning("source %s frame %d: postprocess failed: %s", s.name, item.frame.index, e)
                continue
            t_post = (time.perf_counter() - t0) * 1000
            self.t_post.add(t_post)
            f = item.frame
            h, w = item.size
            now = time.monotonic()
            res = FrameResult(source=s.name, frame=f.index, ts=f.ts, width=w, height=h, detections=d,
                              labels=labels, model=det.name, inference_ms=item.t_infer,
                              latency_ms=(now - f.mono) * 1000 if f.mono else 0.0,
                              image=f.image if self.keep_image else None, path=f.path or None)
            self.t_latency.add(res.latency_ms)
            self._beat("postprocess")
            self._put(self._q_sink, res, "postprocess")

    def _run_sinks(self) -> None:
        while True:
            res = self._get(self._q_sink, "sinks")
            if res is None:
                continue
            if res is _END:
                self._done.set()
                return
            if self._abort.is_set():
                continue
            for sink in self.sinks:
                try:
                    sink.handle(res)
                except Exception as e:  # noqa: BLE001 - a sink that raises is counted, never fatal
                    name = getattr(sink, "name", type(sink).__name__)
                    n = self._count(self.sink_errors, name)
                    if n <= 3 or (n & (n - 1)) == 0:
                        log.warning("sink %s failed on %s frame %d (%d errors so far): %s", name, res.source,
                                    res.frame, n, e)
            with self._lock:
                self.processed += 1
                self._srcs_by_name(res.source).processed += 1
            self.last_result = time.monotonic()
            self.rate.tick(self.last_result)
            self._beat("sinks")

    def _srcs_by_name(self, name: str) -> _Src:
        for s in self._srcs:
            if s.name == name:
                return s
        raise KeyError(name)
