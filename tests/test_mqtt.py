"""MqttPublisher against a real broker: state re-published after every reconnect, Home Assistant re-announce,
spool order across a broker restart."""

from __future__ import annotations

import json

import pytest
from _broker import Broker, Collector, have_mosquitto
from _broker import wait as _wait

from edge_ssd.daemon.config import parse_config
from edge_ssd.publish.homeassistant import DeviceDiscovery
from edge_ssd.publish.mqtt import MqttPublisher
from edge_ssd.publish.spool import Spool
from edge_ssd.publish.topics import Topics

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")

CFG = """\
device: dev1
model: {bundle: /m}
sources:
  - {name: cam, url: /dev/video0, labels: {include: [person, car]}}
mqtt: {host: 127.0.0.1}
"""


def wait(pred, timeout=15.0):
    return _wait(pred, timeout)


def make_pub(port, tmp_path):
    cfg = parse_config(CFG, env={}).config
    t = Topics("edge-ssd", "dev1")
    pub = MqttPublisher("127.0.0.1", port, topics=t, spool=Spool(tmp_path / "spool"), client_id="dev1-test",
                        min_delay=0.1, max_delay=0.5, discovery_prefix="homeassistant")
    pub.set_discovery(DeviceDiscovery.for_config(cfg, t, ["BACKGROUND", "person", "car"], "m"))
    return pub, t


def test_state_republished_after_broker_restart_without_persistence(tmp_path):
    b = Broker(tmp_path / "b", persistence=False).start()
    pub, t = make_pub(b.port, tmp_path)
    pub.start()
    pub.set_state(t.count("cam", "person"), "2")
    assert pub.wait_connected(10)
    b.stop()  # retained messages are gone with it
    b.start()
    assert wait(lambda: pub.connected and pub.connects >= 2, 20)
    late = Collector(b.port, ["edge-ssd/#", "homeassistant/#"]).start()
    assert wait(lambda: late.on("/cam/person/count") == [b"2"] and late.on("/available") == [b"online"])
    configs = [json.loads(p) for p in late.on("homeassistant/device/edge_ssd_dev1/config")]
    assert len(configs) == 1
    assert {c["unique_id"] for c in configs[0]["cmps"].values()} >= {
        "edge_ssd_dev1_cam_person_count", "edge_ssd_dev1_cam_car_count", "edge_ssd_dev1_cam_occupancy",
        "edge_ssd_dev1_cam_fps"}
    late.stop()
    pub.stop(2)
    b.stop()


def test_homeassistant_online_triggers_reannounce(tmp_path):
    with Broker(tmp_path / "b", persistence=False) as b:
        pub, t = make_pub(b.port, tmp_path)
        pub.start()
        assert pub.wait_connected(10)
        col = Collector(b.port, ["homeassistant/device/+/config"]).start()
        assert wait(lambda: len(col.on("/config")) > 0)
        n = len(col.on("/config"))
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        c.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert wait(lambda: len(col.on("/config")) >= 2 * n)  # the device message announced again
        c.loop_stop()
        col.stop()
        pub.stop(2)


def test_stop_flushes_spool_then_offline(tmp_path):
    with Broker(tmp_path / "b", persistence=False) as b:
        col = Collector(b.port, ["edge-ssd/#"]).start()
        pub, t = make_pub(b.port, tmp_path)
        for i in range(500):  # queued before the first connection
            pub.publish_durable(t.detections("cam"), str(i).encode())
        pub.start()
        assert pub.stop(10)  # drained
        assert wait(lambda: col.on("/available")[-1:] == [b"offline"])
        assert [int(x) for x in col.on("/detections")] == list(range(500))
        assert len(pub.spool) == 0
        col.stop()
