"""Benchmark the host-side SSD tail: decode + softmax + per-class NMS on 3000 priors x 21 classes.

Cases (raw logits and offsets, as a cut int8 body hands them to the host):
  realistic   most priors confidently background, a few dozen candidates above 0.4, prob_threshold 0.4
  eval-0.01   the same frame with prob_threshold 0.01 (pytorch-ssd's eval setting: many more candidates)
  heavy-0.01  flat logits (an uncertain frame) with prob_threshold 0.01: thousands of candidates, 200 per class
  probs       already-softmaxed scores + decoded boxes (a full pytorch-ssd export), prob_threshold 0.4

Run on one core:  taskset -c 0 .venv/bin/python bench/bench_postprocess.py [--repeat 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from edge_ssd.model.box import decode_boxes, postprocess, softmax
from edge_ssd.model.priors import generate_priors


def realistic_frame(rng: np.random.Generator, priors: np.ndarray, n_objects: int = 6, flat: bool = False):
    n, c = priors.shape[0], 21
    logits = rng.normal(0.0, 1.0, (n, c)).astype(np.float32)
    if not flat:
        logits[:, 0] += 8.0  # confidently background
        # a few objects, each seen by a handful of neighbouring priors with decreasing confidence
        for _ in range(n_objects):
            cls = int(rng.integers(1, c))
            center = int(rng.integers(0, n - 10))
            for k in range(int(rng.integers(4, 10))):
                logits[center + k, 0] = 0.0
                logits[center + k, cls] = 4.0 - 0.3 * k + float(rng.normal(0, 0.2))
    else:
        logits *= 0.5
    offsets = rng.normal(0.0, 0.5, (n, 4)).astype(np.float32)
    return logits, offsets


def timeit(fn, repeat: int) -> tuple[float, float, float]:
    for _ in range(min(50, repeat)):
        fn()
    t = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        t[i] = time.perf_counter() - t0
    t *= 1000.0
    return float(np.percentile(t, 50)), float(np.percentile(t, 95)), float(statistics.fmean(t))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    priors = generate_priors()
    logits, offsets = realistic_frame(rng, priors)
    flat_logits, flat_offsets = realistic_frame(rng, priors, flat=True)
    probs, boxes = softmax(logits), decode_boxes(offsets, priors)
    cases = {
        "realistic": lambda: postprocess(logits, offsets, priors, score_fn="softmax", prob_threshold=0.4),
        "eval-0.01": lambda: postprocess(logits, offsets, priors, score_fn="softmax", prob_threshold=0.01),
        "heavy-0.01": lambda: postprocess(flat_logits, flat_offsets, priors, score_fn="softmax", prob_threshold=0.01),
        "probs": lambda: postprocess(probs, boxes, None, score_fn="none", prob_threshold=0.4),
    }
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        cpus = []
    print(f"priors {priors.shape[0]} x 21 classes, numpy {np.__version__}, cpus {cpus}, repeat {args.repeat}")
    print(f"{'case':<11} {'dets':>5} {'cand>thr':>8} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8}")
    for name, fn in cases.items():
        d = fn()
        thr = 0.01 if "0.01" in name else 0.4
        p = probs if name in ("realistic", "eval-0.01", "probs") else softmax(flat_logits)
        n_cand = int((p[:, 1:] > thr).sum())
        p50, p95, mean = timeit(fn, args.repeat)
        print(f"{name:<11} {len(d):>5} {n_cand:>8} {p50:>8.3f} {p95:>8.3f} {mean:>8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
