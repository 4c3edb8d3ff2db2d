"""Home Assistant device discovery: the payload's shape, and against a real Mosquitto the read-back of what the
broker retained (components of a removed source announced as removed, per-entity topics of edge-ssd 0.1
migrated) and ``edge-ssd ha remove``. tests/test_homeassistant_core.py runs the same against a real Home
Assistant."""

from __future__ import annotations

import json
import subprocess

import paho.mqtt.client as mqtt
import pytest
from _broker import REPO, Broker, Collector, have_mosquitto, write_config
from _broker import wait as _wait

from edge_ssd import __version__
from edge_ssd.daemon.config import parse_config
from edge_ssd.publish.homeassistant import SOURCE_STATES, DeviceDiscovery, device_payload
from edge_ssd.publish.mqtt import MqttPublisher
from edge_ssd.publish.spool import Spool
from edge_ssd.publish.topics import Topics

CFG = """\
device: Dev-1
model: {bundle: /m}
sources:
  - {name: cam, url: /dev/video0, labels: {include: [person, potted plant]}, snapshot: true}
  - {name: door, url: /dev/video1}
mqtt: {host: 127.0.0.1}
"""
LABELS = ["BACKGROUND", "person", "car", "potted plant"]
needs_broker = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")


def cfg_of(text: str = CFG):
    return parse_config(text, env={}).config


def test_device_payload_shape():
    p = device_payload(cfg_of(), Topics("edge-ssd", "Dev-1"), LABELS, "ssd-int8")
    assert p["dev"]["identifiers"] == ["edge_ssd_dev_1"] and p["dev"]["name"] == "Dev-1"
    assert p["o"]["name"] == "edge-ssd" and p["o"]["sw_version"] == __version__
    assert p["o"]["support_url"].startswith("https://")
    assert p["avty"] == [{"topic": "edge-ssd/Dev-1/available", "payload_available": "online",
                          "payload_not_available": "offline"}]
    cmps = p["cmps"]
    assert "object_id" not in json.dumps(p)
    for key, c in cmps.items():
        assert c["unique_id"] == f"edge_ssd_dev_1_{key}"
        assert c["default_entity_id"] == f"{c['p']}.edge_ssd_dev_1_{key}"
    # cam: include list -> per-label occupancy + counts; door: every model label but the background
    assert {k for k in cmps if k.startswith("cam_")} == {
        "cam_occupancy", "cam_count", "cam_person_occupancy", "cam_person_count", "cam_potted_plant_occupancy",
        "cam_potted_plant_count", "cam_snapshot", "cam_status", "cam_fps", "cam_inference_ms"}
    assert {k for k in cmps if k.startswith("door_") and k.endswith("_count")} == {
        "door_count", "door_person_count", "door_car_count", "door_potted_plant_count"}
    assert "door_snapshot" not in cmps  # no snapshots on that source
    assert cmps["cam_potted_plant_count"]["state_topic"] == "edge-ssd/Dev-1/cam/potted_plant/count"
    assert cmps["cam_snapshot"]["p"] == "image" and cmps["cam_snapshot"]["image_topic"].endswith("/cam/snapshot")
    counts = [c for c in cmps.values() if c["p"] == "sensor" and c["unique_id"].endswith("count")]
    assert counts and all("unit_of_measurement" not in c for c in counts)  # counts have no unit
    assert cmps["cam_status"]["device_class"] == "enum" and cmps["cam_status"]["options"] == list(SOURCE_STATES)
    assert {"starting", "streaming", "reconnecting", "failed", "ended"} <= set(SOURCE_STATES)
    inf = cmps["cam_inference_ms"]
    assert (inf["device_class"], inf["unit_of_measurement"]) == ("duration", "ms")
    assert all(cmps[k]["entity_category"] == "diagnostic" for k in ("cam_status", "cam_fps", "spool_queued"))


def test_merge_retained_announces_removed_components():
    t = Topics("edge-ssd", "Dev-1")
    old = DeviceDiscovery.for_config(cfg_of(), t, LABELS)
    one_source = CFG.split("  - {name: door")[0] + "mqtt: {host: 127.0.0.1}\n"
    new = DeviceDiscovery.for_config(cfg_of(one_source), t, LABELS)
    assert new.merge_retained(old.message())
    msg = json.loads(new.message())
    gone = {k: v for k, v in msg["cmps"].items() if k.startswith("door_")}
    assert gone and all(v in ({"p": "sensor"}, {"p": "binary_sensor"}) for v in gone.values())
    assert msg["cmps"]["cam_count"] == new.payload["cmps"]["cam_count"]
    assert not new.merge_retained(new.message())  # its own message changes nothing
    # a later start still carries the removals (a Home Assistant that was offline removes them too) ...
    later = DeviceDiscovery.for_config(cfg_of(one_source), t, LABELS)
    assert later.merge_retained(new.message()) and json.loads(later.message()) == msg
    # ... until the source comes back: then it is a full component again
    back = DeviceDiscovery.for_config(cfg_of(), t, LABELS)
    assert not back.merge_retained(new.message())
    assert json.loads(back.message()) == back.payload
    assert not back.merge_retained(b"not json") and not back.merge_retained(b"")


