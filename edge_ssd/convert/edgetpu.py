"""The Edge TPU compiler: run ``edgetpu_compiler`` when it is installed and read its log.

The compiler maps a contiguous run of supported int8 ops to the Edge TPU and leaves the rest on the CPU
(coral.ai/docs/edgetpu/compiler). For our models the body must be mapped whole; only the float tail that
``--postprocess-model`` appends (DEQUANTIZE, CONCATENATION, SOFTMAX, GATHER, the ``TFLite_Detection_PostProcess``
custom op, ...) stays on the CPU, as in every Coral detection model. :func:`compile_for_edgetpu` fails the
conversion when more than that is left on the CPU, unless ``allow_cpu_ops``.

Quantisation: the Edge TPU runs only models that are fully 8-bit quantised (coral.ai/docs/edgetpu/models-intro);
Coral's documented path for TensorFlow 2 is post-training full-integer quantisation, which quantises convolution
weights per axis (per channel), and compiler 15/16 compiles such models (google-coral/edgetpu#366). So both
per-channel and per-tensor bodies are Edge TPU models; ``--quant auto`` keeps the one measured best.

The log format (``edgetpu_compiler -s``)::

    Edge TPU Compiler version 16.0.384591198
    ...
    On-chip memory used for caching model parameters: 1.08MiB
    On-chip memory remaining for caching model parameters: 6.54MiB
    Off-chip memory used for streaming uncached model parameters: 0.00B
    Number of Edge TPU subgraphs: 1
    Total number of operations: 84
    ...
    Number of operations that will run on Edge TPU: 64
    Number of operations that will run on CPU: 20

    Operator                       Count      Status

    CONV_2D                        26         Mapped to Edge TPU
    DEQUANTIZE                     8          Operation is working on an unsupported data type
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MAPPED = "Mapped to Edge TPU"
INSTALL_HINT = ("install it on an x86-64 Debian/Ubuntu host (apt-get install edgetpu-compiler from "
                "packages.cloud.google.com/apt coral-edgetpu-stable, see coral.ai/docs/edgetpu/compiler)")
_UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


@dataclass
class OpRow:
    name: str
    count: int
    status: str

    @property
    def on_tpu(self) -> bool:
        return self.status.startswith(MAPPED)


@dataclass
class CompilerLog:
    """What ``edgetpu_compiler`` said about one model."""

    version: str | None = None
    compiled: bool = False
    error: str = ""
    on_chip_bytes: int | None = None
    on_chip_remaining_bytes: int | None = None
    off_chip_bytes: int | None = None
    subgraphs: int | None = None
    total_ops: int | None = None
    ops_on_tpu: int | None = None
    ops_on_cpu: int | None = None
    operators: list[OpRow] = field(default_factory=list)

    def cpu_ops(self) -> Counter:
        """Operator name -> how many stay on the CPU (from the operator table)."""
        c: Counter = Counter()
        for r in self.operators:
            if not r.on_tpu:
                c[r.name] += r.count
        return c

    def to_json(self) -> dict:
        return {"version": self.version, "compiled": self.compiled, "error": self.error,
                "on_chip_bytes": self.on_chip_bytes, "on_chip_remaining_bytes": self.on_chip_remaining_bytes,
                "off_chip_bytes": self.off_chip_bytes, "subgraphs": self.subgraphs, "total_ops": self.total_ops,
                "ops_on_tpu": self.ops_on_tpu, "ops_on_cpu": self.ops_on_cpu,
                "operators": [{"name": r.name, "count": r.count, "status": r.status} for r in self.operators]}


def _bytes(text: str, label: str) -> int | None:
    m = re.search(re.escape(label) + r":\s*([\d.]+)\s*(B|KiB|MiB|GiB)", text)
    return int(round(float(m.group(1)) * _UNITS[m.group(2)])) if m else None


def _int(text: str, label: str) -> int | None:
    m = re.search(re.escape(label) + r":\s*(\d+)", text)
    return int(m.group(1)) if m else None


def parse_compiler_log(text: str) -> CompilerLog:
    """Parse the compiler's stdout (or its ``*_edgetpu.log``)."""
    log = CompilerLog()
    m = re.search(r"Edge TPU Compiler version\s+(\S+)", text)
    log.version = m.group(1) if m else None
    log.compiled = "Model compiled successfully" in text
    if not log.compiled:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("Edge TPU Compiler")]
        bad = [ln for ln in lines if re.search(r"error|invalid|not quantized|abort|fail", ln, re.I)]
        log.error = "; ".join(bad[:2]) if bad else (lines[0] if lines else "no output")
    log.on_chip_bytes = _bytes(text, "On-chip memory used for caching model parameters")
    log.on_chip_remaining_bytes = _bytes(text, "On-chip memory remaining for caching model parameters")
    log.off_chip_bytes = _bytes(text, "Off-chip memory used for streaming uncached model parameters")
    log.subgraphs = _int(text, "Number of Edge TPU subgraphs")
    log.total_ops = _int(text, "Total number of operations")
    log.ops_on_tpu = _int(text, "Number of operations that will run on Edge TPU")
    log.ops_on_cpu = _int(text, "Number of operations that will run on CPU")
    for m in re.finditer(r"^([A-Za-z][A-Za-z0-9_]+)\s+(\d+)\s+([A-Z]\S.*?)\s*$", text, re.M):
        log.operators.append(OpRow(_op_name(m.group(1)), int(m.group(2)), m.group(3)))
    if log.compiled and log.ops_on_tpu is None and log.total_ops is not None:
        # a fully mapped model: the compiler prints no per-device counts
        log.ops_on_tpu, log.ops_on_cpu = log.total_ops, 0
    return log


