"""``edge-ssd demo``: the whole path on one machine, offline, with no input of your own.

1. build (first run, several minutes on 2 cores) or reuse the cached trained test model (mb1-ssd layout,
   synthetic shapes; ``edge_ssd.train.testmodel``);
2. convert it with ``edge-ssd convert`` to an int8 bundle, calibrated on its training split and validated on
   its held-out split (report.md / report.json / report.png); reused while the ONNX model is unchanged;
3. render a short video of moving shapes;
4. run the daemon (``edge-ssd run``) on it: JSON lines on stdout, or MQTT when ``--mqtt-host`` is given, plus
   a detections.jsonl file; then write an annotated copy of the video.
It prints where everything is.
"""

from __future__ import annotations

from pathlib import Path

from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train/reuse the test model, convert it to int8, run the daemon on a video")
    p.add_argument("--out", default="edge-ssd-demo", help="output folder (default: ./edge-ssd-demo)")
    p.add_argument("--frames", type=A.positive_int, default=60, help="frames in the demo video (default 60, 10 fps)")
    p.add_argument("--mqtt-host", help="publish to this MQTT broker instead of printing JSON lines")
    p.add_argument("--mqtt-port", type=A.port, default=1883)
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


def run(args) -> int:
    import json
    import time

    from ..convert.api import convert_model
    from ..daemon.service import Daemon
    from ..errors import UserError
    from ..model.bundle import sha256_file
    from ..train.synth import make_video
    from ..train.testmodel import get_test_model

    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the demo folder {out}: {e.strerror}; "
                        "pass --out DIR somewhere writable") from None
    t0 = time.monotonic()

    _say("1/4 trained test model (built once and cached; the first build takes several minutes)")
    tm = get_test_model(progress=not args.no_progress)
    _say(f"    {tm.onnx_path}  fp32 mAP@0.5 {tm.metrics.get('map_voc07', float('nan')):.3f} (held-out split)")

    bundle = out / "shapes-int8.bundle"
    onnx_sha = sha256_file(tm.onnx_path)
    if args.rebuild or not _bundle_is_current(bundle, onnx_sha):
        _say("2/4 edge-ssd convert: int8, calibrated on the training split, validated on the held-out split")
        res = convert_model(tm.onnx_path, bundle, calib=tm.dataset_dir, calib_split="train", calib_count=200,
                            val=tm.dataset_dir, val_split="test", force=True, progress=not args.no_progress)
        if not res.ok:
            _say(f"    conversion below the agreement threshold; artefacts kept in {bundle}")
            return 4
    else:
        _say(f"2/4 bundle up to date: {bundle}")
    report_md = bundle / "report.md"
    from ..model.bundle import load_manifest

    manifest, _ = load_manifest(bundle)
    _say(f"    fidelity (int8 vs fp32): {json.dumps(manifest.fidelity)[:400]}")

    _say("3/4 rendering a video of moving shapes")
    video = out / "shapes.avi"
    make_video(video, n_frames=args.frames, size=(480, 360), seed=7, fps=10.0)

    _say("4/4 edge-ssd run (the daemon) on the video" + (f", publishing to {args.mqtt_host}:{args.mqtt_port}"
                                                         if args.mqtt_host else ", JSON lines on stdout"))
    cfg = write_demo_config(out / "config.yaml", bundle, video, out, args.mqtt_host, args.mqtt_port,
                            stdout=not args.quiet and not args.mqtt_host)
    jsonl = out / "detections.jsonl"
    if jsonl.exists():
        jsonl.unlink()
    rc = Daemon(cfg).run()
    if rc != 0:
        return rc
    annotated = annotate_video(bundle, video, out, fps=10.0)
    n_lines = sum(1 for _ in jsonl.open()) if jsonl.exists() else 0
    print()
    _say(f"done in {time.monotonic() - t0:.0f} s")
    _say(f"  model (ONNX, fp32)      {tm.onnx_path}")
    _say(f"  int8 bundle             {bundle}")
    _say(f"  conversion report       {report_md}  (+ report.json, report.png)")
    _say(f"  demo video              {video}")
    _say(f"  annotated video         {annotated}")
    _say(f"  detections ({n_lines} frames) {jsonl}")
    _say(f"  daemon config           {cfg}   ->  edge-ssd run --config {cfg}")
    return 0
