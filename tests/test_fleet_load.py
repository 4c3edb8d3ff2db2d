"""The short form of bench/fleet_load.py (the long one is a benchmark, figures in the README): simulated devices
(real MqttPublisher instances with their own spools, in two processes) through one Mosquitto and through a site
Mosquitto bridged to a central one (deploy/mosquitto/site-bridge.conf), the central broker restarted twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _broker import have_mosquitto

pytestmark = [pytest.mark.integration, pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")]

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("topology, protocol", [("direct", 4), ("bridge", 5)])
def test_short_fleet_load_loses_nothing(tmp_path, topology, protocol):
    out = tmp_path / "r.json"
    r = subprocess.run([sys.executable, str(REPO / "bench" / "fleet_load.py"), "--devices", "8", "--rate", "5",
                        "--minutes", "0.5", "--processes", "2", "--topology", topology, "--protocol", str(protocol),
                        "--down", "2", "--out", str(out)], capture_output=True, text=True, timeout=400)
    assert out.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert r.stdout.count("central broker restarted") == 2
    assert res["produced"] >= 8 * 5 * 30 * 0.95  # the devices kept their rate through the outages
    assert res["lost"] == 0 and res["received_unique"] == res["produced"]
    assert res["order_violations"] == 0 and res["left_in_spools"] == 0
    lat = res["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["max"] >= 1000  # messages produced while the central broker was down waited (>= 2 s outages)
    roles = {"central_broker", "subscriber", "devices"} | ({"site_broker"} if topology == "bridge" else set())
    assert set(res["resources"]) == roles and all(v["rss_mb_peak"] > 0 for v in res["resources"].values())
    assert r.returncode == 0