def _op_name(name: str) -> str:
    """The compiler prints builtin ops in upper case and custom ops as CUSTOM."""
    return name if name.isupper() else "CUSTOM"


def body_ops_on_cpu(log: CompilerLog, tail_ops: list[str]) -> dict[str, int]:
    """Ops left on the CPU beyond ``tail_ops`` (the float tail this project appended, which may stay there)."""
    allowed = Counter(_op_name(n) for n in tail_ops)
    if log.operators:
        return {n: c - allowed[n] for n, c in sorted(log.cpu_ops().items()) if c > allowed[n]}
    if log.ops_on_cpu is not None and log.ops_on_cpu > sum(allowed.values()):
        return {"(unnamed)": log.ops_on_cpu - sum(allowed.values())}
    return {}


def compile_for_edgetpu(tflite: Path, out_dir: Path, *, tail_ops: list[str] | None = None,
                        allow_cpu_ops: bool = False, timeout_s: int = 600) -> dict:
    """Compile ``tflite`` into ``out_dir/<stem>_edgetpu.tflite`` when the compiler is on PATH. The result's
    ``ok`` is False (with ``failure``) when the compiler fails or leaves body ops on the CPU and not
    ``allow_cpu_ops``; without a compiler ``ok`` is None and ``note`` says how to compile later."""
    tflite, out_dir = Path(tflite), Path(out_dir)
    exe = shutil.which("edgetpu_compiler")
    res: dict = {"model": tflite.name, "compiler": exe, "ok": None}
    if exe is None:
        res["note"] = (f"edgetpu_compiler not found: {INSTALL_HINT}, then run `edgetpu_compiler -s -o {out_dir} "
                       f"{tflite}`")
        return res
    try:
        r = subprocess.run([exe, "-s", "-o", str(out_dir), str(tflite)], capture_output=True, text=True,
                           timeout=timeout_s)
        text, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired:
        text, rc = f"edgetpu_compiler timed out after {timeout_s} s", -1
    except OSError as e:
        text, rc = f"cannot run {exe}: {e.strerror}", -1
    (out_dir / f"{tflite.stem}_edgetpu_compiler.log").write_text(text)
    log = parse_compiler_log(text)
    res.update(returncode=rc, log=log.to_json())
    out = out_dir / f"{tflite.stem}_edgetpu.tflite"
    if rc != 0 or not log.compiled or not out.is_file():
        res.update(ok=False, failure=f"edgetpu_compiler could not compile {tflite.name}: {log.error or text[:160]}")
        return res
    res["output"] = out.name
    extra = body_ops_on_cpu(log, tail_ops or [])
    res["body_ops_on_cpu"] = extra
    if extra and not allow_cpu_ops:
        listed = ", ".join(f"{n} x{c}" for n, c in extra.items())
        res.update(ok=False, failure=f"the Edge TPU compiler left body ops on the CPU ({listed}) in {tflite.name}; "
                                     "see its log, or pass --allow-cpu-ops to accept the slower model")
        return res
    res["ok"] = True
    return res
