"""Consumers sharing the load: the recipe of docs/fleet.md (run verbatim, twice) and `edge-ssd watch --share`,
against a real Mosquitto, fed by real MqttPublisher instances (own spools) speaking MQTT 3.1.1 and MQTT 5."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from _broker import Broker, have_mosquitto
from _broker import wait as _wait

from edge_ssd.publish.mqtt import MqttPublisher
from edge_ssd.publish.spool import Spool
from edge_ssd.publish.topics import Topics

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")

REPO = Path(__file__).resolve().parents[1]
EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"


def recipe() -> str:
    text = (REPO / "docs" / "fleet.md").read_text()
    (code,) = re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    return code


class Reader:
    """Collects a subprocess's stdout lines (JSON) on a thread."""

    def __init__(self, proc: subprocess.Popen, unwrap: bool = False):
        self.proc = proc
        self.unwrap = unwrap  # watch --json prints {"topic", "retain", "payload"}
        self.lines: list[dict] = []
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        for line in self.proc.stdout:
            if line.strip():
                m = json.loads(line)
                self.lines.append(m["payload"] if self.unwrap else m)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._t.join(5)


def publishers(tmp: Path, port: int) -> list[MqttPublisher]:
    """Two devices, one on MQTT 3.1.1 and one on MQTT 5."""
    out = []
    for i, proto in enumerate((4, 5)):
        spool = Spool(tmp / f"spool{i}")
        out.append(MqttPublisher("127.0.0.1", port, topics=Topics("edge-ssd", f"dev{i}"), spool=spool,
                                 client_id=f"pub{i}", min_delay=0.2, max_delay=1.0, protocol=proto).start())
    for p in out:
        assert p.wait_connected(10)
    return out


def send(pubs: list[MqttPublisher], n: int, tag: str) -> set[tuple[str, str]]:
    sent = set()
    for k in range(n):
        for p in pubs:
            dev = p.topics.device
            msg = {"schema": 1, "id": f"{tag}-{k}", "device": dev, "source": "cam", "frame": k, "objects": []}
            p.publish_durable(p.topics.detections("cam"), json.dumps(msg).encode())
            sent.add((dev, msg["id"]))
    return sent


def keys(r: Reader, field="id") -> list[tuple[str, str]]:
    return [(m["device"], m[field]) for m in r.lines]


def check_split(pubs, readers, timeout=30.0) -> None:
    """Probe until every member got a message (all subscribed), then 2 x 100 messages: each to exactly one."""
    k = 0
    while not all(r.lines for r in readers):
        send(pubs, 1, f"probe{k}")
        k += 1
        time.sleep(0.1)
        assert k < 300, "consumers never received anything"
    bulk = send(pubs, 100, "bulk")
    got = lambda: [x for r in readers for x in keys(r) if x[1].startswith("bulk")]  # noqa: E731
    assert _wait(lambda: set(got()) >= bulk, timeout)
    time.sleep(0.5)
    per = [set(x for x in keys(r)) for r in readers]
    assert not per[0] & per[1]  # no message went to both members
    assert len(got()) == len(bulk)  # and none twice
    assert all(len(p & bulk) > 20 for p in per)  # the load is really shared
    assert {d for d, _ in bulk} == {"dev0", "dev1"} == {d for p in per for d, _ in p}


def test_doc_recipe_two_consumers_share_each_message_once(tmp_path):
    script = tmp_path / "consumer.py"
    script.write_text(recipe())
    with Broker(tmp_path / "b", persistence=False) as b:
        pubs = publishers(tmp_path, b.port)
        readers = [Reader(subprocess.Popen([sys.executable, str(script), "g1", f"m{i}", "127.0.0.1", str(b.port)],
                                           stdout=subprocess.PIPE, text=True)) for i in range(2)]
        try:
            check_split(pubs, readers)
        finally:
            for r in readers:
                r.stop()
            for p in pubs:
                p.stop(2)
    assert all(set(m) == {"device", "id", "objects"} for r in readers for m in r.lines)


def test_watch_share_splits_between_two_watchers(tmp_path):
    with Broker(tmp_path / "b", persistence=False) as b:
        pubs = publishers(tmp_path, b.port)
        cmd = [str(EDGE_SSD), "watch", "--port", str(b.port), "--share", "g2", "--json"]
        readers = [Reader(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True), unwrap=True) for _ in range(2)]
        try:
            check_split(pubs, readers)
        finally:
            for r in readers:
                r.stop()
            for p in pubs:
                p.stop(2)
    assert all(r.proc.returncode == 0 for r in readers)


def test_watch_share_bad_group_is_one_line():
    r = subprocess.run([str(EDGE_SSD), "watch", "--share", "a/b", "--port", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and "--share" in r.stderr and r.stderr.count("\n") == 1
