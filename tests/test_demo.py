"""`make demo` = `edge-ssd demo`: the whole product, offline, from the shipped test model to an annotated video:
convert with a validation report, the daemon publishing to a local Mosquitto, `edge-ssd watch` printing what
arrives, both stopped; then the same without a broker (JSON lines on stdout), reusing the bundle."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import cv2
import pytest
from _broker import have_mosquitto
from _paths import EDGE_SSD

pytestmark = pytest.mark.slow


def _ffmpeg_codec(path) -> str:
    import imageio_ffmpeg

    r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                       text=True, timeout=60)
    m = re.search(r"Video: (\w+)", r.stderr)
    return m.group(1) if m else r.stderr[-300:]


def _frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    return n


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed")
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([str(EDGE_SSD), "demo", "--out", str(out), "--frames", "30"], capture_output=True,
                       text=True, timeout=1800, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # it says where everything is, and everything is there
    for name in ("int8 bundle", "conversion report", "fp32 vs int8 plot", "annotated video", "detections"):
        assert name in r.stdout
    bundle = out / "shapes-int8.bundle"
    from edge_ssd.model.bundle import load_manifest

    manifest, model = load_manifest(bundle)
    assert manifest.input.dtype in ("int8", "uint8") and model.stat().st_size > 10_000
    assert manifest.fidelity and manifest.fidelity["f1"] >= 0.9
    assert (bundle / "report.md").is_file() and (bundle / "report.png").read_bytes()[:4] == b"\x89PNG"
    # the daemon published every frame to the local broker, and the subscriber printed each one as it arrived
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    assert len(lines) == 30
    assert all(m["source"] == "shapes" and m["width"] == 480 and m["height"] == 360 for m in lines)
    mqtt = [x for x in r.stdout.splitlines() if x.startswith("[mqtt] ")]
    det_lines = [x for x in mqtt if "/shapes/detections" in x]
    assert [int(re.search(r"frame (\d+):", x).group(1)) for x in det_lines] == [m["frame"] for m in lines]
    assert any("edge-ssd/demo/available" in x and x.endswith('"online"') for x in mqtt)
    assert any("edge-ssd/demo/available" in x and x.endswith('"offline"') for x in mqtt)
    assert any("/stats" in x for x in mqtt) and any("/shapes/status" in x for x in mqtt)
    assert "received 30 detection message(s) for 30 frame(s)" in r.stdout
    # the synthetic shapes are detectable: most frames have at least one object
    assert sum(1 for m in lines if m["objects"]) >= 0.8 * len(lines)
    # broker and subscriber were stopped
    assert "subscriber and broker stopped" in r.stdout
    port = int(re.search(r"mosquitto on 127\.0\.0\.1:(\d+)", r.stdout).group(1))
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # the annotated video plays in a browser: MP4, H.264, every frame
    video = out / "shapes_detections.mp4"
    assert f"{video}  (MP4 H.264" in r.stdout
    assert _ffmpeg_codec(video) == "h264" and _frames(video) == 30
    assert not (out / "shapes_detections.avi").exists()
    # the README's follow-up: detections in a terminal from the demo's outputs
    r2 = subprocess.run([str(EDGE_SSD), "detect", str(out / "shapes.avi"), "--model", str(bundle),
                         "--max-frames", "5"], capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("object(s)") >= 5
    # again without a broker: the bundle is reused, the daemon prints JSON lines, the file sink holds the same
    r3 = subprocess.run([str(EDGE_SSD), "demo", "--out", str(out), "--frames", "10", "--no-mqtt"],
                        capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "bundle up to date" in r3.stdout and "[mqtt]" not in r3.stdout
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    stdout_objs = [json.loads(x) for x in r3.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 10 and [m["frame"] for m in stdout_objs] == [m["frame"] for m in lines]
