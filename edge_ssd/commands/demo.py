"""``edge-ssd demo``: the whole product on one machine, offline, with no input of your own.

1. the trained test model that ships with edge-ssd (mb1-ssd layout, synthetic shapes), exported to ONNX with its
   dataset into the cache (``edge_ssd.train.testmodel``; seconds, once);
2. ``edge-ssd convert``: an int8 bundle calibrated on the training split and validated on the held-out split
   (report.md / report.json / report.png); reused while the ONNX model is unchanged;
3. a short video of moving shapes;
4. the daemon (``edge-ssd run``) on it. With Mosquitto installed: a broker on a free 127.0.0.1 port, the daemon
   publishing to it and the reference subscriber (``edge-ssd watch --json``) printing what arrives, then both
   stopped. Without it (or with ``--no-mqtt``): JSON lines on stdout. Also a detections.jsonl file;
5. an annotated copy of the video, playable in a browser (MP4 H.264 through imageio-ffmpeg; MJPG .avi otherwise).
It prints where everything is.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="the shipped test model: convert to int8, run the daemon on a video over "
                                           "MQTT, write an annotated video")
    p.add_argument("--out", default="edge-ssd-demo", help="output folder (default: ./edge-ssd-demo)")
    p.add_argument("--frames", type=A.positive_int, default=60, help="frames in the demo video (default 60, 10 fps)")
    p.add_argument("--mqtt-host", help="publish to this MQTT broker instead of starting a local Mosquitto")
    p.add_argument("--mqtt-port", type=A.port, default=1883)
    p.add_argument("--no-mqtt", action="store_true", help="no broker: the daemon prints JSON lines on stdout")
    p.add_argument("--quiet", action="store_true", help="do not echo detections on stdout")
    p.add_argument("--rebuild", action="store_true", help="convert again even if the bundle is up to date")
    A.add_no_progress(p)
    p.set_defaults(func=run)


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _bundle_is_current(bundle: Path, onnx_sha: str) -> bool:
    from ..model.bundle import BundleError, load_manifest

    try:
        m, _ = load_manifest(bundle)
    except BundleError:
        return False
    return m.source.get("sha256") == onnx_sha


def write_demo_config(path: Path, bundle: Path, video: Path, out: Path, mqtt_host: str | None, mqtt_port: int,
                      stdout: bool) -> Path:
    import yaml

    cfg: dict = {
        "device": "demo",
        "model": {"bundle": str(bundle.resolve()), "threads": 2},
        "sources": [{"name": "shapes", "url": str(video.resolve()), "score_threshold": 0.5}],
        "spool": {"dir": str((out / "spool").resolve())},
        "sinks": {"stdout": stdout, "file": {"path": str((out / "detections.jsonl").resolve())}},
        "stats_interval": 5,
    }
    if mqtt_host:
        cfg["mqtt"] = {"host": mqtt_host, "port": mqtt_port, "qos": 1}
        cfg["homeassistant"] = {"enabled": False}
    path.write_text("# written by `edge-ssd demo`; run it again with: edge-ssd run --config " + str(path) + "\n"
                    + yaml.safe_dump(cfg, sort_keys=False))
    return path


def annotate_video(bundle: Path, video: Path, out_dir: Path, fps: float) -> Path:
    """The video with the detections drawn, as MJPG .avi (see :func:`browser_video`)."""
    from ..capture.factory import open_source
    from ..publish.annotate import SaveSink
    from ..runtime.detector import load_detector
    from ..runtime.pipeline import Pipeline, SourceConfig

    det = load_detector(bundle)
    name = f"{video.stem}_detections.avi"
    sink = SaveSink(out_dir, video_name=name, fps=fps)
    src = open_source(str(video), name="shapes", latest=False, realtime=False)
    pipe = Pipeline(det, [SourceConfig(src, name="shapes")], [sink], process_all=True)
    pipe.start()
    pipe.run_until_done()
    return out_dir / name


def browser_video(avi: Path) -> tuple[Path, str]:
    """``avi`` transcoded to MP4 H.264 (yuv420p, faststart) with imageio-ffmpeg's ffmpeg; the .avi is removed.
    Without imageio-ffmpeg (or when it fails), the MJPG .avi itself and a note."""
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError):
        return avi, "MJPG .avi (browsers do not play it: pip install imageio-ffmpeg for an MP4)"
    mp4 = avi.with_suffix(".mp4")
    r = subprocess.run([exe, "-y", "-loglevel", "error", "-i", str(avi), "-c:v", "libx264", "-pix_fmt", "yuv420p",
                        "-movflags", "+faststart", str(mp4)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not mp4.is_file():
        err = (r.stderr.strip().splitlines() or ["no output"])[-1][:200]
        return avi, f"MJPG .avi (ffmpeg could not write H.264: {err})"
    avi.unlink()
    return mp4, "MP4 H.264, plays in a browser"


PROBE_TOPIC = "edge-ssd/demo/probe"


def _summary(m) -> str:
    """One short line for a message received by the subscriber."""
    payload = m.payload
    if m.topic.endswith("/detections") and isinstance(payload, dict):
        objs = ", ".join(f"{o.get('label')} {o.get('score', 0):.2f}" for o in payload.get("objects", []))
        text = f"frame {payload.get('frame')}: {objs or 'nothing'}"
    elif isinstance(payload, dict) and set(payload) == {"bytes"}:
        text = f"({payload['bytes']} bytes)"
    else:
        text = json.dumps(payload, separators=(",", ":"))
    return f"{m.topic}{' (retained)' if m.retain else ''}  {text}"[:200]


def run_daemon(cfg: Path, jsonl: Path) -> tuple[int, int]:
    """``edge-ssd run --config cfg`` in-process until the video ends; (exit code, frames in ``jsonl``)."""
    from ..daemon.service import Daemon

    if jsonl.exists():
        jsonl.unlink()
    rc = Daemon(cfg).run()
    return rc, (sum(1 for _ in jsonl.open()) if jsonl.exists() else 0)


def run_with_local_broker(out: Path, bundle: Path, video: Path, quiet: bool) -> tuple[int, int]:
    """A local Mosquitto, the subscriber (``edge-ssd watch --json``) printing what arrives, the daemon publishing
    to the broker; then subscriber and broker stopped."""
    from ..publish.local_broker import LocalBroker, WatchSubscriber, publish_retained

    def echo(m) -> None:
        if m.topic == PROBE_TOPIC or not m.topic:
            return
        if not quiet or not m.topic.endswith("/detections"):
            print(f"[mqtt] {_summary(m)}", flush=True)

    def detections(s) -> int:
        return len(s.on("/detections"))

    with LocalBroker(out / "mosquitto") as broker:
        _say(f"    mosquitto on 127.0.0.1:{broker.port}; subscriber: edge-ssd watch --host 127.0.0.1 "
             f"--port {broker.port} --json")
        sub = WatchSubscriber("127.0.0.1", broker.port, on_message=echo).start()
        try:
            # detections are not retained: start the daemon once the subscriber has seen a retained probe
            publish_retained(broker.port, PROBE_TOPIC, b"ready")
            if not sub.wait_for(lambda s: bool(s.on(PROBE_TOPIC)), 20):
                _say("    the subscriber did not subscribe within 20 s; going on")
            publish_retained(broker.port, PROBE_TOPIC, b"")
            cfg = write_demo_config(out / "config.yaml", bundle, video, out, "127.0.0.1", broker.port, stdout=False)
            rc, n = run_daemon(cfg, out / "detections.jsonl")
            got = sub.wait_for(lambda s: detections(s) >= n, 15)
            sub.wait_for(lambda s: any(m.payload == "offline" for m in s.on("/available")), 5)  # the last word
            _say(f"    the subscriber received {detections(sub)} detection message(s) for {n} frame(s)"
                 + ("" if got else "  (some did not arrive in time)"))
        finally:
            sub.stop()
    _say("    subscriber and broker stopped")
    return rc, n


def _convert(tm, bundle: Path, rebuild: bool, progress: bool = True) -> bool:
    from ..convert.api import convert_model
    from ..model.bundle import sha256_file

    if not rebuild and _bundle_is_current(bundle, sha256_file(tm.onnx_path)):
        _say(f"2/5 bundle up to date: {bundle}")
        return True
    _say("2/5 edge-ssd convert: int8, calibrated on the training split, validated on the held-out split (one "
         "recipe, per-channel with percentile calibration, the one `edge-ssd convert` keeps for this model after "
         "trying three)")
    res = convert_model(tm.onnx_path, bundle, calib=tm.dataset_dir, calib_split="train", calib_count=200,
                        val=tm.dataset_dir, val_split="test", quant="per-channel", calibration="percentile", force=True,
                        progress=progress)
    if not res.ok:
        _say(f"    conversion below the agreement threshold; artefacts kept in {bundle}")
    return bool(res.ok)


def run(args) -> int:
    from ..errors import UserError
    from ..model.bundle import load_manifest
    from ..publish.local_broker import find_mosquitto
    from ..train.synth import make_video
    from ..train.testmodel import get_test_model

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the demo folder {out}: {e.strerror}; "
                        "pass --out DIR somewhere writable") from None
    t0 = time.monotonic()

    _say("1/5 the trained test model that ships with edge-ssd, exported to ONNX (once, then cached)")
    tm = get_test_model(progress=not args.no_progress)
    _say(f"    {tm.onnx_path}  fp32 mAP@0.5 {tm.metrics.get('map_voc07', float('nan')):.3f} (held-out split)")

    bundle = out / "shapes-int8.bundle"
    if not _convert(tm, bundle, args.rebuild, progress=not args.no_progress):
        return 4
    manifest, _ = load_manifest(bundle)
    _say(f"    fidelity (int8 vs fp32): {json.dumps(manifest.fidelity)[:400]}")

    _say("3/5 rendering a video of moving shapes")
    video = out / "shapes.avi"
    make_video(video, n_frames=args.frames, size=(480, 360), seed=7, fps=10.0)

    local = not args.mqtt_host and not args.no_mqtt and find_mosquitto() is not None
    if local:
        _say("4/5 edge-ssd run (the daemon) on the video, publishing to a local Mosquitto")
        rc, n_lines = run_with_local_broker(out, bundle, video, args.quiet)
    else:
        where = f", publishing to {args.mqtt_host}:{args.mqtt_port}" if args.mqtt_host else ", JSON lines on stdout"
        note = "" if args.mqtt_host or args.no_mqtt else " (install mosquitto to see it over MQTT)"
        _say(f"4/5 edge-ssd run (the daemon) on the video{where}{note}")
        cfg = write_demo_config(out / "config.yaml", bundle, video, out, args.mqtt_host, args.mqtt_port,
                                stdout=not args.quiet and not args.mqtt_host)
        rc, n_lines = run_daemon(cfg, out / "detections.jsonl")
    if rc != 0:
        return rc

    _say("5/5 the annotated video")
    annotated, kind = browser_video(annotate_video(bundle, video, out, fps=10.0))
    print()
    _say(f"done in {time.monotonic() - t0:.0f} s")
    _say(f"  model (ONNX, fp32)      {tm.onnx_path}")
    _say(f"  int8 bundle             {bundle}")
    _say(f"  conversion report       {bundle / 'report.md'}  (+ report.json)")
    _say(f"  fp32 vs int8 plot       {bundle / 'report.png'}")
    _say(f"  demo video              {video}")
    _say(f"  annotated video         {annotated}  ({kind})")
    _say(f"  detections ({n_lines} frames) {out / 'detections.jsonl'}")
    _say(f"  daemon config           {out / 'config.yaml'}   ->  edge-ssd run --config {out / 'config.yaml'}")
    return 0
