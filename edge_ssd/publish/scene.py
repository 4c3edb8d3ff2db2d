"""What a source's frame means to a user: per-label filters (``min_score``, ``min_area``), zones (polygons in
normalised coordinates, an object is in a zone when the bottom centre of its box is inside) and the counts
that follow from the confirmed tracks, for the whole frame and per zone."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from ..model.box import Detections
from ..model.result import FrameResult
from .tracker import Observation, Track


@dataclass(frozen=True)
class LabelRule:
    min_score: float | None = None
    min_area: float | None = None  # fraction of the frame's area


@dataclass(frozen=True)
class Zone:
    name: str
    polygon: tuple[tuple[float, float], ...]
    labels: frozenset[str] | None = None  # None: every label

    def contains(self, x: float, y: float) -> bool:
        """Even-odd ray casting (points on an edge may fall either way)."""
        inside = False
        pts = self.polygon
        for (x1, y1), (x2, y2) in zip(pts, pts[1:] + pts[:1], strict=True):
            if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
                inside = not inside
        return inside

    def counts(self, label: str) -> bool:
        return self.labels is None or label in self.labels


@dataclass(frozen=True)
class Counts:
    """Confirmed, live tracks of one source: per label for the whole frame, and per zone per label."""
    labels: dict[str, int]
    zones: dict[str, dict[str, int]]

    @property
    def total(self) -> int:
        return sum(self.labels.values())


@dataclass(frozen=True)
class SourceRules:
    filters: dict[str, LabelRule] = field(default_factory=dict)
    zones: tuple[Zone, ...] = ()

    def apply(self, r: FrameResult) -> FrameResult:
        """The frame with the detections the per-label filters keep (the same object when nothing is set)."""
        d = r.detections
        if not self.filters or not len(d):
            return r
        keep = np.ones(len(d), bool)
        area = (d.boxes[:, 2] - d.boxes[:, 0]).clip(0) * (d.boxes[:, 3] - d.boxes[:, 1]).clip(0)
        for i, cid in enumerate(d.class_ids):
            rule = self.filters.get(r.labels[int(cid)] if 0 <= cid < len(r.labels) else str(int(cid)))
            if rule is None:
                continue
            if rule.min_score is not None and d.scores[i] < rule.min_score:
                keep[i] = False
            if rule.min_area is not None and area[i] < rule.min_area:
                keep[i] = False
        if keep.all():
            return r
        return replace(r, detections=Detections(d.boxes[keep], d.scores[keep], d.class_ids[keep]))

    def observations(self, objects: list[dict]) -> list[Observation]:
        """Detection-message objects (label, score, box) as tracker input, with the zones each is in."""
        out = []
        for o in objects:
            x1, y1, x2, y2 = o["box"]
            zones = tuple(z.name for z in self.zones if z.counts(o["label"]) and z.contains((x1 + x2) / 2, y2))
            out.append(Observation(o["label"], float(o["score"]), (x1, y1, x2, y2), zones))
        return out

    def counts(self, tracks: list[Track]) -> Counts:
        labels = Counter(t.label for t in tracks)
        zones = {z.name: dict(Counter(t.label for t in tracks if z.name in t.zones)) for z in self.zones}
        return Counts(dict(labels), zones)
