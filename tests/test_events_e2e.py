"""Events, counts from tracks, zones, filters, the detections modes and message ids: the daemon as a real
subprocess on a real Mosquitto, every frame of a video processed (a finite file: the daemon exits at its end)."""

from __future__ import annotations

import pytest
from _broker import (
    FACE_LABELS,
    FACE_MODEL,
    Broker,
    Collector,
    have_mosquitto,
    make_face_video,
    read_jsonl,
    start_daemon,
    stderr_of,
    stop_daemon,
    write_config,
)

pytestmark = [pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
              pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")]

LEFT = [[0.0, 0.0], [0.5, 0.0], [0.5, 1.0], [0.0, 1.0]]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("video") / "faces.avi", frames=40)


def _config(tmp, video, port, *, detections="all", min_score=0.7, min_area=0.0005, unknown_filter=False):
    filters = {"face": {"min_score": min_score, "min_area": min_area}}
    if unknown_filter:
        filters["elephant"] = {"min_score": 0.9}
    return {
        "device": "evdev",
        "model": {"bundle": str(FACE_MODEL), "labels": str(FACE_LABELS), "threads": 1},
        "sources": [{"name": "cam1", "url": str(video), "score_threshold": 0.5,
                     "filters": filters,
                     "zones": [{"name": "left", "polygon": LEFT}]}],
        "mqtt": {"host": "127.0.0.1", "port": port, "detections": detections},
        "tracking": {"confirm_frames": 2, "end_frames": 3, "end_seconds": 60},
        "spool": {"dir": str(tmp / "state" / "spool")},
        "sinks": {"file": {"path": str(tmp / "produced.jsonl"), "max_bytes": 1 << 30}},
    }


def _run_to_end(tmp, video, port, **kw):
    cfg = write_config(tmp / "c.yaml", _config(tmp, video, port, **kw))
    p = start_daemon(cfg)
    try:
        rc = p.wait(120)
    finally:
        stop_daemon(p)
    assert rc == 0, stderr_of(cfg)
    return cfg


def test_events_counts_zones_filters_from_a_real_daemon(tmp_path, video):
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/#"]).start()
        _run_to_end(tmp_path, video, b.port)
        assert col.wait_for(lambda: col.on("/available")[-1:] == [b"offline"], 10)
        col.stop()
    produced = read_jsonl(tmp_path / "produced.jsonl")
    assert len(produced) == 40
    # filters: every object left passes min_score and min_area; some raw detections (threshold 0.5) did not
    objs = [o for m in produced for o in m["objects"]]
    assert objs and all(o["score"] >= 0.7 for o in objs)
    assert all((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) >= 0.0005 - 1e-6 for o in objs)
    events = col.json("edge-ssd/evdev/events")
    dets = col.json("/cam1/detections")
    assert [m["id"] for m in dets] == [m["id"] for m in produced]  # mode all: every frame, same ids
    # ids: unique over both topics, all of this run
    ids = [m["id"] for m in dets + events]
    assert len(set(ids)) == len(ids)
    run = {i.split("-")[0] for i in ids}
    assert len(run) == 1
    # every track: new first, end last, updates between; its boxes are boxes of the frame it names
    by_frame = {m["frame"]: m for m in produced}
    tracks: dict[str, list[dict]] = {}
    for e in events:
        tracks.setdefault(e["event_id"], []).append(e)
    assert tracks
    for evs in tracks.values():
        kinds = [e["type"] for e in evs]
        assert kinds[0] == "new" and kinds[-1] == "end" and set(kinds[1:-1]) <= {"update"}
        assert evs[-1]["end"] >= evs[0]["start"] and evs[0]["end"] is None
        assert evs[-1]["top_score"] >= max(e["score"] for e in evs) - 1e-6
        for e in evs[:-1]:
            frame_boxes = [o["box"] for o in by_frame[e["frame"]]["objects"] if o["label"] == e["label"]]
            assert e["box"] in frame_boxes
    # counts: the confirmed tracks in view, so at the end at most the ones still alive (ended by the stop, after the
    # last frame) and at most what the last two frames showed (a missed object is held for one frame)
    alive = [e for e in events if e["type"] == "end" and e["ts"] > produced[-1]["ts"]]
    counts = [int(x) for x in col.on("/cam1/face/count")]
    assert 0 < counts[-1] <= len(alive) and counts[-1] == int(col.on("/cam1/count")[-1])  # one label: total = face
    assert counts[-1] <= len(produced[-1]["objects"]) + len(produced[-2]["objects"])
    in_left = [e for e in alive if "left" in e["zones"]]
    assert int(col.on("/cam1/zones/left/count")[-1]) == int(col.on("/cam1/zones/left/face/count")[-1]) \
        <= len(in_left)
    assert 0 < len(in_left) < len(alive)
    # tracks do not flicker: the count changes less often than the raw per-frame object count
    raw = [len(m["objects"]) for m in produced]
    raw_changes = sum(a != b for a, b in zip(raw, raw[1:], strict=False))
    assert len(counts) - 1 < raw_changes


def test_detections_on_change_and_ids_across_restarts(tmp_path, video):
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/evdev/cam1/detections", "edge-ssd/evdev/events"]).start()
        cfg = _run_to_end(tmp_path, video, b.port, detections="change", unknown_filter=True)
        assert "filters/zones name label(s) the model does not know: elephant" in stderr_of(cfg)
        first = len(col.on("/detections"))
        produced = read_jsonl(tmp_path / "produced.jsonl")
        _run_to_end(tmp_path, video, b.port, detections=0.25)
        assert col.wait_for(lambda: len(col.on("/detections")) > first, 10)
        col.stop()
    dets = col.json("/detections")
    change, interval = dets[:first], dets[first:]
    keys = [sorted(o["label"] for o in m["objects"]) for m in change]
    assert all(a != b for a, b in zip(keys, keys[1:], strict=False))  # published only when they changed
    assert 0 < len(change) < len(produced[:40])
    assert all(b["ts"] - a["ts"] >= 0.25 - 1e-6 for a, b in zip(interval, interval[1:], strict=False))
    runs = [int(m["id"].split("-")[0]) for m in change], [int(m["id"].split("-")[0]) for m in interval]
    assert len(set(runs[0])) == len(set(runs[1])) == 1 and runs[1][0] == runs[0][0] + 1
    allids = [m["id"] for m in dets + col.json("/events")]
    assert len(allids) == len(set(allids))  # unique across the restart; frame numbers repeat, ids do not
    assert change[0]["frame"] == interval[0]["frame"] == 0
