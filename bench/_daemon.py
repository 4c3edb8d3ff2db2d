"""The daemon as a real process for the bench scripts: write its config, start `edge-ssd run`, stop it with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def start_daemon(path: Path, cfg: dict, env: dict | None = None) -> subprocess.Popen:
    """Write ``cfg`` (the YAML config) to ``path`` and start the daemon on it; its stderr goes beside it."""
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    e = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "edge_ssd", "run", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=open(path.with_suffix(".stderr"), "w"), env=e)


def stop_daemon(p: subprocess.Popen, timeout: float = 30.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    return p.wait(timeout)
