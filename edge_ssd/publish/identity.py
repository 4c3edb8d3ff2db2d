"""Message ids unique per device across restarts: ``"<run>-<seq>"``.

``run`` is a counter kept in the state directory (``<spool.dir>/run_id``), incremented at every start of the
publishing side (daemon start and every reload); ``seq`` counts the messages of that run from 1. Every
detections and events message carries one, so a consumer de-duplicates at-least-once deliveries on
``(device, id)`` (docs/mqtt.md); the frame index restarts at 0 and is not a key.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

RUN_FILE = "run_id"


def next_run(state_dir: Path) -> int:
    """Increment and persist the run counter (write to a temp file, fsync, rename: a crash keeps the old one)."""
    path = state_dir / RUN_FILE
    try:
        run = int(path.read_text().strip() or 0) + 1
    except FileNotFoundError:
        run = 1
    except ValueError:
        log.warning("%s is not a number; starting the run counter again from a random value", path)
        run = secrets.randbits(31)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write(f"{run}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return run


class MessageIds:
    """``next()`` -> ``"<run>-<seq>"``; thread-safe. Without a writable state directory the run is a random
    token (``r<hex>``): still unique across restarts, just not ordered."""

    def __init__(self, state_dir: str | Path | None):
        self.run = "r" + secrets.token_hex(6)
        if state_dir is not None:
            try:
                d = Path(state_dir)
                d.mkdir(parents=True, exist_ok=True)
                self.run = str(next_run(d))
            except OSError as e:
                log.warning("message ids: cannot keep the run counter in %s (%s); using the random run id %s",
                            state_dir, e.strerror or e, self.run)
        self._seq = itertools.count(1)  # next() on a count is atomic under the GIL

    def next(self) -> str:
        return f"{self.run}-{next(self._seq)}"
