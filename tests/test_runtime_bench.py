"""``edge-ssd bench``: the measurement plumbing (numbers are reported, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _runtime_util import FACE_ONNX

from edge_ssd.runtime.bench import bench_nms, format_table, run_bench


@pytest.fixture(scope="module")
def bundle(face_bundle):
    return face_bundle


def test_run_bench_covers_each_backend_and_stage(bundle):
    res = run_bench([str(bundle)], [str(FACE_ONNX)], frames=5, warmup=1, threads=[1], rss=True)
    backends = {r.backend for r in res.rows}
    assert {"litert", "onnxruntime"} <= backends
    for r in res.rows:
        st = r.stages
        for s in (st.preprocess_ms, st.inference_ms, st.postprocess_ms, st.total_ms):
            assert s.n == 5 and s.p95 >= s.p50 > 0
        assert st.fps > 0 and st.bare_fps > 0 and r.pipeline.pipeline_fps > 0
        assert r.pipeline.processed == 5 and r.pipeline.inference_ms.n == 5
        assert r.pipeline_vs_bare == pytest.approx(r.pipeline.pipeline_fps / st.bare_fps, rel=1e-2)
    assert res.rss.rss_mb > 10 and res.rss.processed == 5 and res.rss.error is None
    assert res.nms.shape == [3000, 21]
    table = format_table(res)
    assert table.count("\n| ") >= 2 and "3000x21" in table
    js = res.to_json()
    assert js["rows"][0]["pipeline_fps"] == res.rows[0].pipeline.pipeline_fps and js["rss"]["rss_mb"] > 10


def test_nms_bench_finds_the_planted_objects():
    r = bench_nms(frames=3)
    assert 10 <= r.detections <= 200 and r.times.n == 3


def test_bench_cli_json_and_plot(bundle, tmp_path):
    png = tmp_path / "lat.png"
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "bench", "-m", str(bundle), "-n", "3", "--warmup", "1",
                        "--no-rss", "--no-pipeline", "--backends", "litert", "--json", "--plot", str(png),
                        "--e2e-seconds", "2"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert [row["backend"] for row in res["rows"]] == ["litert"]
    e = res["e2e"]  # live mode, capture -> published, next to the frame's own processing time
    assert e["backend"] == "litert" and e["e2e_ms"]["n"] > 0 and e["e2e_ms"]["p95"] >= e["e2e_ms"]["p50"] > 0
    assert e["processing_ms_p50"] > 0 and e["e2e_p50_vs_processing"] > 0
    # both latencies are reported (their ratio is a benchmark figure, not a unit-test assertion: timing on a shared
    # machine is noisy, and the two percentiles come from different sample sets)
    assert e["pipeline_latency_ms"]["n"] > 0 and e["pipeline_latency_ms"]["p50"] > 0
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "bench", "-m", str(tmp_path / "nope")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "not found" in r.stderr
