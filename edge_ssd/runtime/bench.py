"""The runtime measurements behind ``edge-ssd bench`` and ``bench/bench_runtime.py``: stage latencies per
backend, the threaded pipeline against the bare interpreter, decode+NMS on a 3000x21 output, resident memory.
Numbers are measured and reported, never asserted. Results are typed (:class:`BenchResult`, :class:`BenchRow`);
``to_json()`` gives the JSON of ``edge-ssd bench --json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from .backends import TFLITE_BACKENDS
from .stats import Summary, summarize_ms

# backends that run a .tflite, in the order they are tried (edgetpu only when asked for)
_TFLITE_ORDER = (*TFLITE_BACKENDS, "edgetpu")


@dataclass(frozen=True)
class StageTimes:
    """Per-frame latencies (ms) of one detector, and the bare interpreter's rate."""

    preprocess_ms: Summary
    inference_ms: Summary
    postprocess_ms: Summary
    total_ms: Summary
    fps: float
    bare_fps: float


@dataclass(frozen=True)
class PipelineRun:
    pipeline_fps: float
    processed: int
    latency_ms: Summary
    inference_ms: Summary


@dataclass(frozen=True)
class BenchRow:
    model: str  # the detector's name
    path: str
    backend: str
    threads: int | str  # "default" when the runtime chose
    input_dtype: str
    input_size: list[int]
    stages: StageTimes
    pipeline: PipelineRun | None = None

    @property
    def pipeline_vs_bare(self) -> float | None:
        if self.pipeline is None or not self.stages.bare_fps:
            return None
        return round(self.pipeline.pipeline_fps / self.stages.bare_fps, 3)

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("stages", "pipeline")}
        d.update(asdict(self.stages))
        if self.pipeline is not None:
            pipe = asdict(self.pipeline)
            d.update({"pipeline_fps": pipe["pipeline_fps"], "processed": pipe["processed"],
                      "latency_ms": pipe["latency_ms"], "pipeline_inference_ms": pipe["inference_ms"],
                      "pipeline_vs_bare": self.pipeline_vs_bare})
        return d


@dataclass(frozen=True)
class NmsTimes:
    shape: list[int]
    detections: int
    times: Summary


@dataclass(frozen=True)
class Skipped:
    model: str
    backend: str
    threads: int | None
    error: str


@dataclass(frozen=True)
class Memory:
    """Resident memory of a fresh pipeline process (or why it could not be measured)."""

    model: str
    backend: str
    rss_mb: float | None = None
    processed: int = 0
    error: str | None = None


@dataclass
class BenchResult:
    frame: list[int]
    frames: int
    rows: list[BenchRow]
    skipped: list[Skipped]
    nms: NmsTimes
    backends: list[dict]
    rss: Memory | None = None
    extra: dict = field(default_factory=dict)  # e.g. the machine, added by bench/bench_runtime.py

    def to_json(self) -> dict:
        out = {"frame": self.frame, "frames": self.frames, "rows": [r.to_json() for r in self.rows],
               "skipped": [asdict(s) for s in self.skipped],
               "nms_3000x21_ms": {"shape": self.nms.shape, "detections": self.nms.detections,
                                  **self.nms.times.to_json()},
               "backends": self.backends, **self.extra}
        if self.rss is not None:
            out["rss"] = asdict(self.rss)
        return out


# -- measurements ---------------------------------------------------------------------------------------


def bench_frame(image: str | None = None) -> np.ndarray:
    """The frame to measure on: ``image`` if given, else a generated 640x480 picture of shapes."""
    from ..model.preprocess import read_image
    from ..train.synth import SynthConfig, render_image

    if image:
        try:
            return read_image(image)
        except ValueError as e:
            raise UserError(str(e)) from None
    return render_image(np.random.default_rng(0), SynthConfig(), size=(640, 480)).image


def bench_detector(det, frame, frames: int = 200, warmup: int = 10) -> StageTimes:
    """Stage latencies (ms) of ``det`` on ``frame``, and the bare interpreter's FPS."""
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
    return StageTimes(summarize_ms(pre), summarize_ms(inf), summarize_ms(post), summarize_ms(total),
                      fps=round(1000.0 / (sum(total) / len(total)), 1), bare_fps=round(frames / bare, 1))


