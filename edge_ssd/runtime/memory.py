"""Resident-memory levers for the device (measured in bench/daemon_memory.py, figures in the README).

* :func:`release_file_pages`: after the warm-up, LiteRT's XNNPACK delegate runs on its own packed copy of the
  weights, yet the pages of the memory-mapped ``.tflite`` it read them from stay resident (about the model's
  size). ``madvise(MADV_DONTNEED)`` on those read-only file mappings drops them; anything that still reads the
  file faults the page back in from disk, so it is always safe, at worst without gain.
* :func:`release_library_pages`: loading a shared library and running its initialisers faults in far more of
  its read-only pages (code, constant tables) than the daemon ever runs again: 33 MB of cv2's 70 MB library
  were resident although the daemon only decodes, resizes and encodes frames. Once the daemon is ready, the
  read-only, file-backed mappings that hold no private (copy-on-write) page are advised ``MADV_DONTNEED``; the
  pages still in use fault back in from the page cache within a frame or two (measured: the steady-state RSS
  settles at what is really used). Mappings with a written page (relocations) are never touched, so it is
  safe. ``EDGE_SSD_KEEP_LIBRARY_PAGES=1`` turns it off (for measuring).
* :func:`trim_heap`: glibc keeps freed start-up memory (model loading, imports) in its arenas;
  ``malloc_trim(0)`` hands it back to the kernel. ``MALLOC_ARENA_MAX=2`` (the systemd unit sets it) caps the
  arenas glibc creates for the pipeline's threads.

Linux + glibc only; elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MADV_DONTNEED = 4


def _libc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def release_file_pages(path: str | Path) -> int:
    """Drop this process's resident pages of the read-only mappings of ``path`` (a bundle directory: of the
    .tflite files in it); returns the bytes advised."""
    libc = _libc()
    if libc is None or not os.path.exists("/proc/self/maps"):
        return 0
    target = os.path.realpath(path)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            mapped = parts[5].strip() if len(parts) == 6 else ""
            inside = os.path.dirname(mapped) == target and mapped.endswith(".tflite")
            if not (mapped == target or inside) or "w" in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
                done += end - start
    if done:
        log.debug("released %d resident bytes of %s", done, target)
    return done


def _clean_file_mappings() -> list[tuple[int, int]]:
    """(start, end) of this process's read-only file-backed mappings with no anonymous (written) page."""
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                path = head[5].strip() if len(head) == 6 else ""
                ok = "w" not in head[1] and path.startswith("/") and head[4] != "0"
                cur = tuple(int(x, 16) for x in head[0].split("-")) if ok else None  # type: ignore[assignment]
            elif head[0] == "Anonymous:" and cur is not None:
                if head[1] == "0":
                    out.append(cur)
                cur = None
    return out


def release_library_pages() -> int:
    """Drop the resident pages of the read-only, never-written file mappings (libraries, models); returns the
    bytes advised. Anything still used faults back in from the page cache."""
    libc = _libc()
    if libc is None or not os.path.exists("/proc/self/smaps") or os.environ.get("EDGE_SSD_KEEP_LIBRARY_PAGES"):
        return 0
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    done = 0
    for start, end in _clean_file_mappings():
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            done += end - start
    log.debug("released the resident pages of %d bytes of read-only mappings", done)
    return done


def trim_heap() -> bool:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False
