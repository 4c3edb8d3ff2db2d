"""The capture interface: a :class:`Source` yields BGR frames with a timestamp and an index.

::

    src = open_source("rtsp://cam/stream", name="front")
    src.open()                   # connects (or starts connecting in the background)
    f = src.read(timeout=1.0)    # Frame (image, ts, index) or None (no new frame yet, or the source ended)
    src.status                   # "connecting", "ok", "reconnecting", "ended", "failed"
    src.close()

Two modes:

* ``latest=True`` (live use, the default for cameras and streams): a capture thread keeps only the newest
  frame; a frame overwritten before anyone read it is dropped and counted (``dropped["stale"]``), a frame
  older than ``max_frame_age`` seconds when read is dropped and counted (``dropped["age"]``). Nothing queues
  up, so the consumer always sees the present.
* ``latest=False`` ("process all frames", for files, folders, tests and ``edge-ssd detect``): ``read`` pulls
  the next frame synchronously; nothing is dropped.

A live source that fails (camera unplugged, stream down) is reconnected with exponential backoff (capped,
jittered); its ``status`` says so. It never spins a core and never raises out of the capture thread.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import zlib
from collections import Counter
from dataclasses import dataclass

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

STATUSES = ("connecting", "ok", "reconnecting", "ended", "failed")


@dataclass
class Frame:
    """One captured frame. Unpacks as ``image, ts, index``."""

    image: np.ndarray | None  # HxWx3 uint8 BGR (the pipeline lets go of it once preprocessed)
    ts: float  # capture time, unix seconds
    index: int  # frame number within the source, from 0
    path: str | None = None  # file name for image sources
    mono: float = 0.0  # capture time, time.monotonic()

    def __iter__(self):
        return iter((self.image, self.ts, self.index))


HEALTHY_AFTER = 2  # frames a reconnected live source must deliver before its backoff resets


class SourceEnded(Exception):
    """Raised by ``_grab`` when a finite source has no more frames."""


class SourceError(Exception):
    """Raised by ``_connect``/``_grab`` for a failure that reconnecting may fix."""


@dataclass
class Backoff:
    """Exponential backoff: ``initial * factor**n`` capped at ``maximum``, times a jitter in [1-jitter, 1]."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        r = (rng or random).random()
        return base * (1.0 - self.jitter * r)


