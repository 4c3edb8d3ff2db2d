"""``edge-ssd bench --model M``: latency per stage on every installed backend, pipeline vs bare interpreter,
decode+NMS, resident memory. Numbers are measured and reported, never asserted."""

from __future__ import annotations

import argparse

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
                   help="comma-separated backends to try (litert,tflite_runtime,tensorflow,edgetpu,onnxruntime)")
    p.add_argument("--image", help="frame to run on (default: a photo from the shared data, else noise)")
    p.add_argument("--no-pipeline", action="store_true", help="skip the pipeline-vs-bare measurement")
    p.add_argument("--no-rss", action="store_true", help="skip the resident memory measurement (a subprocess)")
    p.add_argument("--plot", metavar="PNG", help="write a latency plot")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    A.add_no_progress(p)
    p.set_defaults(func=run)


# -- measurement helpers (importable by bench/ scripts) --------------------------------------------------

def bench_frame(image: str | None = None):
    import numpy as np

    from ..model.preprocess import read_image

    if image:
        try:
            return read_image(image)
        except ValueError as e:
            from ..errors import UserError

            raise UserError(str(e)) from None
    from pathlib import Path

    for cand in (Path.cwd().parent / "shared" / "data" / "photos" / "dog.jpg",
                 Path(__file__).resolve().parents[3] / "shared" / "data" / "photos" / "dog.jpg"):
        if cand.is_file():
            return read_image(cand)
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)


def bench_detector(det, frame, frames: int = 200, warmup: int = 10) -> dict:
    """Stage latencies (ms) of ``det`` on ``frame``, and the bare interpreter's FPS."""
    import time

    from ..runtime.stats import summarize_ms

    for _ in range(warmup):
        det.detect(frame)
    pre, inf, post, total = [], [], [], []
    pc = time.perf_counter
    for _ in range(frames):
        t0 = pc()
        x = det.preprocess(frame)
        t1 = pc()
        raw = det.infer(x)
        t2 = pc()
        det.postprocess(raw)
        t3 = pc()
        pre.append((t1 - t0) * 1e3)
        inf.append((t2 - t1) * 1e3)
        post.append((t3 - t2) * 1e3)
        total.append((t3 - t0) * 1e3)
    # bare interpreter: set input + invoke only, the upper bound for any pipeline
    be = det.backend
    x = det.preprocess(frame).copy()
    if hasattr(be, "set_input"):
        be.set_input(x)
        t0 = pc()
        for _ in range(frames):
            be.set_input(x)
            be.invoke()
        bare = pc() - t0
    else:
        t0 = pc()
        for _ in range(frames):
            be.run(x)
        bare = pc() - t0
    out = {"preprocess_ms": summarize_ms(pre), "inference_ms": summarize_ms(inf), "postprocess_ms": summarize_ms(post),
           "total_ms": summarize_ms(total)}
    out["fps"] = round(1000.0 / (sum(total) / len(total)), 1)
    out["bare_fps"] = round(frames / bare, 1)
    return out


class RepeatSource:
    """An in-memory finite source: the same frame ``n`` times (no decode cost, for pipeline throughput)."""

    def __new__(cls, frame, n: int, name: str = "bench"):
        from ..capture.base import Source, SourceEnded

        class _Repeat(Source):
            kind = "memory"
            finite = True

            def _connect(self):
                self._left = n

            def _grab(self):
                if self._left <= 0:
                    raise SourceEnded()
                self._left -= 1
                return frame

        return _Repeat(name, latest=False, reconnect=False)


def bench_pipeline(det, frame, frames: int = 200) -> dict:
    """FPS of the threaded pipeline processing every one of ``frames`` frames (no sinks)."""
    import time

    from ..runtime.pipeline import Pipeline, SourceConfig

    warm = Pipeline(det, [SourceConfig(RepeatSource(frame, 5))], [], process_all=True)
    warm.run_until_done(60)
    p = Pipeline(det, [SourceConfig(RepeatSource(frame, frames))], [], process_all=True)
    t0 = time.perf_counter()
    st = p.run_until_done(600)
    dt = time.perf_counter() - t0
    return {"pipeline_fps": round(st["processed"] / dt, 1), "processed": st["processed"],
            "latency_ms": st["latency_ms"], "inference_ms": st["inference_ms"]}


