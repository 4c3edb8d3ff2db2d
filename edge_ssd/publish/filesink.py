"""A JSON-lines file sink with size-based rotation (``path``, ``path.1`` ... ``path.N``)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import UserError
from .hub import Update
from .messages import dumps

log = logging.getLogger(__name__)


class FileSink:
    def __init__(self, path: str | Path, max_bytes: int = 16 << 20, backups: int = 3):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self._lock = threading.Lock()
        self.written = 0
        self.errors = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise UserError(f"file sink {self.path} cannot be opened ({e.strerror}); fix sinks.file.path") from None
        self._size = self._f.tell()

    def _rotate(self) -> None:
        self._f.close()
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                src = self.path.with_name(f"{self.path.name}.{i}")
                if src.exists():
                    os.replace(src, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self._size = 0

    def handle(self, u: Update) -> None:
        if u.detection is None:
            return
        line = dumps(u.detection) + "\n"
        n = len(line.encode())
        with self._lock:
            try:
                if self._size and self._size + n > self.max_bytes:
                    self._rotate()
                self._f.write(line)
                self._f.flush()
                self._size += n
                self.written += 1
            except OSError as e:
                self.errors += 1
                if self.errors == 1:
                    log.error("file sink %s: write failed (%s); detections are not written to the file",
                              self.path, e.strerror)

    def close(self) -> None:
        with self._lock:
            try:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
            except (OSError, ValueError):
                pass
