"""Small, thread-safe counters for the pipeline and the benchmark: rolling percentiles and a rate meter."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Percentiles of a measurement in milliseconds (None when nothing was measured)."""

    p50: float | None = None
    p95: float | None = None
    mean: float | None = None
    n: int = 0

    def to_json(self) -> dict:
        return asdict(self)


class Rolling:
    """The last ``size`` values of a measurement (e.g. latency in ms) with percentiles."""

    def __init__(self, size: int = 1000):
        self._buf = np.zeros(size, np.float64)
        self._n = 0
        self._lock = threading.Lock()

    def add(self, v: float) -> None:
        with self._lock:
            self._buf[self._n % self._buf.size] = v
            self._n += 1

    @property
    def count(self) -> int:
        return self._n

    def values(self) -> np.ndarray:
        with self._lock:
            return self._buf[: min(self._n, self._buf.size)].copy()

    def percentile(self, q: float) -> float | None:
        v = self.values()
        return float(np.percentile(v, q)) if v.size else None

    def summary(self, digits: int = 2) -> Summary:
        v = self.values()
        if not v.size:
            return Summary()
        p50, p95 = np.percentile(v, [50, 95])
        return Summary(round(float(p50), digits), round(float(p95), digits), round(float(v.mean()), digits), self._n)


class RateMeter:
    """Events per second over the last ``window`` seconds (monotonic clock)."""

    def __init__(self, window: float = 5.0):
        self.window = window
        self._t: deque[float] = deque()
        self._lock = threading.Lock()

    def tick(self, t: float | None = None) -> None:
        t = time.monotonic() if t is None else t
        with self._lock:
            self._t.append(t)
            self._trim(t)

    def _trim(self, now: float) -> None:
        while self._t and now - self._t[0] > self.window:
            self._t.popleft()

    def rate(self) -> float:
        now = time.monotonic()
        with self._lock:
            self._trim(now)
            n = len(self._t)
            if n < 2:
                return 0.0
            span = max(self._t[-1] - self._t[0], 1e-9)
            return (n - 1) / span


def summarize_ms(values, digits: int = 3) -> Summary:
    """p50/p95/mean of a list of milliseconds (for the benchmark)."""
    v = np.asarray(values, np.float64)
    if not v.size:
        return Summary()
    p50, p95 = np.percentile(v, [50, 95])
    return Summary(round(float(p50), digits), round(float(p95), digits), round(float(v.mean()), digits), int(v.size))
