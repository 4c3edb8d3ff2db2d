"""`make demo` = `edge-ssd demo`: the whole path, offline, from the cached test model to an annotated video."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE_SSD = ROOT / ".venv" / "bin" / "edge-ssd"


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([str(EDGE_SSD), "demo", "--out", str(out), "--frames", "30"], capture_output=True,
                       text=True, timeout=1800, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    # it says where everything is, and everything is there
    for name in ("int8 bundle", "conversion report", "annotated video", "detections"):
        assert name in r.stdout
    bundle = out / "shapes-int8.bundle"
    from edge_ssd.model.bundle import load_manifest

    manifest, model = load_manifest(bundle)
    assert manifest.input.dtype in ("int8", "uint8") and model.stat().st_size > 10_000
    assert manifest.fidelity and manifest.fidelity["f1"] >= 0.9
    assert (bundle / "report.md").is_file() and (bundle / "report.png").is_file()
    # the daemon's stdout sink printed one JSON object per processed frame, and the file sink holds the same
    lines = [json.loads(x) for x in (out / "detections.jsonl").read_text().splitlines()]
    stdout_objs = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines and [m["frame"] for m in stdout_objs] == [m["frame"] for m in lines]
    assert all(m["source"] == "shapes" and m["width"] == 480 and m["height"] == 360 for m in lines)
    # the synthetic shapes are detectable: most frames have at least one object
    assert sum(1 for m in lines if m["objects"]) >= 0.8 * len(lines)
    cap = cv2.VideoCapture(str(out / "shapes_detections.avi"))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 30
    # the README's follow-up: detections in a terminal from the demo's outputs
    r2 = subprocess.run([str(EDGE_SSD), "detect", str(out / "shapes.avi"), "--model", str(bundle),
                         "--max-frames", "5"], capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout.count("object(s)") >= 5
    # second run reuses the model and the bundle
    r3 = subprocess.run([str(EDGE_SSD), "demo", "--out", str(out), "--frames", "10", "--quiet"], capture_output=True,
                        text=True, timeout=900, cwd=tmp_path)
    assert r3.returncode == 0, r3.stderr[-3000:]
    assert "bundle up to date" in r3.stdout
