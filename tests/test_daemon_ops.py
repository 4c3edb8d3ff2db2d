"""The daemon as a real subprocess on a real Mosquitto: reload of a bundle replaced at the same path, stats of
an empty spool, a clean stop without warnings."""

from __future__ import annotations

import json
import shutil

import pytest
from _broker import (
    FACE_MODEL,
    Broker,
    Collector,
    NotifySocket,
    have_mosquitto,
    make_face_video,
    read_jsonl,
    start_daemon,
    stderr_of,
    stop_daemon,
    wait,
    write_config,
)

from edge_ssd.model.labels import LABELS_KEY as LABELS_META_KEY

pytestmark = [pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
              pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("video") / "faces.avi", frames=40)


def _config(tmp, video, port, model, **extra):
    return {
        "device": "opsdev",
        "model": {"bundle": str(model), "threads": 1},
        "sources": [{"name": "cam1", "url": str(video), "score_threshold": 0.6, "loop": True, "max_fps": 25.0}],
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_delay": 0.2,
                 "reconnect_max_delay": 1.0},
        "spool": {"dir": str(tmp / "spool"), "reserve_bytes": 65536},
        "stats_interval": 1,
        "sinks": {"file": {"path": str(tmp / "produced.jsonl"), "max_bytes": 1 << 30}},
        **extra,
    }


def _relabelled_onnx(src, dst, labels):
    """The same network with its labels in the metadata: a different file (sha256) with visible effect."""
    import onnx

    m = onnx.load(str(src))
    p = m.metadata_props.add()
    p.key, p.value = LABELS_META_KEY, json.dumps(labels)
    onnx.save(m, str(dst) + ".tmp")
    shutil.move(str(dst) + ".tmp", dst)


def test_reload_loads_bundle_replaced_at_same_path_and_clean_stop(tmp_path, video):
    model = tmp_path / "m" / "face.onnx"
    model.parent.mkdir()
    shutil.copy(FACE_MODEL, model)
    (model.parent / "face-labels.txt").write_text("BACKGROUND\nface\n")
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/#"]).start()
        cfg = write_config(tmp_path / "c.yaml", _config(tmp_path, video, b.port, model))
        notify = NotifySocket(tmp_path / "n.sock")
        p = start_daemon(cfg, notify)
        try:
            assert wait(lambda: notify.has("READY=1"), 60), stderr_of(cfg)
            assert wait(lambda: any(o["label"] == "face" for m in read_jsonl(tmp_path / "produced.jsonl")
                                    for o in m["objects"]), 20)
            # stats of an empty spool carry the real counters, not {}
            assert wait(lambda: any(s["spool"].get("queued") == 0 for s in col.json("/opsdev/stats")), 10)
            _relabelled_onnx(FACE_MODEL, model, ["BACKGROUND", "gesicht"])
            p.send_signal(1)
            assert wait(lambda: "changed on disk" in stderr_of(cfg), 20), stderr_of(cfg)
            assert wait(lambda: any(o["label"] == "gesicht" for m in read_jsonl(tmp_path / "produced.jsonl")
                                    for o in m["objects"]), 30), stderr_of(cfg)
            n = len(read_jsonl(tmp_path / "produced.jsonl"))
            p.send_signal(1)  # the same file again: the running model is kept
            assert wait(lambda: stderr_of(cfg).count("reload: applying") == 2, 20)
            assert wait(lambda: len(read_jsonl(tmp_path / "produced.jsonl")) > n + 5, 20)
            assert stderr_of(cfg).count("changed on disk") == 1
        finally:
            rc = stop_daemon(p)
            notify.close()
        col.stop()
    err = stderr_of(cfg)
    assert rc == 0, err
    assert "WARNING" not in err, err  # a clean stop (and reloads) warn about nothing
    assert "disconnected" in err  # the clean disconnect is logged, at INFO


def _scrape(port):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name + json.dumps(s.labels, sort_keys=True): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_prometheus_endpoint_matches_the_stats_topic_mqtt5(tmp_path, video):
    pytest.importorskip("prometheus_client")
    from _broker import free_port

    mport = free_port()
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/opsdev/stats"]).start()
        conf = _config(tmp_path, video, b.port, FACE_MODEL, metrics={"port": mport})
        conf["mqtt"].update(protocol=5, expiry={"detections": 60, "events": 600})  # and the daemon on MQTT 5
        cfg = write_config(tmp_path / "c.yaml", conf)
        p = start_daemon(cfg)
        try:
            assert wait(lambda: len(col.json("/stats")) >= 2, 60), stderr_of(cfg)
            m = _scrape(mport)
            stats = col.json("/stats")[-1]
        finally:
            assert stop_daemon(p) == 0
        col.stop()
    frames = m['edge_ssd_frames_total{"source": "cam1"}']
    assert frames >= stats["sources"]["cam1"]["processed"] > 0
    # the histograms saw every frame (observed just before the frame counter moves)
    for h in ("edge_ssd_e2e_latency_seconds", "edge_ssd_inference_seconds"):
        n = m[h + '_count{"source": "cam1"}']
        assert abs(n - frames) <= 2  # read a moment apart in one scrape
        assert m[h + '_sum{"source": "cam1"}'] > 0
    assert m["edge_ssd_mqtt_connected{}"] == 1 and m["edge_ssd_mqtt_connects_total{}"] >= 1
    assert m["edge_ssd_spool_queued{}"] >= 0 and 'edge_ssd_spool_dropped_total{"reason": "disk"}' in m
    assert m["edge_ssd_events_total{}"] >= stats["events"] > 0
    assert stats["latency_e2e_ms"]["p50"] > 0 and "queued" in stats["spool"]