def repeat_source(frame, n: int, name: str = "bench"):
    """An in-memory finite source: the same frame ``n`` times (no decode cost, for pipeline throughput)."""
    from ..capture.base import Source, SourceEnded

    class _Repeat(Source):
        kind = "memory"
        finite = True

        def __init__(self):
            super().__init__(name, latest=False, reconnect=False)
            self._left = n

        def _connect(self):
            self._left = n

        def _grab(self):
            if self._left <= 0:
                raise SourceEnded()
            self._left -= 1
            return frame

    return _Repeat()


def bench_pipeline(det, frame, frames: int = 200) -> PipelineRun:
    """FPS of the threaded pipeline processing every one of ``frames`` frames (no sinks)."""
    from .pipeline import Pipeline, SourceConfig

    Pipeline(det, [SourceConfig(repeat_source(frame, 5))], [], process_all=True).run_until_done(60)  # warm-up
    p = Pipeline(det, [SourceConfig(repeat_source(frame, frames))], [], process_all=True)
    t0 = time.perf_counter()
    st = p.run_until_done(600)
    dt = time.perf_counter() - t0
    return PipelineRun(round(st.processed / dt, 1), st.processed, st.latency_ms, st.inference_ms)


def bench_nms(n_priors: int = 3000, n_classes: int = 21, frames: int = 200, seed: int = 0) -> NmsTimes:
    """decode + softmax + NMS on a synthetic SSD output of ``n_priors`` x ``n_classes`` (raw logits/offsets
    against real MobileNet-SSD priors, a few confident objects), like an int8 body's outputs."""
    from ..model.box import postprocess
    from ..model.priors import MOBILENET_SSD_SPECS, generate_priors

    priors = generate_priors(MOBILENET_SSD_SPECS, 300)[:n_priors]
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (priors.shape[0], n_classes)).astype(np.float32)
    logits[:, 0] += 4.0  # mostly background
    hot = rng.choice(priors.shape[0], 60, replace=False)
    logits[hot, rng.integers(1, n_classes, hot.size)] += 9.0
    loc = rng.normal(0, 0.5, (priors.shape[0], 4)).astype(np.float32)
    ts = []
    d = None
    for _ in range(frames):
        t0 = time.perf_counter()
        d = postprocess(logits, loc, priors, score_fn="softmax", prob_threshold=0.4)
        ts.append((time.perf_counter() - t0) * 1e3)
    return NmsTimes([int(priors.shape[0]), n_classes], len(d) if d is not None else 0, summarize_ms(ts))


_RSS_CHILD = """
import json, sys
from edge_ssd.daemon.health import rss_bytes
from edge_ssd.runtime.bench import bench_frame, repeat_source
from edge_ssd.runtime.detector import load_detector
from edge_ssd.runtime.pipeline import Pipeline, SourceConfig
model, backend, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
det = load_detector(model, backend=backend)
frame = bench_frame(sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None)
st = Pipeline(det, [SourceConfig(repeat_source(frame, n))], [], process_all=True).run_until_done(600)
print(json.dumps({"rss_mb": round(rss_bytes() / 2**20, 1), "processed": st.processed}))
"""


def bench_rss(model: str, backend: str = "auto", frames: int = 100, image: str | None = None) -> Memory:
    """Resident memory (RSS from /proc, as the daemon reports it; no psutil) of a fresh process that loads
    ``model`` and runs a pipeline."""
    r = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(model), backend, str(frames), image or ""],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return Memory(model, backend, error=(r.stderr.strip().splitlines() or ["?"])[-1])
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return Memory(model, backend, rss_mb=float(d["rss_mb"]), processed=int(d["processed"]))


def _source_onnx(model: str) -> str | None:
    """The source ONNX of a bundle, if its manifest names a file that exists (absolute or beside it)."""
    from ..model.bundle import BundleError, is_bundle, load_manifest

    p = Path(model)
    if not is_bundle(p):
        return None
    try:
        m, _ = load_manifest(p, verify=False)
    except BundleError:
        return None
    for key in ("path", "onnx", "file", "name"):
        v = m.source.get(key)
        if not v:
            continue
        for cand in (Path(v), p / v, p.parent / v):
            if cand.suffix == ".onnx" and cand.is_file():
                return str(cand)
    return None


def plot_results(rows: list[BenchRow], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r.model}\n{r.backend} t={r.threads}" for r in rows]
    pre = [r.stages.preprocess_ms.p50 or 0.0 for r in rows]
    inf = [r.stages.inference_ms.p50 or 0.0 for r in rows]
    post = [r.stages.postprocess_ms.p50 or 0.0 for r in rows]
    p95 = [r.stages.total_ms.p95 or 0.0 for r in rows]
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


