"""JSON Schemas: `edge-ssd config schema` describes the config the daemon accepts, and docs/schemas/ describe
every payload; real messages published by the daemon (a real subprocess on a real Mosquitto) validate."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml
from _broker import (
    FACE_LABELS,
    FACE_MODEL,
    REPO,
    Broker,
    Collector,
    have_mosquitto,
    make_face_video,
    start_daemon,
    stderr_of,
    stop_daemon,
    wait,
    write_config,
)

jsonschema = pytest.importorskip("jsonschema")
SCHEMAS = REPO / "docs" / "schemas"


def _validator(name: str):
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _config_schema():
    exe = str(REPO / ".venv" / "bin" / "edge-ssd")
    r = subprocess.run([exe, "config", "schema"], capture_output=True, text=True, check=True)
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _daemon_config(tmp, video, port):
    return {
        "device": "schemadev",
        "model": {"bundle": str(FACE_MODEL), "labels": str(FACE_LABELS), "threads": 1},
        "sources": [{"name": "cam1", "url": str(video), "score_threshold": 0.6, "loop": True, "max_fps": 25.0,
                     "filters": {"face": {"min_score": 0.7, "min_area": 0.0005}},
                     "zones": [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]]}]}],
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5},
        "tracking": {"end_seconds": 0.5, "end_frames": 3},
        "spool": {"dir": str(tmp / "spool")},
        "stats_interval": 1,
    }


def test_config_schema_accepts_the_example_and_rejects_unknown_keys(tmp_path):
    v = _config_schema()
    example = yaml.safe_load((REPO / "deploy" / "config.example.yaml").read_text())
    assert list(v.iter_errors(example)) == []
    good = _daemon_config(tmp_path, "video.avi", 1883)
    assert list(v.iter_errors(good)) == []
    bad = json.loads(json.dumps(good))
    bad["mqtt"]["prot"] = 5
    bad["sources"][0]["zones"][0]["polygon"] = [[0, 0], [1, 0]]
    errors = [e.json_path for e in v.iter_errors(bad)]
    assert "$.mqtt" in errors and "$.sources[0].zones[0].polygon" in errors


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
@pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")
def test_published_messages_validate_against_docs_schemas(tmp_path):
    video = make_face_video(tmp_path / "faces.avi", frames=40)
    kinds = {"detection": "/detections", "event": "/events", "status": "/status", "stats": "/stats",
             "count": "/count", "available": "/available", "homeassistant-device": "/device/edge_ssd_schemadev/config"}
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/#", "homeassistant/#"]).start()
        cfg = write_config(tmp_path / "c.yaml", _daemon_config(tmp_path, video, b.port))
        p = start_daemon(cfg)
        try:
            assert wait(lambda: len(col.on("/stats")) >= 2 and any(
                e["type"] == "end" for e in col.json("/events")), 60), stderr_of(cfg)
        finally:
            assert stop_daemon(p) == 0, stderr_of(cfg)
        assert wait(lambda: col.on("/available")[-1:] == [b"offline"], 10)
        col.stop()
    for kind, suffix in kinds.items():
        v = _validator(kind)
        payloads = col.on(suffix)
        assert payloads, f"no {kind} message was published"
        for raw in payloads:
            if not raw:  # an empty retained message removes (Home Assistant discovery)
                continue
            msg = raw.decode() if kind == "available" else json.loads(raw)
            errors = [f"{e.json_path}: {e.message}" for e in v.iter_errors(msg)]
            assert errors == [], f"{kind} {raw[:200]!r}: {errors}"
    assert any(t.endswith("/zones/left/count") for t, _, _ in col.messages)
    # and the schemas are strict enough to catch a changed payload
    det = json.loads(col.on("/detections")[0])
    det["objects"] = [{"label": "face", "score": 1.5}]
    assert list(_validator("detection").iter_errors(det))
    disc = json.loads(col.on("/device/edge_ssd_schemadev/config")[-1])
    assert {c["p"] for c in disc["cmps"].values()} >= {"binary_sensor", "sensor"}
    next(iter(disc["cmps"].values()))["object_id"] = "x"  # deprecated by Home Assistant: never sent
    assert list(_validator("homeassistant-device").iter_errors(disc))
