"""sd_notify over real unix datagram sockets; the units pass `systemd-analyze verify`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from _broker import NotifySocket

from edge_ssd.daemon.health import Watchdog
from edge_ssd.daemon.sdnotify import Notifier, watchdog_interval

REPO = Path(__file__).resolve().parents[1]


def wait_lines(ns: NotifySocket, n: int):
    import time

    end = time.monotonic() + 5
    while len(ns.messages) < n and time.monotonic() < end:
        time.sleep(0.01)
    return ns.messages


@pytest.mark.parametrize("abstract", [False, True])
def test_notify_path_and_abstract(tmp_path, abstract):
    ns = NotifySocket(abstract=f"edge-ssd-test-{uuid.uuid4().hex}") if abstract else NotifySocket(tmp_path / "n")
    n = Notifier(ns.address)
    assert n.enabled
    assert n.ready("loaded") and n.watchdog() and n.status("3.0 fps\nnext") and n.stopping()
    msgs = wait_lines(ns, 4)
    ns.close()
    assert msgs == ["READY=1\nSTATUS=loaded", "WATCHDOG=1", "STATUS=3.0 fps next", "STOPPING=1"]


def test_notify_disabled_without_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled and not n.ready()


def test_watchdog_interval_env():
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}) is None
    assert watchdog_interval({}) is None and watchdog_interval({"WATCHDOG_USEC": "0"}) is None


def test_watchdog_pings_only_while_progressing():
    w = Watchdog(8.0)
    assert w.due(last_progress=100.0, now=100.5)
    assert not w.due(last_progress=100.5, now=101.0)  # too soon after the last ping
    assert w.due(last_progress=102.5, now=103.0)
    assert not w.due(last_progress=103.0, now=108.0)  # pipeline stuck for 5 s > interval/2: withheld
    assert w.withheld == 1
    assert not Watchdog(None).due(0.0, 1.0)


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["edge-ssd.service", "edge-ssd@.service"])
def test_units_verify(tmp_path, unit):
    text = (REPO / "systemd" / unit).read_text()
    for key in ("Type=notify", "WatchdogSec=", "User=edge-ssd", "ProtectSystem=strict", "StateDirectory=edge-ssd",
                "ConfigurationDirectory=edge-ssd", "DeviceAllow=char-usb_device", "DeviceAllow=char-apex",
                "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "SupplementaryGroups=video plugdev"):
        assert key in text, key
    assert re.search(r"^ExecStart=/opt/edge-ssd/venv/bin/edge-ssd run --config /etc/edge-ssd/", text, re.M)
    # ExecStart must exist for verify: point it at this checkout's binary
    text = text.replace("/opt/edge-ssd/venv/bin/edge-ssd", str(REPO / ".venv" / "bin" / "edge-ssd"))
    name = unit.replace("@.", "@cam1.")
    (tmp_path / name).write_text(text)
    if "@" in unit:
        (tmp_path / unit).write_text(text)
    r = subprocess.run(["systemd-analyze", "verify", f"./{name}"], cwd=tmp_path, capture_output=True, text=True)
    problems = [line for line in (r.stdout + r.stderr).splitlines() if name in line or "Unknown" in line]
    assert r.returncode == 0 and not problems, r.stdout + r.stderr
