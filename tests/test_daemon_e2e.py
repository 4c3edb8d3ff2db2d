"""End to end: the daemon as a real subprocess (`.venv/bin/edge-ssd run`), a real Mosquitto broker, the ONNX
face model on a video made from the shared face photos, and a NOTIFY_SOCKET bound here."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from _broker import (
    FACE_LABELS,
    FACE_MODEL,
    Broker,
    Collector,
    NotifySocket,
    first_occurrences,
    have_mosquitto,
    make_face_video,
    read_jsonl,
    start_daemon,
    stderr_of,
    stop_daemon,
    write_config,
)
from _broker import wait as _wait

pytestmark = [pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
              pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("video") / "faces.avi", frames=40)


def daemon_config(tmp, video, port, *, loop=True, max_fps=25.0, **mqtt_extra):
    mq = {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_delay": 0.2,
          "reconnect_max_delay": 1.0, **mqtt_extra}
    return {
        "device": "testdev",
        "model": {"bundle": str(FACE_MODEL), "labels": str(FACE_LABELS), "threads": 1},
        "sources": [{"name": "cam1", "url": str(video), "score_threshold": 0.6, "loop": loop, "max_fps": max_fps,
                     "labels": {"include": ["face"]}}],
        "mqtt": mq,
        "spool": {"dir": str(tmp / "spool"), "reserve_bytes": 65536},
        "stats_interval": 1,
        "flush_timeout": 20,
        "sinks": {"file": {"path": str(tmp / "produced.jsonl"), "max_bytes": 1 << 30}},
    }


def wait(pred, timeout=30.0):
    return _wait(pred, timeout)


def test_detections_arrive_exactly_as_produced_with_notify(tmp_path, video):
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/#", "homeassistant/#"]).start()
        notify = NotifySocket(tmp_path / "notify.sock")
        cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, b.port))
        p = start_daemon(cfg, notify, watchdog_usec=2_000_000)
        try:
            assert wait(lambda: notify.has("READY=1"), 60), stderr_of(cfg)
            assert wait(lambda: len(col.on("/cam1/detections")) >= 40, 30)
            assert wait(lambda: notify.has("WATCHDOG=1"), 10)
        finally:
            rc = stop_daemon(p)
        notify.close()
        assert rc == 0, stderr_of(cfg)
        assert wait(lambda: col.on("/available")[-1:] == [b"offline"], 10)
        col.stop()
    produced = read_jsonl(tmp_path / "produced.jsonl")
    got = col.json("/cam1/detections")
    keys, dups = first_occurrences(got)
    assert keys == [m["id"] for m in produced]
    assert dups == 0  # the broker stayed up: nothing was re-delivered
    by_key = {m["id"]: m for m in got}
    for m in produced:  # the payload is the produced detection, byte for byte in content
        assert by_key[m["id"]] == m
    assert sum(len(m["objects"]) for m in produced) > 0
    assert all(o["label"] == "face" and o["score"] >= 0.6 for m in produced for o in m["objects"])
    # READY came after at least one frame, STATUS lines carry the FPS
    lines = notify.lines()
    assert any(line.startswith("STATUS=") and "fps" in line for line in lines)
    assert lines.index("READY=1") < max(i for i, line in enumerate(lines) if line == "WATCHDOG=1")
    assert "STOPPING=1" in lines
    # retained state: availability online then offline, counts, HA discovery, stats, status
    assert col.on("/available")[0] == b"online"
    counts = [int(x) for x in col.on("/cam1/face/count")]
    # counts are the confirmed tracks in view: at the end, at most the ones the stop ended (their end came after
    # the last frame) and at most what the last two frames showed (a missed object is held for one frame)
    events = col.json("edge-ssd/testdev/events")
    alive = [e for e in events if e["type"] == "end" and e["ts"] > produced[-1]["ts"]]
    assert counts and 0 < counts[-1] <= len(alive)
    assert counts[-1] <= len(produced[-1]["objects"]) + len(produced[-2]["objects"])
    assert all(a != b for a, b in zip(counts, counts[1:], strict=False))  # published on change only
    disc = [json.loads(x) for x in col.on("homeassistant/device/edge_ssd_testdev/config")]
    uids = {c["unique_id"] for c in disc[-1]["cmps"].values()}
    assert {"edge_ssd_testdev_cam1_occupancy", "edge_ssd_testdev_cam1_face_count"} <= uids
    assert disc[-1]["avty"][0]["topic"] == "edge-ssd/testdev/available"
    stats = col.json("edge-ssd/testdev/stats")
    assert stats and stats[-1]["processed"] >= len(produced) - 2 and "spool" in stats[-1]
    status = col.json("/cam1/status")
    assert status and "fps" in status[-1]


def test_broker_killed_mid_run_nothing_lost_in_order(tmp_path, video):
    """SIGKILL the broker mid-run, keep it down 3 s, restart it: the persistent subscriber receives every
    produced detection, in order. Re-deliveries (PUBACK lost with the connection) are allowed and counted:
    QoS 1 is at-least-once; they are detected by (source, frame)."""
    b = Broker(tmp_path / "broker").start()
    col = Collector(b.port, ["edge-ssd/testdev/+/detections"], client_id="persist-sub", persistent=True).start()
    time.sleep(1.5)  # the broker autosaves every second: the subscriber's session survives its SIGKILL
    cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, b.port))
    p = start_daemon(cfg)
    try:
        assert wait(lambda: len(col.on("/detections")) >= 20, 60), stderr_of(cfg)
        b.kill()
        down_at = len(read_jsonl(tmp_path / "produced.jsonl"))
        time.sleep(3.0)
        produced_while_down = len(read_jsonl(tmp_path / "produced.jsonl")) - down_at
        b.start()
        assert wait(lambda: len(col.on("/detections")) >= down_at + produced_while_down + 20, 60)
    finally:
        rc = stop_daemon(p)
    assert rc == 0, stderr_of(cfg)
    produced = read_jsonl(tmp_path / "produced.jsonl")
    assert wait(lambda: len(first_occurrences(col.json("/detections"))[0]) >= len(produced), 20)
    col.stop()
    b.stop()
    keys, dups = first_occurrences(col.json("/detections"))
    assert produced_while_down > 10  # the outage really happened while frames were produced
    assert keys == [m["id"] for m in produced]
    assert "disconnected" in stderr_of(cfg)
    print(f"produced {len(produced)}, {produced_while_down} during the outage, re-delivered {dups}")


def test_unreachable_broker_at_start_spools_then_delivers(tmp_path, video):
    b = Broker(tmp_path / "broker").start()
    port = b.port
    # register a persistent session, then take the broker away (graceful stop: the session is saved)
    Collector(port, ["edge-ssd/testdev/+/detections"], client_id="late-sub", persistent=True).start().stop()
    b.stop()
    notify = NotifySocket(tmp_path / "n.sock")
    cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, port))
    p = start_daemon(cfg, notify)
    try:
        assert wait(lambda: notify.has("READY=1"), 60), stderr_of(cfg)  # starts anyway
        assert wait(lambda: len(read_jsonl(tmp_path / "produced.jsonl")) >= 30, 30)
        assert p.poll() is None
        assert "cannot connect" in stderr_of(cfg)
        assert (tmp_path / "spool" / "spool.sqlite3").exists()
        b.start()
        col = Collector(port, ["edge-ssd/testdev/+/detections"], client_id="late-sub", persistent=True).start()
        assert wait(lambda: len(col.on("/detections")) >= 30, 30)
    finally:
        rc = stop_daemon(p)
        notify.close()
    assert rc == 0
    produced = read_jsonl(tmp_path / "produced.jsonl")
    assert wait(lambda: len(first_occurrences(col.json("/detections"))[0]) >= len(produced), 20)
    col.stop()
    b.stop()
    keys, _ = first_occurrences(col.json("/detections"))
    assert keys == [m["id"] for m in produced]


def test_sigkilled_daemon_last_will_offline(tmp_path, video):
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/testdev/available"]).start()
        cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, b.port))
        p = start_daemon(cfg)
        try:
            assert wait(lambda: b"online" in col.on("/available"), 60), stderr_of(cfg)
        finally:
            p.kill()
            p.wait()
        assert wait(lambda: col.on("/available")[-1:] == [b"offline"], 15)
        col.stop()
        # the broker keeps "offline" retained for anyone subscribing later
        late = Collector(b.port, ["edge-ssd/testdev/available"]).start()
        assert wait(lambda: late.on("/available") == [b"offline"], 5)
        late.stop()


def test_wrong_password_one_clear_line_keeps_retrying(tmp_path, video):
    with Broker(tmp_path / "broker", users={"edge": "right"}) as b:
        (tmp_path / "pw").write_text("wrong\n")
        cfg = write_config(tmp_path / "c.yaml",
                           daemon_config(tmp_path, video, b.port, username="edge", password_file="pw"))
        p = start_daemon(cfg)
        try:
            assert wait(lambda: "refused the connection" in stderr_of(cfg), 60), stderr_of(cfg)
            time.sleep(3.0)  # several retries happen meanwhile (backoff 0.2 .. 1 s)
            assert p.poll() is None
        finally:
            rc = stop_daemon(p)
        assert rc == 0
        err = [line for line in stderr_of(cfg).splitlines() if "refused the connection" in line]
        assert len(err) == 1 and "password" in err[0]  # logged once, says what to check
        # the right password via the environment override connects
        p = start_daemon(cfg, env={"EDGE_SSD_MQTT_PASSWORD": "right"})
        col = Collector(b.port, ["edge-ssd/testdev/available"], username="edge", password="right").start()
        try:
            assert wait(lambda: b"online" in col.on("/available"), 60), stderr_of(cfg)
        finally:
            assert stop_daemon(p) == 0
            col.stop()


def test_sighup_reload_bad_config_keeps_running(tmp_path, video):
    import yaml

    with Broker(tmp_path / "broker") as b:
        conf = daemon_config(tmp_path, video, b.port)
        cfg = write_config(tmp_path / "c.yaml", conf)
        notify = NotifySocket(tmp_path / "n.sock")
        p = start_daemon(cfg, notify)
        try:
            assert wait(lambda: notify.has("READY=1"), 60), stderr_of(cfg)
            cfg.write_text(cfg.read_text() + "bogus_key: 1\n")
            p.send_signal(1)
            assert wait(lambda: "reload: new config is invalid" in stderr_of(cfg), 10)
            assert "bogus_key: unknown key" in stderr_of(cfg)
            n = len(read_jsonl(tmp_path / "produced.jsonl"))
            assert wait(lambda: len(read_jsonl(tmp_path / "produced.jsonl")) > n + 5, 10)  # still running
            conf["sources"][0]["score_threshold"] = 0.9
            cfg.write_text(yaml.safe_dump(conf))
            p.send_signal(1)
            assert wait(lambda: "reload: applying" in stderr_of(cfg), 10)
            assert wait(lambda: notify.has("STATUS=reloaded"), 20)
            assert p.poll() is None
        finally:
            assert stop_daemon(p) == 0
            notify.close()


def test_config_check_cli_on_daemon_config(tmp_path, video):
    from _broker import REPO

    cfg = write_config(tmp_path / "c.yaml", daemon_config(tmp_path, video, 1883))
    exe = str(REPO / ".venv" / "bin" / "edge-ssd")
    r = subprocess.run([exe, "config", "check", str(cfg)], capture_output=True, text=True)
    assert r.returncode == 0 and "device: testdev" in r.stdout


def test_full_spool_disk_keeps_running_counts_drops(tmp_path, video):
    """The spool lives on a 512 KiB tmpfs and the broker is down: the disk fills (real ENOSPC), the daemon logs
    one line, counts the drops and keeps running; when the broker appears the stored messages are delivered in
    order and the drop count is visible in the stats."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        b = Broker(tmp_path / "broker").start()
        port = b.port
        Collector(port, ["edge-ssd/testdev/#"], client_id="disk-sub", persistent=True).start().stop()
        b.stop()
        conf = daemon_config(tmp_path, video, port, max_fps=200)
        conf["spool"] = {"dir": str(mnt / "spool"), "reserve_bytes": 96 * 1024}
        cfg = write_config(tmp_path / "c.yaml", conf)
        p = start_daemon(cfg)
        try:
            assert wait(lambda: "disk full" in stderr_of(cfg), 90), stderr_of(cfg)
            n = len(read_jsonl(tmp_path / "produced.jsonl"))
            assert wait(lambda: len(read_jsonl(tmp_path / "produced.jsonl")) > n + 20, 20)  # still detecting
            assert p.poll() is None
            b.start()
            col = Collector(port, ["edge-ssd/testdev/#"], client_id="disk-sub", persistent=True).start()
            assert wait(lambda: any(s["spool"].get("dropped_disk", 0) > 0 for s in col.json("/stats")), 30)
        finally:
            rc = stop_daemon(p)
        assert rc == 0
        time.sleep(1.0)
        col.stop()
        b.stop()
    finally:
        subprocess.run(["umount", "-l", str(mnt)])
    err = stderr_of(cfg)
    assert err.count("disk full") >= 1 and err.count("disk full") <= err.count("works again") + 1
    produced = [m["id"] for m in read_jsonl(tmp_path / "produced.jsonl")]
    keys, _ = first_occurrences(col.json("/detections"))
    pos = {k: i for i, k in enumerate(produced)}
    idx = [pos[k] for k in keys]
    assert idx == sorted(idx) and 0 < len(keys) < len(produced)  # in order; the overflow was dropped
