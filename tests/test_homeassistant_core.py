"""The daemon against a REAL Home Assistant core (``make test-integration``).

Home Assistant 2025.4 (scripts/setup-ha.sh, its own cached venv) with the MQTT integration and the recorder,
on the test's Mosquitto; the real daemon on a looping video in which faces come and go. Read back from Home
Assistant itself: the device and entity registries (.storage), the recorder's database and its log:

- the device and every announced entity appear (the unique ids of the device message), on the device;
- the states follow the video: occupancy on and off again, counts as published, status ``streaming``;
- every entity goes ``unavailable`` when the daemon stops, and comes back after a daemon restart and after a
  Home Assistant restart (the re-announce on its birth message plus the retained states);
- a source removed from the config (restart with one source fewer) removes its entities;
- ``edge-ssd ha remove`` removes the device;
- the log has no warning or error caused by our payloads (templates, discovery, schema, deprecations).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from _broker import (
    FACE_LABELS,
    FACE_MODEL,
    REPO,
    SHARED,
    Broker,
    Collector,
    have_mosquitto,
    start_daemon,
    stderr_of,
    stop_daemon,
    write_config,
)
from _broker import wait as _wait
from _hass import HomeAssistant, ha_venv, ha_version, slugify

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
              pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")]

DEVICE = "hatest"


def face_video(path, seconds_on: int = 3, seconds_off: int = 3, fps: int = 10, size=(320, 240)):
    """Faces for ``seconds_on``, an empty grey frame for ``seconds_off``, twice (two different photos)."""
    import cv2
    import numpy as np

    photos = sorted((SHARED / "data" / "faces").glob("*.jpg"))[:2]
    blank = np.full((size[1], size[0], 3), 128, np.uint8)
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for p in photos:
        img = cv2.resize(cv2.imread(str(p)), size)
        for i in range(seconds_on * fps):
            vw.write(np.roll(img, (i % 5) * 3, axis=1))
        for _ in range(seconds_off * fps):
            vw.write(blank)
    vw.release()
    return path


def daemon_config(tmp, video, port, sources=("cam1", "cam2")):
    src = [{"name": n, "url": str(video), "score_threshold": 0.6, "loop": True, "max_fps": 10,
            "labels": {"include": ["face"]}, "snapshot": n == "cam1"} for n in sources]
    return {"device": DEVICE, "model": {"bundle": str(FACE_MODEL), "labels": str(FACE_LABELS), "threads": 1},
            "sources": src,
            "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_delay": 0.2,
                     "reconnect_max_delay": 1.0},
            "spool": {"dir": str(tmp / "spool")}, "stats_interval": 2, "flush_timeout": 5}


def entity_ids(device_msg: dict, version: tuple[int, int]) -> dict[str, str]:
    """unique_id -> the entity_id Home Assistant gives it: ``default_entity_id`` from 2025.10 on, before that
    the slug of device name + entity name."""
    out = {}
    for c in device_msg["cmps"].values():
        if version >= (2025, 10):
            out[c["unique_id"]] = c["default_entity_id"]
        else:
            out[c["unique_id"]] = f"{c['p']}.{slugify(DEVICE + ' ' + c['name'])}"
    return out


def _publish(port: int, messages: list[tuple[str, bytes]], retain: bool = False) -> None:
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.connect("127.0.0.1", port)
    c.loop_start()
    for topic, payload in messages:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


def legacy_entity(port: int) -> tuple[str, str]:
    """Announce one entity the way edge-ssd 0.1 did (per-entity topic, object_id): an upgraded install.
    Returns (topic, entity_id)."""
    uid = f"edge_ssd_{DEVICE}_cam1_count"
    topic = f"homeassistant/sensor/edge_ssd_{DEVICE}/cam1_count/config"
    payload = {"name": "cam1 objects", "unique_id": uid, "object_id": uid,
               "device": {"identifiers": [f"edge_ssd_{DEVICE}"], "name": DEVICE, "manufacturer": "edge-ssd",
                          "model": "edge-ssd", "sw_version": "0.1.0"},
               "availability": [{"topic": f"edge-ssd/{DEVICE}/available", "payload_available": "online",
                                 "payload_not_available": "offline"}],
               "state_topic": f"edge-ssd/{DEVICE}/cam1/count", "state_class": "measurement",
               "unit_of_measurement": "objects", "icon": "mdi:counter"}
    _publish(port, [(topic, json.dumps(payload).encode())], retain=True)
    return topic, f"sensor.{uid}"


def latest(ha: HomeAssistant, ids, since: float = 0.0) -> dict[str, str | None]:
    st = ha.states(since)
    return {e: st[e][-1] for e in ids if e in st}


# what Home Assistant logs about its own environment here (run with --skip-pip, no libturbojpeg, no zlib-ng):
# nothing to do with what we publish. Every other WARNING or ERROR fails the test.
ENVIRONMENT = ("[homeassistant.bootstrap] Skipping pip installation",
               "[aiohttp_fast_zlib] zlib_ng and isal are not available",
               "[homeassistant.components.camera.img_util] Error loading libturbojpeg")


def ours(problem: str) -> bool:
    return not any(s in problem.splitlines()[0] for s in ENVIRONMENT)


def test_daemon_in_home_assistant(tmp_path):
    t_build = time.monotonic()
    venv = ha_venv()
    print(f"Home Assistant venv ready in {time.monotonic() - t_build:.0f} s: {venv}")
    version = ha_version(venv)
    assert version >= (2024, 11), "device-based MQTT discovery needs Home Assistant 2024.11 or later"
    video = face_video(tmp_path / "faces.avi")
    b = Broker(tmp_path / "broker").start()
    col = Collector(b.port, ["homeassistant/#", f"edge-ssd/{DEVICE}/#"]).start()
    ha = HomeAssistant(venv, tmp_path / "ha", b.port).start()
    daemon = None
    try:
        assert ha.wait_online(col), "Home Assistant did not connect to the broker"
        # 0. an entity of edge-ssd 0.1 (per-entity discovery): the daemon migrates it, id and history kept
        legacy_topic, legacy_id = legacy_entity(b.port)
        assert _wait(lambda: legacy_id in ha.states(), 60), "Home Assistant did not discover the 0.1 entity"
        cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, b.port))
        daemon = start_daemon(cfg)
        topic = f"homeassistant/device/edge_ssd_{DEVICE}/config"
        assert _wait(lambda: col.on(topic), 60), stderr_of(cfg)
        msg = json.loads(col.on(topic)[-1])
        ids = {**entity_ids(msg, version), f"edge_ssd_{DEVICE}_cam1_count": legacy_id}
        cam1 = {u: e for u, e in ids.items() if "_cam1_" in u}
        cam2 = {u: e for u, e in ids.items() if "_cam2_" in u}
        occ = ids[f"edge_ssd_{DEVICE}_cam1_face_occupancy"]
        count = ids[f"edge_ssd_{DEVICE}_cam1_face_count"]
        status = ids[f"edge_ssd_{DEVICE}_cam1_status"]
        image = ids[f"edge_ssd_{DEVICE}_cam1_snapshot"]
        # 1. every entity gets a real state; occupancy follows the video (on, off, on again)
        def followed():
            st = ha.states()
            o = [s for s in st.get(occ, []) if s in ("on", "off")]
            return (all(latest(ha, ids.values()).get(e) not in (None, "unknown", "unavailable")
                        for e in ids.values())
                    and o.count("on") >= 2 and "off" in o[o.index("on"):])
        assert _wait(followed, 150), (latest(ha, ids.values()), ha.states().get(occ), ha.log_problems())
        assert col.on(legacy_topic)[-1] == b""  # the old topic cleared after the migration
        st = ha.states()
        published = {p.decode() for p in col.on(f"edge-ssd/{DEVICE}/cam1/face/count")}
        assert set(st[count]) - {"unavailable", "unknown"} <= published and {"0"} < set(st[count])
        assert latest(ha, [status])[status] == "streaming"
        assert float(latest(ha, [ids[f"edge_ssd_{DEVICE}_cam1_fps"]])[ids[f"edge_ssd_{DEVICE}_cam1_fps"]]) > 0
        assert float(latest(ha, [ids[f"edge_ssd_{DEVICE}_spool_queued"]])[ids[f"edge_ssd_{DEVICE}_spool_queued"]]) >= 0
        assert latest(ha, [image])[image] not in (None, "unknown")  # an image entity's state: its last update
        # payloads missing what the templates read (an empty spool's old {}, a status without fps): no warning
        _publish(b.port, [(f"edge-ssd/{DEVICE}/stats", b'{"schema":1,"spool":{}}'),
                          (f"edge-ssd/{DEVICE}/cam1/status", b'{"schema":1,"state":"starting"}'),
                          (f"edge-ssd/{DEVICE}/cam1/status", b'{"schema":1,"state":"no such state"}')])
        # 2. daemon stops: everything unavailable
        assert stop_daemon(daemon) == 0, stderr_of(cfg)
        assert _wait(lambda: set(latest(ha, ids.values()).values()) == {"unavailable"}, 30), latest(ha, ids.values())
        # 3. daemon restarts, without cam2: cam1 back, cam2's entities removed
        t_restart, n_restart = time.time(), len(col.messages)
        cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, b.port, sources=("cam1",)))
        daemon = start_daemon(cfg)
        assert _wait(lambda: all(latest(ha, cam1.values(), t_restart).get(e) not in (None, "unavailable")
                                 for e in cam1.values()), 90), latest(ha, cam1.values(), t_restart)
        # no count before the first frame of this run (the retained ones stand until then: no 0 blip)
        after = [t for t, _, _ in col.messages[n_restart:]]
        first_frame = next(i for i, t in enumerate(after) if t.endswith("/detections"))
        assert not [t for t in after[:first_frame] if t.endswith("/count")]
        # 4. Home Assistant restarts: registries written on the way out; everything back after the start
        ha.stop()
        devices = ha.registry("core.device_registry")
        dev = [d for d in devices["devices"] if ["mqtt", f"edge_ssd_{DEVICE}"] in d["identifiers"]]
        assert len(dev) == 1 and dev[0]["sw_version"] and dev[0]["manufacturer"] == "edge-ssd"
        entities = {e["unique_id"]: e for e in ha.registry("core.entity_registry")["entities"]
                    if e["platform"] == "mqtt"}
        assert set(cam1) | {f"edge_ssd_{DEVICE}_spool_queued"} <= set(entities), sorted(entities)
        assert not set(cam2) & set(entities), "a removed source's entities are still registered"
        assert all(entities[u]["device_id"] == dev[0]["id"] for u in cam1)
        assert all(entities[u]["entity_id"] == e for u, e in cam1.items())
        t_ha, announced = time.time(), len(col.on(topic))
        ha.start()
        assert ha.wait_online(col)
        assert _wait(lambda: len(col.on(topic)) > announced, 10)  # re-announced on Home Assistant's birth
        assert _wait(lambda: all(latest(ha, cam1.values(), t_ha).get(e) not in (None, "unknown", "unavailable")
                                 for e in cam1.values()), 90), latest(ha, cam1.values(), t_ha)
        # 5. the daemon removed from Home Assistant
        assert stop_daemon(daemon) == 0, stderr_of(cfg)
        daemon = None
        r = subprocess.run([str(REPO / ".venv" / "bin" / "edge-ssd"), "ha", "remove", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        time.sleep(3)  # Home Assistant removes the device and its entities
        ha.stop()
        devices = ha.registry("core.device_registry")
        assert not [d for d in devices["devices"] if ["mqtt", f"edge_ssd_{DEVICE}"] in d["identifiers"]]
        assert not {e["unique_id"] for e in ha.registry("core.entity_registry")["entities"]} & set(ids)
        # 6. nothing we sent made Home Assistant complain
        problems = [p for p in ha.log_problems() if ours(p)]
        assert not problems, "\n".join(problems)
    finally:
        if daemon is not None:
            stop_daemon(daemon)
        ha.stop()
        col.stop()
        b.stop()
