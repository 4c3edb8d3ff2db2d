"""Soak test: run `edge-ssd run` at full rate for N minutes against a local Mosquitto broker; record the
daemon's RSS over time and the message counts (produced vs received), and check nothing was lost.

    .venv/bin/python bench/soak_daemon.py --minutes 10 [--model PATH] [--out soak.json]

By default the shipped test model (its ONNX, on ONNX Runtime) on a looping video of moving shapes (no frame
cap); the broker is a throwaway Mosquitto and the subscriber is `edge-ssd watch --json`
(edge_ssd.publish.local_broker).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _daemon import start_daemon, stop_daemon  # noqa: E402 (bench/, beside this script)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--model", help="bundle or .onnx (default: the shipped test model's ONNX)")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--out", default=None, help="write the samples and summary as JSON here")
    args = ap.parse_args()

    import psutil
    from tqdm import tqdm

    from edge_ssd.publish.local_broker import LocalBroker, WatchSubscriber
    from edge_ssd.train.synth import make_video

    tmp = Path(tempfile.mkdtemp(prefix="edge-ssd-soak-"))
    if not args.model:
        from edge_ssd.train.testmodel import get_test_model

        args.model = str(get_test_model().onnx_path)
    video = tmp / "shapes.avi"
    make_video(video, n_frames=100, size=(320, 240), seed=3)
    broker = LocalBroker(tmp / "broker").start()
    col = WatchSubscriber("127.0.0.1", broker.port).start()
    time.sleep(2.0)  # let the subscriber subscribe
    p = start_daemon(tmp / "config.yaml", {
        "device": "soak",
        "model": {"bundle": args.model, "threads": 1},
        "sources": [{"name": "cam", "url": str(video), "loop": True, "realtime": False, "score_threshold": 0.5}],
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "spool": {"dir": str(tmp / "spool")},
        "stats_interval": 5,
    })
    proc = psutil.Process(p.pid)
    samples = []
    t0 = time.monotonic()
    total = args.minutes * 60
    with tqdm(total=int(total), unit="s", desc="soak") as bar:
        while (el := time.monotonic() - t0) < total and p.poll() is None:
            rss = proc.memory_info().rss / 2**20
            n = len(col.on("/detections"))
            samples.append({"t": round(el, 1), "rss_mb": round(rss, 1), "received": n})
            bar.set_postfix(rss_mb=f"{rss:.1f}", msgs=n)
            time.sleep(args.sample)
            bar.update(int(min(total, time.monotonic() - t0)) - bar.n)
    rc = stop_daemon(p)
    time.sleep(1.0)
    col.stop()
    broker.stop()
    msgs = [m.payload for m in col.on("/cam/detections")]
    frames = [m["frame"] for m in msgs]
    stats = [m.payload for m in col.on("/stats")]
    last = stats[-1] if stats else {}
    rss = [s["rss_mb"] for s in samples]
    warm = [s["rss_mb"] for s in samples if s["t"] >= min(30.0, total / 2)] or rss
    summary = {
        "minutes": args.minutes, "exit_code": rc, "received": len(msgs), "processed": last.get("processed"),
        "rate_msgs_per_s": round(len(msgs) / max(1e-9, samples[-1]["t"] if samples else 1), 1),
        "fps_reported": last.get("fps"), "inference_ms": last.get("inference_ms"),
        "rss_mb_first": rss[0] if rss else None, "rss_mb_max": max(rss) if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_growth_after_warmup_mb": round(warm[-1] - warm[0], 1) if warm else None,
        "spool": last.get("spool"),
        "frame_index_decreases": sum(1 for a, b in zip(frames, frames[1:], strict=False) if b < a),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "samples": samples}, indent=2))
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
