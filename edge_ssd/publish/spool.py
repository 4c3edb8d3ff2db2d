"""A bounded, crash-consistent on-disk spool for outgoing MQTT messages.

Every durable message (detections, with QoS >= 1) is appended here *before* it is handed to the MQTT client
and deleted only when the broker acknowledged it (PUBACK -> ``on_publish(mid)`` -> :meth:`Spool.ack`). While
the broker is unreachable the spool simply grows; when it returns, the publisher replays the rows in id order.

Why SQLite (WAL mode) and not hand-rolled segment files:
  - crash and power-cut consistency come from SQLite's journal: a commit is all-or-nothing, so there is no torn
    tail record to detect and truncate, and an interrupted write is rolled back on the next open;
  - PUBACKs may come back in any order and for any row, and a row must disappear only when *its* ack arrives:
    that is one ``DELETE ... WHERE id=?``; with append-only segments it needs a separate ack log and compaction;
  - ``INTEGER PRIMARY KEY AUTOINCREMENT`` gives a strictly increasing id, i.e. the replay order, even after
    the table was empty or the process restarted;
  - it is in the Python standard library (no dependency on the device) and copes with ENOSPC by failing the
    statement (``SQLITE_FULL``) and leaving the database intact.
fsync policy (``fsync:``): ``normal`` = ``synchronous=NORMAL`` in WAL mode: every commit survives a crash of the
process (SIGKILL, OOM); after a power cut the database is consistent but may miss the last commits before the
cut (fsync happens at checkpoints). ``always`` = ``synchronous=FULL``: each append is fsynced (slower on SD
cards, nothing acknowledged to the pipeline is lost even on a power cut).

Limits: ``max_bytes`` (payload + topic + a fixed per-row overhead) and ``max_age`` (seconds). When a new
message does not fit, the OLDEST rows are dropped (the spool is a ring: after a long outage the most recent
history survives); expired rows are dropped too; each drop is counted (``dropped_limit``, ``dropped_age``).
A full disk (ENOSPC / SQLITE_FULL) logs ONE clear line (again only after it recovered), counts the message in
``dropped_disk`` and returns ``None``: the daemon keeps running.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .private import open_private, private_dir, tighten

log = logging.getLogger("edge_ssd.spool")

ROW_OVERHEAD = 48  # bytes accounted per row besides topic and payload (id, ts, qos, retain, b-tree cell)
_DISK_ERRORS = {13, 10}  # SQLITE_FULL, SQLITE_IOERR (ENOSPC on the WAL shows up as an I/O error)


@dataclass(frozen=True)
class Record:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    ts: float


DISK_OK_AFTER_S = 30.0  # a disk-full episode ends after this long without a write error


class Spool:
    _INSERT = "INSERT INTO spool (ts, topic, payload, qos, retain, size) VALUES (?, ?, ?, ?, ?, ?)"

    def __init__(self, directory: str | Path, max_bytes: int = 256 << 20, max_age: float = 7 * 86400.0,
                 fsync: str = "normal", filename: str = "spool.sqlite3", reserve_bytes: int = 1 << 20):
        self.dir = Path(directory)
        self.path = self.dir / filename
        try:
            private_dir(self.dir)  # 0700, and the database 0600 (its -wal/-shm files take the db's mode)
            open_private(self.path, "ab").close()
            for suffix in ("-wal", "-shm", ".reserve"):
                tighten(f"{self.path}{suffix}")
        except OSError as e:
            what = ("is not a directory" if self.dir.exists() and not self.dir.is_dir() else
                    "is on a read-only file system" if e.errno == errno.EROFS else
                    f"cannot be written ({e.strerror})")
            raise UserError(f"spool directory {self.dir} {what}; set spool.dir to a writable directory (the "
                            "systemd unit provides /var/lib/edge-ssd/spool)") from None
        self.max_bytes = int(max_bytes)
        self.max_age = float(max_age)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=5.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if fsync == 'always' else 'NORMAL'}")
            self._db.execute("PRAGMA wal_autocheckpoint=16")  # pages; keeps the WAL small on tiny disks
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, "
                "topic TEXT NOT NULL, payload BLOB NOT NULL, qos INTEGER NOT NULL, retain INTEGER NOT NULL, "
                "size INTEGER NOT NULL)")
            row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool").fetchone()
        except sqlite3.DatabaseError as e:
            if not os.access(self.dir, os.W_OK) or "readonly" in str(e) or "read-only" in str(e):
                raise UserError(f"spool directory {self.dir} is not writable ({e}); make it writable by the "
                                "service user or set spool.dir") from None
            raise UserError(f"spool database {self.path} cannot be opened ({e}); move it away to start with an "
                            "empty spool") from None
        self._count, self._bytes = int(row[0]), int(row[1])
        self.dropped_limit = 0
        self.dropped_age = 0
        self.dropped_disk = 0
        self.dropped_expired = 0  # stale when their turn came (mqtt.expiry), deleted unsent
        self.appended = 0
        self.acked = 0
        self._disk_full = False
        self._full_logged = False
        self._ok_since: float | None = None  # disk-full episode: since when writes work again
        self._pending_delete: set[int] = set()  # acked, but the DELETE failed (disk full): retried later
        self._last_prune = 0.0
        self._last_retry = 0.0
        self.reserve_path = self.dir / (filename + ".reserve")
        self.reserve_bytes = int(reserve_bytes)
        self._make_reserve()
        if self._count:
            log.info("spool %s: %d messages (%d bytes) waiting from a previous run", self.path, self._count,
                     self._bytes)

    # -- writing ---------------------------------------------------------------------------------------------
    def append(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
               ts: float | None = None, count_drop: bool = True) -> int | None:
        """Store one message; returns its id (the replay order), or ``None`` if it could not be stored (counted
        as dropped unless ``count_drop`` is False: the caller then decides, see :meth:`count_drop`)."""
        ts = time.time() if ts is None else ts
        size = len(payload) + len(topic.encode()) + ROW_OVERHEAD
        if size > self.max_bytes:
            with self._lock:
                self.dropped_limit += int(count_drop)
            log.warning("spool: message on %s (%d bytes) is larger than spool.max_bytes; dropped", topic, size)
            return None
        with self._lock:
            if self._disk_full and not self._try_recover(ts):
                self.dropped_disk += int(count_drop)
                return None
            try:
                self._maybe_prune(ts)
                if self._bytes + size > self.max_bytes:
                    self._drop_oldest(self._bytes + size - self.max_bytes)
                cur = self._db.execute(self._INSERT, (ts, topic, sqlite3.Binary(payload), int(qos),
                                                      int(bool(retain)), size))
            except sqlite3.OperationalError as e:
                self._disk_error(e)
                self.dropped_disk += int(count_drop)
                return None
            self._count += 1
            self._bytes += size
            self.appended += 1
            if self._full_logged:
                # the episode ends only after writes have worked for a while: a disk that is just at its
                # limit flaps between full and free every few seconds, and that is one episode, one line each way
                self._ok_since = ts if self._ok_since is None else self._ok_since
                if ts - self._ok_since >= DISK_OK_AFTER_S:
                    self._full_logged = False
                    log.warning("spool: writing to %s works again (%d messages were dropped while the disk was "
                                "full)", self.dir, self.dropped_disk)
            return int(cur.lastrowid or 0)

    def _make_reserve(self) -> bool:
        """A ballast file: released when the disk fills so that acks (DELETEs) and WAL checkpoints can still be
        written, i.e. the spool can always drain; re-created once the spool is empty again."""
        if self.reserve_bytes <= 0:
            return True
        try:
            if self.reserve_path.exists() and self.reserve_path.stat().st_size >= self.reserve_bytes:
                return True
            with open_private(self.reserve_path, "wb") as f:
                chunk = b"\0" * 65536
                left = self.reserve_bytes
                while left > 0:
                    left -= f.write(chunk[: min(left, len(chunk))])
                f.flush()
            return True
        except OSError:
            self.reserve_path.unlink(missing_ok=True)
            return False

    def _try_recover(self, now: float) -> bool:
        """In disk-full mode: writing resumes once everything stored was acknowledged and the ballast can be
        re-created (proof that space is back); checked at most every 2 s."""
        if now - self._last_retry < 2.0:
            return False
        self._last_retry = now
        try:
            self._retry_deletes()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            return False
        if self._pending_delete or not self._make_reserve():
            return False
        self._disk_full = False
        return True

    def _disk_error(self, e: sqlite3.OperationalError) -> None:
        code = getattr(e, "sqlite_errorcode", None)
        try:
            self._db.rollback()
        except sqlite3.Error:
            pass
        if code is not None and (code & 0xFF) not in _DISK_ERRORS and "full" not in str(e):
            log.error("spool: write to %s failed: %s", self.path, e)
            return
        self._disk_full = True
        self._ok_since = None
        self._last_retry = time.time()
        self.reserve_path.unlink(missing_ok=True)
        if not self._full_logged:
            self._full_logged = True
            log.error("spool: disk full at %s (%s): dropping messages until space is freed; free space or lower "
                      "spool.max_bytes", self.dir, e)

    def _drop_oldest(self, need: int) -> None:
        freed = 0
        while freed < need and self._count:
            rows = self._db.execute("SELECT id, size FROM spool ORDER BY id LIMIT 256").fetchall()
            if not rows:
                break
            last = rows[-1][0]
            for rid, size in rows:
                freed += size
                if freed >= need:
                    last = rid
                    break
            n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM spool WHERE id <= ?",
                                    (last,)).fetchone()
            self._db.execute("DELETE FROM spool WHERE id <= ?", (last,))
            self._count -= n
            self._bytes -= b
            self.dropped_limit += n
        if freed and self.dropped_limit // 1000 != (self.dropped_limit - 1) // 1000 or self.dropped_limit == 1:
            log.warning("spool: spool.max_bytes (%d) reached: dropping the oldest messages (%d so far)",
                        self.max_bytes, self.dropped_limit)

    def _maybe_prune(self, now: float) -> None:
        if now - self._last_prune < 1.0:
            return
        self._last_prune = now
        cutoff = now - self.max_age
        n, b = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size),0) FROM spool WHERE ts < ?",
                                (cutoff,)).fetchone()
        if n:
            self._db.execute("DELETE FROM spool WHERE ts < ?", (cutoff,))
            self._count -= n
            self._bytes -= b
            self.dropped_age += n
            log.warning("spool: dropped %d messages older than %g s (spool.max_age)", n, self.max_age)

    def prune(self) -> None:
        with self._lock:
            try:
                self._maybe_prune(time.time())
                self._retry_deletes()
            except sqlite3.OperationalError as e:
                self._disk_error(e)

    def count_drop(self) -> None:
        """Count a message that :meth:`append` could not store and the caller could not send either."""
        with self._lock:
            if self._disk_full:
                self.dropped_disk += 1
            else:
                self.dropped_limit += 1

    # -- reading / acknowledging -----------------------------------------------------------------------------
    def peek(self, after_id: int = 0, limit: int = 100) -> list[Record]:
        """Up to ``limit`` records with id > ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, ts FROM spool WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit + len(self._pending_delete))).fetchall()
            recs = [Record(int(r[0]), r[1], bytes(r[2]), int(r[3]), bool(r[4]), float(r[5])) for r in rows
                    if r[0] not in self._pending_delete]
            return recs[:limit]

    def ack(self, rid: int) -> None:
        """The broker acknowledged record ``rid``: delete it."""
        with self._lock:
            try:
                self._delete(rid)
            except sqlite3.OperationalError as e:
                self._disk_error(e)
                self._pending_delete.add(rid)

    def expire(self, rid: int) -> None:
        """Record ``rid`` is stale (older than its topic's ``mqtt.expiry``): delete it unsent, counted."""
        with self._lock:
            try:
                if self._delete(rid, acked=False):
                    self.dropped_expired += 1
            except sqlite3.OperationalError as e:
                self._disk_error(e)
                self._pending_delete.add(rid)

    def _delete(self, rid: int, acked: bool = True) -> bool:
        row = self._db.execute("SELECT size FROM spool WHERE id = ?", (rid,)).fetchone()
        if row is None:
            return False  # already dropped by the size/age limits
        self._db.execute("DELETE FROM spool WHERE id = ?", (rid,))
        self._count -= 1
        self._bytes -= int(row[0])
        self.acked += int(acked)
        return True

    def _retry_deletes(self) -> None:
        for rid in sorted(self._pending_delete):
            self._delete(rid)
            self._pending_delete.discard(rid)

    # -- info ------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._count - len(self._pending_delete)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def dropped(self) -> int:
        return self.dropped_limit + self.dropped_age + self.dropped_disk + self.dropped_expired

    def stats(self) -> dict:
        with self._lock:
            return {"queued": len(self), "bytes": self._bytes, "appended": self.appended, "acked": self.acked,
                    "dropped": self.dropped, "dropped_limit": self.dropped_limit, "dropped_age": self.dropped_age,
                    "dropped_disk": self.dropped_disk, "dropped_expired": self.dropped_expired,
                    "disk_full": self._disk_full}

    def close(self) -> None:
        with self._lock:
            try:
                self._retry_deletes()
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
