"""Resident-memory levers for the device (measured in bench/daemon_memory.py, figures in the README).

* :func:`release_file_pages`: after the warm-up, LiteRT's XNNPACK delegate runs on its own packed copy of the
  weights, yet the pages of the memory-mapped ``.tflite`` it read them from stay resident (about the model's
  size). ``madvise(MADV_DONTNEED)`` on those read-only file mappings drops them; anything that still reads the
  file faults the page back in from disk, so it is always safe, at worst without gain.
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


def trim_heap() -> bool:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    return bool(trim(0)) if trim is not None else False
