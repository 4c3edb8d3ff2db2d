"""A JSON-lines file sink with size-based rotation (``path``, ``path.1`` ... ``path.N``)."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ..errors import UserError
from .hub import Update
from .messages import dumps
from .private import open_private

log = logging.getLogger(__name__)


class FileSink:
    def __init__(self, path: str | Path, max_bytes: int = 16 << 20, backups: int = 3):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.backups = int(backups)
        self._lock = threading.Lock()
        self.written = 0
        self.errors = 0
        self._failing = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise IsADirectoryError(21, "is a directory, not a file", str(self.path))
            self._f = open_private(self.path, "a")
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
        self._f = open_private(self.path, "a")
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
                if not self._failing:  # one line per episode, not per detection
                    self._failing = True
                    log.error("file sink %s: write failed (%s); detections are not written to the file until "
                              "it works again", self.path, e.strerror)
                return
            if self._failing:
                self._failing = False
                log.warning("file sink %s: writing works again (%d detection(s) lost)", self.path, self.errors)

    def close(self) -> None:
        with self._lock:
            try:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
            except (OSError, ValueError):
                pass