def bench_nms(n_priors: int = 3000, n_classes: int = 21, frames: int = 200, seed: int = 0) -> dict:
    """decode + softmax + NMS on a synthetic SSD output of ``n_priors`` x ``n_classes`` (raw logits/offsets
    against real MobileNet-SSD priors, a few confident objects), like an int8 body's outputs."""
    import time

    import numpy as np

    from ..model.box import postprocess
    from ..model.priors import MOBILENET_SSD_SPECS, generate_priors
    from ..runtime.stats import summarize_ms

    priors = generate_priors(MOBILENET_SSD_SPECS, 300)[:n_priors]
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (priors.shape[0], n_classes)).astype(np.float32)
    logits[:, 0] += 4.0  # mostly background
    hot = rng.choice(priors.shape[0], 60, replace=False)
    logits[hot, rng.integers(1, n_classes, hot.size)] += 9.0
    loc = rng.normal(0, 0.5, (priors.shape[0], 4)).astype(np.float32)
    ts = []
    for _ in range(frames):
        t0 = time.perf_counter()
        d = postprocess(logits, loc, priors, score_fn="softmax", prob_threshold=0.4)
        ts.append((time.perf_counter() - t0) * 1e3)
    return {"shape": [int(priors.shape[0]), n_classes], "detections": len(d), **summarize_ms(ts)}


_RSS_CHILD = """
import json, sys, time
from edge_ssd.daemon.health import rss_bytes
from edge_ssd.runtime.detector import load_detector
from edge_ssd.runtime.pipeline import Pipeline, SourceConfig
from edge_ssd.commands.bench import RepeatSource, bench_frame
model, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
det = load_detector(model, backend=backend)
frame = bench_frame(sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None)
st = Pipeline(det, [SourceConfig(RepeatSource(frame, n))], [], process_all=True).run_until_done(600)
print(json.dumps({"rss_mb": round(rss_bytes() / 2**20, 1), "processed": st["processed"],
                  "backend": det.backend_name}))
"""


def bench_rss(model: str, backend: str = "auto", frames: int = 100, image: str | None = None) -> dict:
    """Resident memory (RSS from /proc, as the daemon reports it) of a fresh process that loads ``model`` and
    runs a pipeline."""
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(model), backend, str(frames), image or ""],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def _model_dtype(det) -> str:
    return str(det.input_dtype)


def _source_onnx(model: str) -> str | None:
    """The source ONNX of a bundle, if its manifest names a file that exists (absolute or beside it)."""
    from pathlib import Path

    from ..model.bundle import is_bundle, load_manifest

    p = Path(model)
    if not is_bundle(p):
        return None
    try:
        m, _ = load_manifest(p, verify=False)
    except Exception:
        return None
    for key in ("path", "onnx", "file", "name"):
        v = m.source.get(key)
        if not v:
            continue
        for cand in (Path(v), p / v, p.parent / v):
            if cand.suffix == ".onnx" and cand.is_file():
                return str(cand)
    return None


