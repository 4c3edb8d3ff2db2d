"""Files that may hold detections, snapshots or queued messages are private to the service user whatever the
umask (outside systemd a login shell's 022, or 0, would make them world-readable): directories 0700, files
0600. Existing paths are tightened; device files (``/dev/full``, ``/dev/null``) are left alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and parents) if needed; the directory itself ends up 0700."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if stat.S_IMODE(p.stat().st_mode) != DIR_MODE:
        os.chmod(p, DIR_MODE)
    return p


def tighten(path: str | Path) -> None:
    """chmod 0600 a regular file that is readable or writable by group/others (no-op otherwise)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        os.chmod(path, FILE_MODE)


def open_private(path: str | Path, mode: str = "a", encoding: str | None = "utf-8"):
    """``open(path, mode)`` that creates the file 0600 (and tightens an existing one)."""
    flags = {"a": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "w": os.O_WRONLY | os.O_TRUNC | os.O_CREAT,
             "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT, "wb": os.O_WRONLY | os.O_TRUNC | os.O_CREAT}[mode]
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
        return os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
    except BaseException:
        os.close(fd)
        raise
