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


class V5Subscriber:
    """An MQTT 5 subscriber that records (topic, payload, message expiry interval or None)."""

    def __init__(self, port: int, topic: str, client_id: str):
        self.got: list[tuple[str, bytes, int | None]] = []
        self.port, self.topic, self.client_id = port, topic, client_id
        self.c = None

    def start(self, clean: bool) -> V5Subscriber:
        import time

        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        c.on_connect = lambda c, u, f, rc, p: c.subscribe(self.topic, qos=1)
        c.on_message = lambda c, u, m: self.got.append(
            (m.topic, bytes(m.payload), getattr(m.properties, "MessageExpiryInterval", None)))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600  # a persistent session: the broker queues while we are away
        c.connect("127.0.0.1", self.port, clean_start=clean, properties=props)
        c.loop_start()
        assert wait(lambda: c.is_connected(), 10)
        time.sleep(0.3)  # SUBACK
        self.c = c
        return self

    def stop(self) -> None:
        import time

        self.c.disconnect()
        time.sleep(0.3)  # let the DISCONNECT reach the broker before the loop stops
        self.c.loop_stop()


def test_mqtt5_expiry_drops_stale_spooled_messages_and_tells_the_broker(tmp_path):
    import time

    b = Broker(tmp_path / "b", persistence=False)
    t = Topics("edge-ssd", "dev1")
    pub = MqttPublisher("127.0.0.1", b.port, topics=t, spool=Spool(tmp_path / "spool"), client_id="dev1-v5",
                        min_delay=0.1, max_delay=0.3, protocol=5, expiry={"detections": 3.0})
    for i in range(5):  # spooled during an outage longer than their expiry
        pub.publish_durable(t.detections("cam"), f"old{i}".encode())
    pub.publish_durable(t.events, b"event0")  # events: no expiry configured, never dropped
    time.sleep(3.2)
    for i in range(3):
        pub.publish_durable(t.detections("cam"), f"new{i}".encode())
    b.start()
    sub = V5Subscriber(b.port, "edge-ssd/#", "v5-sub").start(clean=True)
    pub.start()
    try:
        assert wait(lambda: len([g for g in sub.got if g[0] != t.available]) >= 4, 15)
        got = [g for g in sub.got if g[0] != t.available]
        assert [p for _, p, _ in got] == [b"event0", b"new0", b"new1", b"new2"]  # in order, the stale ones gone
        assert got[0][2] is None and all(1 <= e <= 3 for _, _, e in got[1:])  # the rest of their freshness
        assert pub.spool.stats()["dropped_expired"] == 5
        assert wait(lambda: len(pub.spool) == 0, 10)  # deleted when the PUBACKs arrive, just after delivery
        # the broker honours it: an offline subscriber does not get a detection that went stale meanwhile
        sub.stop()
        pub.publish_durable(t.detections("cam"), b"while-away")
        pub.publish_durable(t.events, b"event1")
        assert wait(lambda: len(pub.spool) == 0, 10)
        time.sleep(5.0)  # its 3 s, and Mosquitto checks expiry at whole seconds
        sub.got.clear()
        sub.start(clean=False)
        assert wait(lambda: any(p == b"event1" for _, p, _ in sub.got), 10)
        assert not any(p == b"while-away" for _, p, _ in sub.got), sub.got
    finally:
        sub.stop()
        pub.stop(2)
        b.stop()
