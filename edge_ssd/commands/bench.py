"""``edge-ssd bench --model M``: latency per stage on every installed backend, pipeline vs bare interpreter,
decode+NMS, resident memory. Numbers are measured and reported, never asserted. The measurements live in
:mod:`edge_ssd.runtime.bench`."""

from __future__ import annotations

import argparse

from ..runtime.backends import BACKENDS
from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench", help="benchmark the runtime (per stage, per backend, pipeline vs bare interpreter)",
        description="Measure preprocess / inference / postprocess latency (p50, p95) and FPS for each installed "
                    "backend, the threaded pipeline's FPS against the bare interpreter's, decode+NMS on "
                    "3000x21 outputs and the resident memory of a pipeline process.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", "-m", action="append", required=True,
                   help="bundle directory, .tflite or .onnx; repeat to compare (e.g. float32 and int8 bundles)")
    p.add_argument("--onnx", action="append", default=[],
                   help="source ONNX model to run on ONNX Runtime too (default: the bundle's source if found)")
    p.add_argument("--labels", help="labels file for bare .tflite/.onnx models without labels")
    p.add_argument("--frames", "-n", type=A.positive_int, default=200, help="timed frames per configuration")
    p.add_argument("--warmup", type=A.nonneg_int, default=10, help="untimed frames first")
    p.add_argument("--threads", default="auto",
                   help="interpreter threads, comma-separated list (e.g. 1,2,4); auto: the runtime's default")
    p.add_argument("--backends", default="all",
                   help=f"comma-separated backends to try ({','.join(BACKENDS)})")
    p.add_argument("--image", help="frame to run on (default: a generated 640x480 picture of shapes)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline-vs-bare measurement")
    p.add_argument("--no-rss", action="store_true", help="skip the resident memory measurement (a subprocess)")
    p.add_argument("--e2e-fps", type=float, default=30.0,
                   help="camera rate for the end-to-end latency measurement (live mode, capture -> published "
                        "through the daemon's path); 0 skips it")
    p.add_argument("--e2e-seconds", type=float, default=10.0, help="length of the end-to-end measurement")
    p.add_argument("--plot", metavar="PNG", help="write a latency plot")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    A.add_no_progress(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..errors import DependencyError, UserError
    from ..runtime.bench import format_table, plot_results, run_bench

    if args.threads == "auto":
        threads: list[int | None] = [None]
    else:
        try:
            threads = [int(t) for t in args.threads.split(",") if t.strip()]
        except ValueError:
            raise UserError(f"--threads {args.threads!r}: give a comma-separated list of integers, e.g. 1,2,4") \
                from None
    backends = None if args.backends == "all" else [b.strip() for b in args.backends.split(",") if b.strip()]
    if any(t is not None and t < 1 for t in threads):
        raise UserError(f"--threads {args.threads!r}: every thread count must be at least 1")
    if args.plot:  # fail before a long run, not after it
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise DependencyError("--plot needs matplotlib: pip install 'edge-ssd[convert]' (or drop --plot)") from None
    res = run_bench(args.model, args.onnx, args.labels, args.frames, args.warmup, threads, backends, args.image,
                    pipeline=not args.no_pipeline, rss=not args.no_rss, progress=not args.no_progress)
    if not res.rows and res.skipped:
        raise UserError(f"nothing could be benchmarked: {res.skipped[0].error}")
    if args.e2e_fps > 0 and res.rows:
        from ..daemon.latency import bench_e2e, format_e2e
        from ..runtime.bench import bench_frame
        from ..runtime.detector import load_detector

        r = next((r for r in res.rows if r.backend != "onnxruntime"), res.rows[0])  # the device case first
        det = load_detector(r.path, backend=r.backend, threads=None if r.threads == "default" else r.threads,
                            labels=args.labels)
        e2e = bench_e2e(det, bench_frame(args.image), args.e2e_fps, args.e2e_seconds)
        res.extra["e2e"] = {"model": r.path, "backend": r.backend, **e2e.to_json()}
    if args.plot and res.rows:
        plot_results(res.rows, args.plot)
        res.extra["plot"] = args.plot
    if args.json:
        print(json.dumps(res.to_json(), indent=1))
    else:
        print(format_table(res))
        if "e2e" in res.extra:
            print(format_e2e(res.extra["e2e"]))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0
