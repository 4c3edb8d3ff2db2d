"""`edge-ssd watch`: the reference subscriber, against a real broker."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from _broker import Broker, have_mosquitto

from edge_ssd.commands.watch import render

REPO = Path(__file__).resolve().parents[1]
EXE = str(REPO / ".venv" / "bin" / "edge-ssd")
MSG = {"schema": 1, "device": "d1", "source": "cam", "frame": 7, "ts": 1.0, "width": 640, "height": 480,
       "model": "m", "inference_ms": 4.2,
       "objects": [{"label": "person", "class_id": 15, "score": 0.91, "box": [0.1, 0.2, 0.3, 0.4],
                    "box_px": [64, 96, 192, 192]}]}


def test_render_table():
    t = render({"d1/cam": {"fps": 9.5, "t": 0, "msg": MSG}})
    assert "d1/cam" in t and "person" in t and "0.91" in t and "0.100,0.200,0.300,0.400" in t and "9.5" in t


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
@pytest.mark.parametrize("as_json", [True, False])
def test_watch_once(tmp_path, as_json):
    import paho.mqtt.client as mqtt

    with Broker(tmp_path / "b", persistence=False) as b:
        args = [EXE, "watch", "--port", str(b.port), "--device", "d1", "--once", "2", "--timeout", "20"]
        w = subprocess.Popen(args + (["--json"] if as_json else []), stdout=subprocess.PIPE, text=True)
        assert b.wait_subscribed("edge-ssd/d1/#"), "watch did not subscribe"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        for f in (7, 8):
            c.publish("edge-ssd/d1/cam/detections", json.dumps({**MSG, "frame": f}), qos=1).wait_for_publish(5)
        c.publish("edge-ssd/other/cam/detections", json.dumps(MSG), qos=1).wait_for_publish(5)
        out, _ = w.communicate(timeout=30)
        c.loop_stop()
    assert w.returncode == 0
    if as_json:
        lines = [json.loads(x) for x in out.splitlines()]
        assert [x["payload"]["frame"] for x in lines] == [7, 8]
        assert lines[0]["topic"] == "edge-ssd/d1/cam/detections"
    else:
        assert "d1/cam" in out and "person" in out and "other" not in out


def test_watch_unreachable_broker_one_line():
    from _broker import free_port

    r = subprocess.run([EXE, "watch", "--port", str(free_port()), "--once", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("edge-ssd: error: cannot connect") and r.stderr.count("\n") == 1


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
def test_watch_password_file_and_environment_not_the_command_line(tmp_path):
    """The password comes from --password-file or EDGE_SSD_MQTT_PASSWORD (never visible in `ps`); a wrong one
    is refused in one line that does not print it."""
    import os

    with Broker(tmp_path / "b", users={"viewer": "right-pw"}, persistence=False) as b:
        pw = tmp_path / "pw"
        pw.write_text("right-pw\n")
        base = [EXE, "watch", "--port", str(b.port), "--username", "viewer", "--timeout", "1.5"]
        env = {k: v for k, v in os.environ.items() if k != "EDGE_SSD_MQTT_PASSWORD"}
        ok = subprocess.run(base + ["--password-file", str(pw)], capture_output=True, text=True, env=env)
        assert ok.returncode == 1 and ok.stderr == ""  # connected, no message within --timeout
        via_env = subprocess.run(base, capture_output=True, text=True,
                                 env={**env, "EDGE_SSD_MQTT_PASSWORD": "right-pw"})
        assert via_env.returncode == 1 and via_env.stderr == ""
        pw.write_text("wrong-pw\n")
        bad = subprocess.run(base + ["--password-file", str(pw)], capture_output=True, text=True, env=env)
        assert bad.returncode == 2 and "refused" in bad.stderr and "wrong-pw" not in bad.stderr
        assert bad.stderr.count("\n") == 1
        old = subprocess.run(base + ["--password", "right-pw"], capture_output=True, text=True, env=env)
        assert old.returncode == 1 and "--password-file" in old.stderr and "right-pw" not in old.stderr
