"""``edge-ssd bench``: the measurement plumbing (numbers are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _runtime_util import FACE_ONNX, make_face_bundle

from edge_ssd.commands.bench import bench_nms, format_table, run_bench


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_face_bundle(tmp_path_factory.mktemp("face"))


def test_run_bench_covers_each_backend_and_stage(bundle):
    res = run_bench([str(bundle)], [str(FACE_ONNX)], frames=5, warmup=1, threads=[1], rss=True, e2e_seconds=2)
    backends = {r["backend"] for r in res["rows"]}
    assert {"litert", "onnxruntime"} <= backends
    for r in res["rows"]:
        for k in ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms"):
            assert r[k]["n"] == 5 and r[k]["p95"] >= r[k]["p50"] > 0
        assert r["fps"] > 0 and r["bare_fps"] > 0 and r["pipeline_fps"] > 0
        assert r["processed"] == 5
        assert r["pipeline_vs_bare"] == pytest.approx(r["pipeline_fps"] / r["bare_fps"], rel=1e-2)
    assert res["rss"]["rss_mb"] > 10 and res["rss"]["processed"] == 5
    assert res["nms_3000x21_ms"]["shape"] == [3000, 21]
    e = res["e2e"]  # live mode, capture -> published, next to the frame's own processing time
    assert e["backend"] == "litert" and e["e2e_ms"]["n"] > 0 and e["e2e_ms"]["p95"] >= e["e2e_ms"]["p50"] > 0
    assert e["processing_ms_p50"] > 0 and e["e2e_p50_vs_processing"] > 0
    table = format_table(res)
    assert table.count("\n| ") >= 2 and "3000x21" in table and "end-to-end latency" in table


def test_nms_bench_finds_the_planted_objects():
    r = bench_nms(frames=3)
    assert 10 <= r["detections"] <= 200 and r["n"] == 3


def test_bench_cli_json_and_plot(bundle, tmp_path):
    png = tmp_path / "lat.png"
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "bench", "-m", str(bundle), "-n", "3", "--warmup", "1",
                        "--no-rss", "--no-pipeline", "--backends", "litert", "--json", "--plot", str(png),
                        "--e2e-fps", "0"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [row["backend"] for row in res["rows"]] == ["litert"]
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "bench", "-m", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr
