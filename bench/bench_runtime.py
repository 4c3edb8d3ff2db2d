#!/usr/bin/env python
"""Runtime benchmark for the README table: every installed backend side by side, float32 vs int8 bundles,
the pipeline's FPS against the bare interpreter's, decode+NMS on 3000x21, resident memory.

    .venv/bin/python bench/bench_runtime.py --model out/mb1-ssd-int8.bundle --model out/mb1-ssd-fp32.bundle \\
        --onnx models/mb1-ssd.onnx --threads 1,2,4 --out bench/results

Writes ``<out>/runtime.json``, ``<out>/runtime.md`` (the Markdown table) and ``<out>/runtime.png``. Without
``--model`` it benchmarks the trained test model that ships with edge-ssd (converted to an int8 bundle on the
fly with ``edge-ssd convert``) and its ONNX source. Numbers are what this machine measured: say which machine
when quoting them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def test_model_bundle(out: Path) -> tuple[str, str]:
    """(int8 bundle, ONNX) of the shipped test model, converted into ``out``."""
    from edge_ssd.convert.api import convert_model
    from edge_ssd.train.testmodel import get_test_model

    tm = get_test_model()
    res = convert_model(tm.onnx_path, out / "testmodel-int8.bundle", calib=tm.dataset_dir, calib_split="train",
                        calib_count=100, labels=list(tm.labels), force=True)
    return str(res.bundle_dir), str(tm.onnx_path)


def main(argv=None) -> int:
    from edge_ssd.runtime.bench import format_table, plot_results, run_bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", default=[])
    ap.add_argument("--onnx", action="append", default=[])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--image")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args(argv)
    models, onnx = list(a.model), list(a.onnx)
    tmp = None
    if not models:
        tmp = tempfile.TemporaryDirectory()
        bundle, source = test_model_bundle(Path(tmp.name))
        models, onnx = [bundle], onnx or [source]
    threads = [int(t) for t in a.threads.split(",")]
    res = run_bench(models, onnx, frames=a.frames, threads=threads, image=a.image)
    import os

    machine = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version()}
    res.extra["machine"] = machine
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "runtime.json").write_text(json.dumps(res.to_json(), indent=1))
    table = format_table(res)
    (out / "runtime.md").write_text(f"Machine: {machine['platform']}, {machine['cpus']} CPUs\n\n"
                                    + table + "\n")
    plot_results(res.rows, str(out / "runtime.png"))
    print(table)
    print(f"written: {out}/runtime.json, runtime.md, runtime.png")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
