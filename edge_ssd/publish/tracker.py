"""A small multi-object tracker: IoU + centre-distance association per label, for events and counts.

Per source, every frame's detections are matched to the live tracks of the same label, one detection per
track, greedily: first the pairs with an IoU of at least ``iou`` (highest first), then the pairs whose centres
are within ``centre_gate`` box sizes of each other (per axis, in units of the two boxes' mean width and
height; closest first) and whose sizes differ by at most a factor :data:`MAX_SIZE_RATIO`. The second gate
keeps small boxes whose position jitters by more than their own size between frames (faces a few pixels
wide, a low frame rate) on their tracks, where IoU alone is 0.

A track is *confirmed* after ``confirm_frames`` frames with a match: only confirmed tracks produce events and
count. It *ends* when it was not matched for ``end_frames`` frames or for ``end_seconds`` (capture time),
whichever comes first; :meth:`Tracker.expire` ends tracks of a source that stopped delivering frames.
Unconfirmed tracks disappear silently (one-frame false positives never count).

Counts are the confirmed tracks *in view* (:meth:`Tracker.in_view`), not every track that has not ended yet:
matched in the current frame, or missed for at most ``hold_frames`` frames unless a detection within its gates
went to another confirmed track (the same object on another track: counted once). So a count follows what the
frame shows, one missed detection does not flicker it, and tracks that lost their object keep their events
open until they end without counting.

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
MAX_SIZE_RATIO = 2.0  # a centre-gate match: width and height each within this factor of the track's


@dataclass(frozen=True)
class TrackerSettings:
    iou: float = 0.3
    centre_gate: float = 2.5  # box sizes; 0: IoU only
    hold_frames: int = 1
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
    covered: bool = False  # missed in the last frame while a confirmed track took a detection near it
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
        """Confirmed tracks that have not ended (each ``new`` event so far without its ``end``)."""
        return [t for t in self.tracks if t.confirmed and not t.ended]

    def in_view(self) -> list[Track]:
        """Confirmed tracks matched in the current frame, or missed for at most ``hold_frames`` frames while no
        detection near them went to another confirmed track (else that is the same object on another track):
        what counts and occupancy are made of."""
        return [t for t in self.tracks if t.confirmed and not t.ended and t.missed <= self.s.hold_frames
                and not t.covered]

    def update(self, objs: list[Observation], ts: float, frame: int) -> list[tuple[str, Track]]:
        changes: list[tuple[str, Track]] = []
        for label in {o.label for o in objs} | {t.label for t in self.tracks}:
            changes += self._update_label([o for o in objs if o.label == label],
                                          [t for t in self.tracks if t.label == label], ts, frame)
        changes += self._end_stale(ts)
        return changes

    def _update_label(self, objs: list[Observation], live: list[Track], ts: float,
                      frame: int) -> list[tuple[str, Track]]:
        changes: list[tuple[str, Track]] = []
        pairs, near = self._match(live, objs)
        owner: list = [None] * len(objs)  # the track each detection went to
        for ti, oi in pairs:
            changes += self._hit(live[ti], objs[oi], ts, frame)
            owner[oi] = live[ti]
        for oi, o in enumerate(objs):
            if owner[oi] is None:
                t = owner[oi] = Track(self.new_id(), o.label, o.box, o.score, ts, ts, frame, o.zones, o.score)
                self.tracks.append(t)
                changes += self._confirm(t, ts)
        hit = {ti for ti, _ in pairs}
        missed = [ti for ti in range(len(live)) if ti not in hit]
        for ti in missed:
            live[ti].missed += 1
        self._cover(missed, live, owner, near)
        return changes

    @staticmethod
    def _cover(missed: list[int], live: list[Track], owner: list[Track], near: list[list[bool]]) -> None:
        """Which missed tracks stop counting at once: those with a detection near them that went to another
        confirmed track (the same object on another track), except as many as new, not yet confirmed, tracks
        started in this frame (the objects those took over, e.g. along a row of small boxes that all shifted by
        one: each counted once, through its old track, until the new one counts)."""
        counted = [t.confirmed for t in owner]
        spare = sum(1 for t in owner if not t.confirmed and t.hits == 1)
        for ti in missed:
            t = live[ti]
            t.covered = any(n and c for n, c in zip(near[ti], counted, strict=True))
            if t.covered and t.confirmed and t.missed == 1 and spare:
                t.covered, spare = False, spare - 1

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
    def _match(self, tracks: list[Track],
               objs: list[Observation]) -> tuple[list[tuple[int, int]], list[list[bool]]]:
        """Greedy one-to-one pairs (track index, detection index), and per track which detections are within
        its gates (could have continued it, matched to it or not)."""
        if not tracks or not objs:
            return [], [[False] * len(objs) for _ in tracks]
        aff = self._affinity(np.array([t.box for t in tracks], np.float32),
                                   np.array([o.box for o in objs], np.float32))
        pairs: list[tuple[int, int]] = []
        used_t: set[int] = set()
        used_o: set[int] = set()
        for flat in np.argsort(-aff, axis=None, kind="stable"):
            ti, oi = divmod(int(flat), len(objs))
            if aff[ti, oi] <= 0:
                break
            if ti not in used_t and oi not in used_o:
                used_t.add(ti)
                used_o.add(oi)
                pairs.append((ti, oi))
        return pairs, (aff > 0).tolist()

    def _affinity(self, tb: np.ndarray, ob: np.ndarray) -> np.ndarray:
        """Track x detection: ``1 + IoU`` where the IoU passes ``iou``, else ``1 / (1 + d)`` where the centre
        distance ``d`` (in box sizes) passes ``centre_gate`` and the sizes are alike, else 0 (no match)."""
        iou = iou_of(tb[:, None, :], ob[None, :, :])
        tw, th = tb[:, 2] - tb[:, 0], tb[:, 3] - tb[:, 1]
        ow, oh = ob[:, 2] - ob[:, 0], ob[:, 3] - ob[:, 1]
        w = np.maximum((tw[:, None] + ow[None, :]) / 2, 1e-6)
        h = np.maximum((th[:, None] + oh[None, :]) / 2, 1e-6)
        dx = ((tb[:, None, 0] + tb[:, None, 2]) - (ob[None, :, 0] + ob[None, :, 2])) / 2 / w
        dy = ((tb[:, None, 1] + tb[:, None, 3]) - (ob[None, :, 1] + ob[None, :, 3])) / 2 / h
        d = np.hypot(dx, dy)
        rw = np.maximum(tw[:, None], ow[None, :]) / np.maximum(np.minimum(tw[:, None], ow[None, :]), 1e-6)
        rh = np.maximum(th[:, None], oh[None, :]) / np.maximum(np.minimum(th[:, None], oh[None, :]), 1e-6)
        near = (d <= self.s.centre_gate) & (rw <= MAX_SIZE_RATIO) & (rh <= MAX_SIZE_RATIO)
        return np.where(iou >= self.s.iou, 1.0 + iou, np.where(near, 1.0 / (1.0 + d), 0.0))

    def _hit(self, t: Track, o: Observation, ts: float, frame: int) -> list[tuple[str, Track]]:
        t.box, t.score, t.last_seen, t.frame, t.missed, t.covered = o.box, o.score, ts, frame, 0, False
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