def plot_results(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['model']}\n{r['backend']} t={r['threads']}" for r in rows]
    pre = [r["preprocess_ms"]["p50"] for r in rows]
    inf = [r["inference_ms"]["p50"] for r in rows]
    post = [r["postprocess_ms"]["p50"] for r in rows]
    p95 = [r["total_ms"]["p95"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4.5))
    x = range(len(rows))
    ax.bar(x, pre, label="preprocess p50")
    ax.bar(x, inf, bottom=pre, label="inference p50")
    ax.bar(x, post, bottom=[a + b for a, b in zip(pre, inf, strict=True)], label="decode+NMS p50")
    ax.scatter(list(x), p95, color="k", marker="_", s=400, label="total p95", zorder=3)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("ms per frame")
    ax.set_title("edge-ssd runtime latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_bench(models: list[str], onnx: list[str] = (), labels: str | None = None, frames: int = 200,
              warmup: int = 10, threads: list[int | None] = (None,), backends: list[str] | None = None,
              image: str | None = None, pipeline: bool = True, rss: bool = True, progress: bool = True) -> dict:
    """Everything ``edge-ssd bench`` measures, as a dict (``rows`` per model/backend/threads)."""
    from pathlib import Path

    from tqdm import tqdm

    from ..errors import UserError
    from ..runtime.backends import available_backends
    from ..runtime.detector import load_detector

    avail = {b["name"]: b for b in available_backends()}
    frame = bench_frame(image)
    jobs: list[tuple[str, str, int | None]] = []
    onnx = list(onnx)
    for m in models:
        if not Path(m).exists():
            raise UserError(f"model {m} not found; pass a bundle directory, .tflite or .onnx")
        if Path(m).suffix == ".onnx":
            onnx.append(m)
            continue
        src = _source_onnx(m)
        if src and src not in onnx:
            onnx.append(src)
        for b in ("litert", "tflite_runtime", "tensorflow", "edgetpu"):
            if backends and b not in backends:
                continue
            if not avail[b]["available"] or (b == "edgetpu" and not (backends and "edgetpu" in backends)):
                continue
            for t in threads:
                jobs.append((m, b, t))
    if not backends or "onnxruntime" in backends:
        if avail["onnxruntime"]["available"]:
            for o in dict.fromkeys(onnx):
                for t in threads:
                    jobs.append((o, "onnxruntime", t))
    if not jobs:
        raise UserError("nothing to benchmark: no installed backend can run the given model(s); "
                        "install ai-edge-litert (TFLite) or onnxruntime (.onnx)")
    rows, skipped = [], []
    for m, b, t in tqdm(jobs, desc="bench", unit="config", disable=None if progress else True):
        try:
            det = load_detector(m, backend=b, threads=t, labels=labels)
        except UserError as e:
            skipped.append({"model": m, "backend": b, "threads": t, "error": str(e)})
            continue
        r = {"model": det.name, "path": m, "backend": b, "threads": t or "default", "input_dtype": _model_dtype(det),
             "input_size": list(det.input_size)}
        r.update(bench_detector(det, frame, frames, warmup))
        if pipeline:
            r.update(bench_pipeline(det, frame, frames))
            r["pipeline_vs_bare"] = round(r["pipeline_fps"] / r["bare_fps"], 3) if r["bare_fps"] else None
        rows.append(r)
    out = {"frame": list(frame.shape), "frames": frames, "rows": rows, "skipped": skipped,
           "nms_3000x21_ms": bench_nms(frames=frames),
           "backends": list(avail.values())}
    if rss:
        # the device case: an int8 bundle on a TFLite runtime if one was given
        tfl = [r for r in rows if r["backend"] != "onnxruntime"]
        first = next((r for r in tfl if r["input_dtype"] in ("int8", "uint8")), tfl[0] if tfl else None) \
            or (rows[0] if rows else None)
        if first:
            out["rss"] = {"model": first["path"], "backend": first["backend"],
                          **bench_rss(first["path"], first["backend"], min(frames, 100), image)}
    return out


def format_table(res: dict) -> str:
    """A Markdown table of the rows (the README's)."""
    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["| model | input | backend | threads | preprocess p50/p95 ms | inference p50/p95 ms | "
             "decode+NMS p50/p95 ms | FPS | bare FPS | pipeline FPS | pipeline/bare |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        s = [f"{f(r[k]['p50'], 2)} / {f(r[k]['p95'], 2)}" for k in ("preprocess_ms", "inference_ms", "postprocess_ms")]
        size = f"{r['input_size'][0]}x{r['input_size'][1]}"
        lines.append(f"| {r['model']} | {r['input_dtype']} {size} | {r['backend']} | {r['threads']} | "
                     f"{s[0]} | {s[1]} | {s[2]} | {f(r['fps'])} | {f(r['bare_fps'])} | "
                     f"{f(r.get('pipeline_fps'))} | {f(r.get('pipeline_vs_bare'), 3)} |")
    n = res["nms_3000x21_ms"]
    lines.append("")
    lines.append(f"decode+softmax+NMS on {n['shape'][0]}x{n['shape'][1]} (synthetic logits, real priors): "
                 f"p50 {f(n['p50'], 3)} ms, p95 {f(n['p95'], 3)} ms")
    if "rss" in res:
        r = res["rss"]
        lines.append(f"resident memory of a pipeline process ({r.get('backend')}, {r.get('model')}): "
                     f"{r.get('rss_mb', r.get('error'))} MB")
    for s in res.get("skipped", []):
        lines.append(f"skipped {s['model']} on {s['backend']}: {s['error']}")
    return "\n".join(lines)


def run(args) -> int:
    import json

    from ..errors import DependencyError, UserError

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
    if not res["rows"] and res.get("skipped"):
        s = res["skipped"][0]
        raise UserError(f"nothing could be benchmarked: {s['error']}")
    if args.plot and res["rows"]:
        plot_results(res["rows"], args.plot)
        res["plot"] = args.plot
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(format_table(res))
        if args.plot:
            print(f"plot: {args.plot}")
    return 0
