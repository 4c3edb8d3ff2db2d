"""The one sink the daemon's pipeline sees. Per frame it applies the source's object filters, gives the frame
its message id, updates the source's tracks (events, counts per label and per zone) and hands one
:class:`Update` to every output (stdout, file, MQTT), so all outputs carry the same message and id.

``tick()`` (the daemon's main loop) ends tracks of sources that deliver no frames; ``close()`` (pipeline stop,
reload) ends every live track, so each ``new`` event gets its ``end``, but leaves the retained counts alone:
after a restart they are replaced only by real values (counts appear once a source has processed
``confirm_frames`` frames), so occupancy does not blink off and on at every restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..model.result import FrameResult
from ..runtime.stats import Rolling
from .identity import MessageIds
from .messages import detection_message, event_message
from .scene import Counts, SourceRules
from .tracker import Track, Tracker, TrackerSettings

log = logging.getLogger(__name__)


@dataclass
class Update:
    source: str
    result: FrameResult | None  # None: a change without a frame (tracks that ended by time, at stop)
    detection: dict[str, Any] | None  # the detection message of ``result``
    events: list[dict[str, Any]] = field(default_factory=list)
    counts: Counts | None = None  # None until the source has seen enough frames to know (no 0-blip at start)


class Output(Protocol):
    def handle(self, u: Update) -> None: ...

    def close(self) -> None: ...


class Hub:
    def __init__(self, device: str, ids: MessageIds, outputs: list, *, rules: dict[str, SourceRules] | None = None,
                 tracking: TrackerSettings | None = None):
        self.device = device
        self.ids = ids
        self.outputs = list(outputs)
        self.wants_image = any(getattr(o, "wants_image", False) for o in self.outputs)
        self.rules = rules or {}
        self.settings = tracking or TrackerSettings()
        self._trackers: dict[str, Tracker] = {}
        self._frames: dict[str, int] = {}
        self._lock = threading.Lock()
        self.e2e_ms = Rolling()  # capture -> handed to every output, per frame
        self.events = 0
        # optional callable(source, inference_s, e2e_s) per frame: the metrics histograms
        self.observer: Callable[[str, float, float], None] | None = None
        self.output_errors: Counter[str] = Counter()

    def _tracker(self, source: str) -> Tracker:
        t = self._trackers.get(source)
        if t is None:
            t = self._trackers[source] = Tracker(self.settings, self.ids.next)
        return t

    def handle(self, r: FrameResult) -> None:
        rules = self.rules.get(r.source) or SourceRules()
        with self._lock:
            r = rules.apply(r)
            msg = detection_message(r, self.device, self.ids.next())
            changes = self._tracker(r.source).update(rules.observations(msg["objects"]), r.ts, r.frame)
            self._frames[r.source] = self._frames.get(r.source, 0) + 1
            self._dispatch(Update(r.source, r, msg, self._events(r.source, changes, r.ts),
                                  self._counts(r.source, rules)))
        lat = max(0.0, time.time() - r.ts)
        self.e2e_ms.add(lat * 1000)
        if self.observer is not None:
            self.observer(r.source, r.inference_ms / 1000, lat)

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            for source, tr in list(self._trackers.items()):
                changes = tr.expire(now)
                if changes:
                    self._dispatch(Update(source, None, None, self._events(source, changes, now),
                                          self._counts(source, self.rules.get(source) or SourceRules())))

    def close(self) -> None:
        now = time.time()
        with self._lock:
            for source, tr in list(self._trackers.items()):
                changes = tr.end_all()
                if changes:  # counts stay as they are: the next start replaces them with real ones
                    self._dispatch(Update(source, None, None, self._events(source, changes, now)))
            for o in self.outputs:
                o.close()

    def _events(self, source: str, changes: list[tuple[str, Track]], ts: float) -> list[dict[str, Any]]:
        self.events += len(changes)
        return [event_message(kind, t, device=self.device, source=source, msg_id=self.ids.next(), ts=ts)
                for kind, t in changes]

    def _counts(self, source: str, rules: SourceRules) -> Counts | None:
        if self._frames.get(source, 0) < self.settings.confirm_frames:
            return None
        return rules.counts(self._tracker(source).in_view())

    def _dispatch(self, u: Update) -> None:
        for o in self.outputs:  # one failing output (a full disk for the file sink) never starves the others
            try:
                o.handle(u)
            except Exception as e:  # noqa: BLE001 - one output failing must not stop the others
                name = type(o).__name__
                self.output_errors[name] += 1
                n = self.output_errors[name]
                if n <= 3 or (n & (n - 1)) == 0:
                    log.warning("output %s failed on %s (%d errors so far): %s", name, u.source, n, e)
