"""Resident memory of the daemon (`edge-ssd run`, a real process) on one source against a local Mosquitto,
under each memory lever, measured from /proc/<pid>/status after a warm-up:

    .venv/bin/python bench/daemon_memory.py --model BUNDLE [--seconds 20] [--out bench/results/daemon-memory.json]

Levers (each row adds to the baseline): MALLOC_ARENA_MAX=2 (glibc: one malloc arena per thread otherwise),
OPENBLAS_NUM_THREADS=1 (numpy's BLAS preallocates per-thread buffers), model.threads 1 vs the default, and the
combination the systemd unit ships. Reports VmRSS with its anonymous / file-backed split and VmHWM (peak).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _daemon import start_daemon, stop_daemon  # noqa: E402 (bench/, beside this script)

from edge_ssd.publish.local_broker import LocalBroker, WatchSubscriber  # noqa: E402
from edge_ssd.train.synth import make_video  # noqa: E402

UNIT_ENV = {"MALLOC_ARENA_MAX": "2"}  # what systemd/edge-ssd.service sets
VARIANTS = [
    ("baseline", {}, None),
    ("MALLOC_ARENA_MAX=2", {"MALLOC_ARENA_MAX": "2"}, None),
    ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1"}, None),
    ("OPENCV_FOR_THREADS_NUM=1", {"OPENCV_FOR_THREADS_NUM": "1"}, None),
    ("OPENCV_FFMPEG_CAPTURE_OPTIONS=threads;1", {"OPENCV_FFMPEG_CAPTURE_OPTIONS": "threads;1"}, None),
    ("unit environment", UNIT_ENV, None),
    ("unit environment, model.threads 1", UNIT_ENV, 1),
]


def _status(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem", "Threads"):
            n = float(v.split()[0])
            out[k] = n if k == "Threads" else round(n / 1024, 1)
    return out


def measure(model: str, video: Path, port: int, tmp: Path, env: dict, threads: int | None, seconds: float,
            name: str) -> dict:
    col = WatchSubscriber("127.0.0.1", port, device=name).start()
    time.sleep(2.0)  # let it subscribe
    model_cfg = {"bundle": model}
    if threads:
        model_cfg["threads"] = threads
    p = start_daemon(tmp / f"{name}.yaml", {
        "device": name, "model": model_cfg,
        "sources": [{"name": "cam", "url": str(video), "loop": True, "score_threshold": 0.5}],
        "mqtt": {"host": "127.0.0.1", "port": port, "detections": "all"},
        "spool": {"dir": str(tmp / name / "spool")}, "stats_interval": 5,
    }, env=env)
    samples = []
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds and p.poll() is None:
            time.sleep(1.0)
            if time.monotonic() - t0 > seconds / 2:
                samples.append(_status(p.pid))
    finally:
        stop_daemon(p)
        col.stop()
    received = len(col.on("/detections"))
    last = samples[-1] if samples else {}
    return {"variant": name, "env": env, "threads": threads or "default", "rss_mb": last.get("VmRSS"),
            "rss_anon_mb": last.get("RssAnon"), "rss_file_mb": last.get("RssFile"), "hwm_mb": last.get("VmHWM"),
            "threads_os": last.get("Threads"), "rss_max_mb": max((s["VmRSS"] for s in samples), default=None),
            "detections_received": received}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="bundle directory (e.g. an int8 mb1-ssd)")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--size", default="640x480", help="video frame size")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="edge-ssd-mem-"))
    video = tmp / "shapes.avi"
    make_video(video, n_frames=50, size=(w, h), seed=5)
    rows = []
    with LocalBroker(tmp / "broker") as b:
        for i, (label, env, threads) in enumerate(VARIANTS):
            r = measure(args.model, video, b.port, tmp, env, threads, args.seconds, f"mem{i}")
            r["lever"] = label
            rows.append(r)
            print(f"{label:40s} RSS {r['rss_mb']} MB (anon {r['rss_anon_mb']}, file {r['rss_file_mb']}), "
                  f"peak {r['hwm_mb']} MB, {r['threads_os']:.0f} threads, {r['detections_received']} detections",
                  flush=True)
    res = {"model": args.model, "frame": args.size, "seconds": args.seconds, "rows": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
