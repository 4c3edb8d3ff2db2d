"""A small multi-object tracker: IoU association per label, for events and flicker-free counts.

Per source, every frame's detections are matched to the live tracks of the same label, greedily by IoU
(highest first, at least ``iou``). A track is *confirmed* after ``confirm_frames`` frames with a match: only
confirmed tracks produce events and count. It *ends* when it was not matched for ``end_frames`` frames or for
``end_seconds`` (capture time), whichever comes first; :meth:`Tracker.expire` ends tracks of a source that
stopped delivering frames. Unconfirmed tracks disappear silently (one-frame false positives never count).

Changes come back as ``(kind, track)`` with kind ``new`` (confirmed), ``update`` (at most every
``update_interval`` seconds while it changes, or at once on a big change: the box moved (IoU with the last
published box < 0.5), the top score rose by 0.1 or more, the zones changed) and ``end``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..model.box import iou_of

BIG_MOVE_IOU = 0.5
BIG_SCORE_RISE = 0.1


@dataclass(frozen=True)
class TrackerSettings:
    iou: float = 0.3
    confirm_frames: int = 2
    end_frames: int = 10
    end_seconds: float = 2.0
    update_interval: float = 5.0


@dataclass(frozen=True)
class Observation:
    """One filtered detection of a frame: label, score, box (normalised corners) and the zones it is in."""
    label: str
    score: float
    box: tuple[float, float, float, float]
    zones: tuple[str, ...] = ()


@dataclass
class Track:
    id: str  # the event id: stable across this track's new / update / end
    label: str
    box: tuple[float, float, float, float]
    score: float
    start: float  # capture time first seen (unix s)
    last_seen: float  # capture time last matched
    frame: int  # frame index last matched
    zones: tuple[str, ...] = ()
    top_score: float = 0.0
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    ended: bool = False
    published_box: tuple[float, float, float, float] | None = None
    published_top: float = 0.0
    published_zones: tuple[str, ...] = ()
    published_at: float = 0.0
    entered_zones: list[str] = field(default_factory=list)


class Tracker:
    """Tracks of one source. ``new_id()`` names each new track (the daemon passes its message-id factory)."""

    def __init__(self, settings: TrackerSettings, new_id: Callable[[], str]):
        self.s = settings
        self.new_id = new_id
        self.tracks: list[Track] = []

    def active(self) -> list[Track]:
        """Confirmed tracks that have not ended: what counts and occupancy are made of."""
        return [t for t in self.tracks if t.confirmed and not t.ended]

    def update(self, objs: list[Observation], ts: float, frame: int) -> list[tuple[str, Track]]:
        matched: set[int] = set()
        changes: list[tuple[str, Track]] = []
        for label in {o.label for o in objs} | {t.label for t in self.tracks}:
            idx = [i for i, o in enumerate(objs) if o.label == label]
            live = [t for t in self.tracks if t.label == label]
            for ti, oi in self._match(live, [objs[i] for i in idx]):
                matched.add(id(live[ti]))
                changes += self._hit(live[ti], objs[idx[oi]], ts, frame)
                idx[oi] = -1
            for oi in idx:
                if oi >= 0:
                    o = objs[oi]
                    t = Track(self.new_id(), o.label, o.box, o.score, ts, ts, frame, o.zones, o.score)
                    matched.add(id(t))
                    self.tracks.append(t)
                    changes += self._confirm(t, ts)
        for t in self.tracks:
            if id(t) not in matched:
                t.missed += 1
        changes += self._end_stale(ts)
        return changes

    def expire(self, now: float) -> list[tuple[str, Track]]:
        """End tracks unseen for ``end_seconds`` (the source delivers no frames: camera down, file ended)."""
        return self._end_stale(now)

    def end_all(self) -> list[tuple[str, Track]]:
        out = [("end", t) for t in self.tracks if t.confirmed and not t.ended]
        for _, t in out:
            t.ended = True
        self.tracks = []
        return out

    # -- internals ------------------------------------------------------------------------------------------
    def _match(self, tracks: list[Track], objs: list[Observation]) -> list[tuple[int, int]]:
        if not tracks or not objs:
            return []
        tb = np.array([t.box for t in tracks], np.float32)
        ob = np.array([o.box for o in objs], np.float32)
        iou = iou_of(tb[:, None, :], ob[None, :, :])
        pairs: list[tuple[int, int]] = []
        used_t: set[int] = set()
        used_o: set[int] = set()
        for flat in np.argsort(-iou, axis=None):
            ti, oi = divmod(int(flat), len(objs))
            if iou[ti, oi] < self.s.iou:
                break
            if ti not in used_t and oi not in used_o:
                used_t.add(ti)
                used_o.add(oi)
                pairs.append((ti, oi))
        return pairs

    def _hit(self, t: Track, o: Observation, ts: float, frame: int) -> list[tuple[str, Track]]:
        t.box, t.score, t.last_seen, t.frame, t.missed = o.box, o.score, ts, frame, 0
        t.top_score = max(t.top_score, o.score)
        t.hits += 1
        for z in o.zones:
            if z not in t.entered_zones:
                t.entered_zones.append(z)
        t.zones = o.zones
        if not t.confirmed:
            return self._confirm(t, ts)
        return [("update", self._published(t, ts))] if self._update_due(t, ts) else []

    def _confirm(self, t: Track, ts: float) -> list[tuple[str, Track]]:
        if t.hits < self.s.confirm_frames:
            return []
        t.confirmed = True
        return [("new", self._published(t, ts))]

    def _update_due(self, t: Track, ts: float) -> bool:
        if t.zones != t.published_zones or t.top_score >= t.published_top + BIG_SCORE_RISE:
            return True
        pb = t.published_box or t.box
        moved = float(iou_of(np.array(pb, np.float32), np.array(t.box, np.float32)))
        if moved < BIG_MOVE_IOU:
            return True
        return ts - t.published_at >= self.s.update_interval and (t.box != pb or t.top_score != t.published_top)

    @staticmethod
    def _published(t: Track, ts: float) -> Track:
        t.published_box, t.published_top, t.published_zones, t.published_at = t.box, t.top_score, t.zones, ts
        return t

    def _end_stale(self, now: float) -> list[tuple[str, Track]]:
        out: list[tuple[str, Track]] = []
        keep: list[Track] = []
        for t in self.tracks:
            if t.missed >= self.s.end_frames or now - t.last_seen >= self.s.end_seconds:
                if t.confirmed:
                    t.ended = True
                    out.append(("end", t))
            else:
                keep.append(t)
        self.tracks = keep
        return out