def _publisher(port, tmp_path, cfg_text=CFG):
    cfg, t = cfg_of(cfg_text), Topics("edge-ssd", "Dev-1")
    pub = MqttPublisher("127.0.0.1", port, topics=t, spool=Spool(tmp_path / "spool"), client_id="dev1-ha",
                        min_delay=0.1, max_delay=0.5, discovery_prefix="homeassistant")
    pub.set_discovery(DeviceDiscovery.for_config(cfg, t, LABELS, "m"))
    return pub


def _retain(port, messages: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


@needs_broker
def test_publisher_removes_a_dropped_source_and_migrates_legacy_topics(tmp_path):
    topic = "homeassistant/device/edge_ssd_dev_1/config"
    with Broker(tmp_path / "b", persistence=False) as b:
        first = _publisher(b.port, tmp_path).start()
        assert first.wait_connected(10)
        col = Collector(b.port, ["homeassistant/#"]).start()
        assert _wait(lambda: len(col.on(topic)) == 1, 10)
        first.stop(2)
        legacy = "homeassistant/sensor/edge_ssd_dev_1/cam_count/config"  # as edge-ssd 0.1 announced it
        _retain(b.port, [(legacy, json.dumps({"name": "cam objects", "unique_id": "edge_ssd_dev_1_cam_count",
                                              "object_id": "edge_ssd_dev_1_cam_count"}).encode())])
        one_source = CFG.split("  - {name: door")[0] + "mqtt: {host: 127.0.0.1}\n"
        second = _publisher(b.port, tmp_path, one_source).start()
        assert second.wait_connected(10)
        assert _wait(lambda: col.on(legacy)[-1:] == [b""], 10)
        seq = [(t, p) for t, p, _ in col.messages if t in (topic, legacy)][2:]  # after the first run's
        # migrate first, then clear, then the device message (once: held until the retained ones were read)
        kinds = [("migrate" if p.startswith(b'{"migrate') else "clear" if not p else "device") for t, p in seq]
        assert kinds == ["migrate", "clear", "device"], kinds
        msg = json.loads(seq[2][1])
        assert {k for k, v in msg["cmps"].items() if v.keys() == {"p"}} == {
            k for k in json.loads(col.on(topic)[0])["cmps"] if k.startswith("door_")}
        second.stop(2)
        col.stop()


@needs_broker
def test_ha_remove_clears_discovery_and_retained_state(tmp_path):
    with Broker(tmp_path / "b", persistence=False) as b:
        conf = tmp_path / "c.yaml"
        cfg = {"device": "Dev-1", "model": {"bundle": "/m"}, "sources": [{"name": "cam", "url": "/dev/video0"}],
               "mqtt": {"host": "127.0.0.1", "port": b.port}}
        write_config(conf, cfg)
        topic = "homeassistant/device/edge_ssd_dev_1/config"
        retained = [(topic, b'{"cmps":{}}'), ("homeassistant/sensor/edge_ssd_dev_1/cam_count/config", b"{}"),
                    ("edge-ssd/Dev-1/cam/count", b"3"), ("edge-ssd/Dev-1/available", b"online")]
        _retain(b.port, retained)
        ha = [str(REPO / ".venv" / "bin" / "edge-ssd"), "ha", "remove", "--config", str(conf)]
        r = subprocess.run(ha, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "is online" in r.stderr and "Traceback" not in r.stderr
        _retain(b.port, [("edge-ssd/Dev-1/available", b"offline")])
        r = subprocess.run(ha, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert "removed" in r.stdout and topic in r.stdout
        late = Collector(b.port, ["homeassistant/#", "edge-ssd/#"]).start()
        assert not _wait(lambda: late.messages, 1.0)  # nothing retained any more
        late.stop()
        write_config(conf, {**cfg, "mqtt": {"host": "127.0.0.1", "port": 1}})
        r = subprocess.run(ha, capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "cannot connect" in r.stderr and "Traceback" not in r.stderr


def _stage(root, config: str):
    """A staged install: a venv with an edge-ssd entry point and /etc/edge-ssd/config.yaml."""
    venv = root / "opt/edge-ssd/venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("")
    (venv / "bin/edge-ssd").write_text("#!/bin/sh\n")
    (venv / "bin/edge-ssd").chmod(0o755)
    conf = root / "etc/edge-ssd/config.yaml"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(config)


def test_uninstall_removes_the_device_from_home_assistant(tmp_path):
    """deploy/install.sh --uninstall runs 'edge-ssd ha remove' while the venv is still there (in a --root stage
    it is printed, not run: it talks to the live broker); a config without mqtt skips it."""
    root = tmp_path / "root"
    script = [str(REPO / "deploy" / "install.sh"), "--root", str(root), "--uninstall"]
    _stage(root, "device: d\nmqtt:\n  host: broker\n")
    r = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    step = [ln for ln in r.stdout.splitlines() if "remove the device from Home Assistant" in ln]
    assert step and "/opt/edge-ssd/venv/bin/edge-ssd ha remove --config /etc/edge-ssd/config.yaml" in step[0]
    assert r.stdout.index("Home Assistant") < r.stdout.index("remove /opt/edge-ssd/venv")  # before the venv goes
    _stage(root, "device: d\n")
    r = subprocess.run(script, capture_output=True, text=True, timeout=60)
    assert "no mqtt section" in r.stdout and "ha remove" not in r.stdout