def _jobs(models: list[str], onnx: list[str], threads: Sequence[int | None], backends: Sequence[str] | None,
          avail: dict) -> list[tuple[str, str, int | None]]:
    """(model, backend, threads) to measure: each model on every installed TFLite backend asked for, and the
    ONNX models (given, or the bundles' sources) on ONNX Runtime."""
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
        for b in _TFLITE_ORDER:
            if backends and b not in backends:
                continue
            if not avail[b]["available"] or (b == "edgetpu" and not (backends and "edgetpu" in backends)):
                continue
            jobs += [(m, b, t) for t in threads]
    if (not backends or "onnxruntime" in backends) and avail["onnxruntime"]["available"]:
        jobs += [(o, "onnxruntime", t) for o in dict.fromkeys(onnx) for t in threads]
    if not jobs:
        raise UserError("nothing to benchmark: no installed backend can run the given model(s); "
                        "install ai-edge-litert (TFLite) or onnxruntime (.onnx)")
    return jobs


def run_bench(models: Sequence[str], onnx: Sequence[str] = (), labels: str | None = None, frames: int = 200,
              warmup: int = 10, threads: Sequence[int | None] = (None,), backends: Sequence[str] | None = None,
              image: str | None = None, pipeline: bool = True, rss: bool = True,
              progress: bool = True) -> BenchResult:
    """Everything ``edge-ssd bench`` measures: one :class:`BenchRow` per model/backend/threads."""
    from tqdm import tqdm

    from .backends import available_backends
    from .detector import load_detector

    avail = {b["name"]: b for b in available_backends()}
    frame = bench_frame(image)
    rows: list[BenchRow] = []
    skipped: list[Skipped] = []
    for m, b, t in tqdm(_jobs(list(models), list(onnx), threads, backends, avail), desc="bench", unit="config",
                        disable=None if progress else True):
        try:
            det = load_detector(m, backend=b, threads=t, labels=labels)
        except UserError as e:
            skipped.append(Skipped(m, b, t, str(e)))
            continue
        rows.append(BenchRow(model=det.name, path=m, backend=b, threads=t or "default",
                             input_dtype=str(det.input_dtype), input_size=list(det.input_size),
                             stages=bench_detector(det, frame, frames, warmup),
                             pipeline=bench_pipeline(det, frame, frames) if pipeline else None))
    res = BenchResult(frame=list(frame.shape), frames=frames, rows=rows, skipped=skipped,
                      nms=bench_nms(frames=frames), backends=list(avail.values()))
    if rss and rows:
        # the device case: an int8 bundle on a TFLite runtime if one was given
        tfl = [r for r in rows if r.backend != "onnxruntime"]
        first = next((r for r in tfl if r.input_dtype in ("int8", "uint8")), tfl[0] if tfl else rows[0])
        res.rss = bench_rss(first.path, first.backend, min(frames, 100), image)
    return res


def format_table(res: BenchResult) -> str:
    """A Markdown table of the rows (the README's)."""

    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    lines = ["| model | input | backend | threads | preprocess p50/p95 ms | inference p50/p95 ms | "
             "decode+NMS p50/p95 ms | FPS | bare FPS | pipeline FPS | pipeline/bare |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in res.rows:
        st = r.stages
        s = [f"{f(x.p50, 2)} / {f(x.p95, 2)}" for x in (st.preprocess_ms, st.inference_ms, st.postprocess_ms)]
        size = f"{r.input_size[0]}x{r.input_size[1]}"
        lines.append(f"| {r.model} | {r.input_dtype} {size} | {r.backend} | {r.threads} | {s[0]} | {s[1]} | {s[2]} | "
                     f"{f(st.fps)} | {f(st.bare_fps)} | {f(r.pipeline.pipeline_fps if r.pipeline else None)} | "
                     f"{f(r.pipeline_vs_bare, 3)} |")
    n = res.nms
    lines.append("")
    lines.append(f"decode+softmax+NMS on {n.shape[0]}x{n.shape[1]} (synthetic logits, real priors): "
                 f"p50 {f(n.times.p50, 3)} ms, p95 {f(n.times.p95, 3)} ms")
    if res.rss is not None:
        m = res.rss
        lines.append(f"resident memory of a pipeline process ({m.backend}, {m.model}): "
                     f"{m.rss_mb if m.error is None else m.error} MB")
    for sk in res.skipped:
        lines.append(f"skipped {sk.model} on {sk.backend}: {sk.error}")
    return "\n".join(lines)