class Source:
    """Base class. Subclasses implement ``_connect()``, ``_grab() -> np.ndarray`` and ``_disconnect()``;
    ``_grab`` raises :class:`SourceEnded` at the end of a finite source and :class:`SourceError` (or any
    exception) on a failure. This class does threading, latest-frame semantics, pacing and reconnection."""

    kind = "source"
    finite = False  # files and folders end; cameras and streams don't

    def __init__(self, name: str, *, latest: bool = True, max_frame_age: float | None = None,
                 reconnect: bool = True, backoff: Backoff | None = None, fail_fast: bool = False,
                 max_failures: int | None = None, fps: float | None = None):
        self.name = name
        self.latest = latest
        self.max_frame_age = max_frame_age
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.fail_fast = fail_fast
        self.max_failures = max_failures  # give up ("failed") after this many consecutive failures
        self.pace_fps = fps  # pace reads to this rate (real-time playback of files)
        self.status = "connecting"
        self.error: str | None = None
        self.frames = 0  # frames captured
        self.dropped: Counter = Counter()
        self.errors = 0  # failures seen (connect or read)
        self.reconnects = 0
        self.status_history: list[str] = ["connecting"]
        self.delays: list[float] = []  # backoff delays slept (for tests and stats)
        self._index = 0
        self._cond = threading.Condition()
        self._slot: Frame | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._opened = False
        self._connected = False
        self._failures = 0
        self._conn_frames = 0  # frames of the current connection
        self._last_mark: tuple | None = None  # (shape, crc32 of a subsample) of the last frame
        self._next_t = 0.0
        self._io = threading.RLock()  # serialises connect/grab (sync mode) with close()

    # -- to implement ---------------------------------------------------------------------------------
    def _connect(self) -> None:
        raise NotImplementedError

    def _grab(self) -> np.ndarray:
        raise NotImplementedError

    def _disconnect(self) -> None:
        pass

    def _frame_path(self) -> str | None:
        return None

    # -- public -----------------------------------------------------------------------------------------
    def open(self) -> Source:
        """Connect. With ``fail_fast``, a failing first connection raises :class:`UserError`; otherwise a
        live source keeps trying in the background."""
        if self._opened:
            return self
        self._opened = True
        self._stop.clear()
        if self.fail_fast or not self.latest:
            try:
                self._do_connect()
            except UserError:
                self._set_status("failed")
                raise
            except Exception as e:  # noqa: BLE001 - a camera backend can raise anything: counted, retried with backoff
                if self.fail_fast or self.finite:
                    self._set_status("failed")
                    self.error = _one_line(e)
                    raise UserError(self._open_error(e)) from None
                self._note_failure(e)
        if self.latest:
            self._thread = threading.Thread(target=self._run, name=f"capture-{self.name}", daemon=True)
            self._thread.start()
        return self

    def read(self, timeout: float | None = 1.0) -> Frame | None:
        """The next frame: in latest mode the newest one not yet read (waiting up to ``timeout``), else the
        next one in order. None when no frame came within ``timeout`` or the source ended (see ``ended``)."""
        if not self._opened:
            self.open()
        if not self.latest:
            return self._read_sync(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                f = self._slot
                if f is not None:
                    self._slot = None
                    if self.max_frame_age is not None and time.monotonic() - f.mono > self.max_frame_age:
                        self.dropped["age"] += 1
                        continue
                    return f
                if self.status in ("ended", "failed") or self._stop.is_set():
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)

    @property
    def ended(self) -> bool:
        """True once the source will produce no more frames (end of file/folder, gave up, or closed)."""
        with self._cond:
            return self.status in ("ended", "failed") and self._slot is None

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            if self._thread.is_alive():
                log.warning("%s: capture thread did not stop within 10 s", self.name)
        self._thread = None
        with self._io:
            self._safe_disconnect()
        if self.status not in ("ended", "failed"):
            self._set_status("ended")

    def stats(self) -> dict:
        return {"name": self.name, "kind": self.kind, "status": self.status, "frames": self.frames,
                "dropped": dict(self.dropped), "errors": self.errors, "reconnects": self.reconnects,
                "error": self.error}

    def __enter__(self) -> Source:
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, status={self.status})"

    # -- internals ----------------------------------------------------------------------------------------
    def _open_error(self, e: Exception) -> str:
        return f"cannot open source {self.name}: {_one_line(e)}"

    def _set_status(self, s: str) -> None:
        with self._cond:
            if s != self.status:
                log.info("source %s: %s -> %s", self.name, self.status, s)
                self.status = s
                self.status_history.append(s)
            self._cond.notify_all()

    def _do_connect(self) -> None:
        self._connect()
        self._connected = True
        self._conn_frames = 0
        if not self._failures:  # the first connection; after failures, see _healthy
            self.error = None
        self._set_status("ok")

    def _healthy(self, img: np.ndarray) -> bool:
        """After a reconnect, the failure count (and so the backoff) is reset only once the connection has
        delivered HEALTHY_AFTER frames: a source that gives one frame per connection (an HTTP snapshot URL, a
        1-frame video) then backs off to the maximum delay instead of reconnecting every half second. The first
        frame after a reconnect that equals the last one before it is not new: False (skip it)."""
        self._conn_frames += 1
        # a fingerprint, not the frame: holding the last full frame would cost a frame of memory per source
        mark = (img.shape, zlib.crc32(np.ascontiguousarray(img[::8, ::8]).data))
        repeat = self._conn_frames == 1 and bool(self._failures) and mark == self._last_mark
        if self._failures and self._conn_frames >= HEALTHY_AFTER:
            self._failures = 0
            self.error = None
        self._last_mark = mark
        if repeat:
            self.dropped["repeat"] += 1
        return not repeat

    def _safe_disconnect(self) -> None:
        if self._connected:
            self._connected = False
            try:
                self._disconnect()
            except Exception as e:  # noqa: BLE001 - best effort on the way out
                log.debug("%s: disconnect: %s", self.name, e)

    def _note_failure(self, e: Exception) -> None:
        self.errors += 1
        self._failures += 1
        self.error = _one_line(e)
        # log the first failures, then only every power of two, so an outage does not flood the journal
        n = self._failures
        log.log(logging.WARNING if n <= 2 or (n & (n - 1)) == 0 else logging.DEBUG,
                "source %s: %s (failure %d)", self.name, self.error, n)

    def _pace(self) -> None:
        if not self.pace_fps:
            return
        now = time.monotonic()
        if self._next_t == 0.0 or now - self._next_t > 1.0:  # start, or fell far behind: resync
            self._next_t = now
        wait = self._next_t - now
        if wait > 0:
            self._stop.wait(wait)
        self._next_t += 1.0 / self.pace_fps

    def _make_frame(self, img: np.ndarray) -> Frame:
        f = Frame(img, time.time(), self._index, self._frame_path(), time.monotonic())
        self._index += 1
        self.frames += 1
        return f

    def _read_sync(self, timeout: float | None) -> Frame | None:
        """Process-all mode: the next frame in order, reconnecting in the caller's thread if needed."""
        with self._io:
            return self._read_sync_locked()

    def _read_sync_locked(self) -> Frame | None:
        img = self._next_image()
        return None if img is None else self._make_frame(img)

    def _next_image(self) -> np.ndarray | None:
        """Connect (after the backoff) when needed and grab the next image, paced; None when the source ended,
        failed or is closing (``status`` says which). Shared by the in-order reader and the capture thread."""
        while not self._stop.is_set():
            if not self._connected:
                if self.status in ("ended", "failed") or not self._wait_backoff():
                    return None
                try:
                    self._do_connect()
                except UserError as e:  # not fixable by retrying (missing dependency, bad file)
                    self._note_failure(e)
                    self._set_status("failed")
                    return None
                except Exception as e:  # noqa: BLE001 - a camera backend can raise anything: counted, retried with back
                    self._note_failure(e)
                    continue
            try:
                img = self._grab()
            except SourceEnded:
                self._safe_disconnect()
                self._set_status("ended")
                return None
            except Exception as e:  # noqa: BLE001 - a camera backend can raise anything: counted, retried with backoff
                self._note_failure(e)
                self._safe_disconnect()
                if self.finite:
                    self._set_status("ended")
                    return None
                continue  # the next round reconnects after the backoff, or gives up (no reconnect, max failures)
            if not self.finite and not self._healthy(img):
                continue
            self._pace()
            return img
        return None

    def _wait_backoff(self) -> bool:
        """Sleep before a reconnect attempt; False when giving up or closing."""
        if self.max_failures is not None and self._failures >= self.max_failures:
            self._set_status("failed")
            return False
        if not self.reconnect and self._failures:
            self._set_status("failed")
            return False
        if self._failures:
            self._set_status("reconnecting")
            d = self.backoff.delay(self._failures - 1)
            self.delays.append(d)
            if self._stop.wait(d):
                return False
            self.reconnects += 1
        return True

    def _run(self) -> None:
        """Latest-mode capture thread."""
        try:
            while (img := self._next_image()) is not None:
                f = self._make_frame(img)
                with self._cond:
                    if self._slot is not None:
                        self.dropped["stale"] += 1
                    self._slot = f
                    self._cond.notify_all()
        except Exception as e:  # never let the thread die silently
            log.exception("source %s: capture thread crashed", self.name)
            self.error = _one_line(e)
            self._set_status("failed")
        finally:
            self._safe_disconnect()
            with self._cond:
                self._cond.notify_all()


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
