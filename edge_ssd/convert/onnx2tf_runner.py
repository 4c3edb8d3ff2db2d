"""Run onnx2tf (its own venv, ``convert/.venv``) as a subprocess, log to a file, show elapsed time.

onnx2tf 2.6.9 with the flatbuffer_direct backend writes several variants; after the int8 ones it also tries an
int16-activation variant, which fails on depthwise convolutions ("bias->type != kTfLiteInt64") and makes the
process exit 1 *after* the int8 files were written and validated. So success is judged by the int8 file we
need being present (and later by our own validation), not by the exit code alone.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DependencyError, UserError

BACKENDS = ("flatbuffer_direct", "tf_converter")
# the onnx2tf wrapper (fixes per-channel depthwise bias, adds activation percentiles): a plain script, run with
# the toolchain venv's python; it ships inside the package, so an installed edge-ssd finds it too
PATCHED = Path(__file__).resolve().with_name("onnx2tf_patched.py")


def _toolchain_candidates(env: str, venv: str) -> list[Path]:
    """Where the onnx2tf toolchain may be, in order: the environment variable; ``convert/<venv>`` beside the
    environment edge-ssd runs in (``scripts/setup.sh`` makes ``.venv`` and ``convert/.venv`` side by side);
    ``onnx2tf`` on PATH. Nothing here assumes a source checkout."""
    cands = [Path(os.environ[env])] if os.environ.get(env) else []
    cands.append(Path(sys.prefix).parent / "convert" / venv / "bin" / "onnx2tf")
    on_path = shutil.which("onnx2tf")
    if on_path and venv == ".venv":
        cands.append(Path(on_path))
    return cands


def find_onnx2tf(backend: str = "flatbuffer_direct") -> Path:
    """The onnx2tf executable: ``convert/.venv`` (no TensorFlow) for flatbuffer_direct; ``convert/.venv-tf``
    (``onnx2tf[tensorflow]``, about 2.7 GB, made by ``scripts/setup.sh --with-tf``) for tf_converter."""
    if backend == "tf_converter":
        env, venv, how = "EDGE_SSD_ONNX2TF_TF", ".venv-tf", "run `scripts/setup.sh --with-tf` (2.7 GB)"
    else:
        env, venv, how = "EDGE_SSD_ONNX2TF", ".venv", "run scripts/setup.sh"
    cands = _toolchain_candidates(env, venv)
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return c
    raise DependencyError(f"onnx2tf for the {backend} backend not found ({', '.join(str(c) for c in cands)}); "
                          f"{how} to create convert/{venv}, or set {env} to an onnx2tf executable")


def launcher(exe: Path) -> list[str]:
    """How to start onnx2tf: through ``onnx2tf_patched.py`` (fixes per-channel depthwise bias, see
    there) with the venv's python when both exist, else the plain executable."""
    py = exe.parent / "python"
    if PATCHED.is_file() and py.is_file() and not os.environ.get("EDGE_SSD_ONNX2TF_UNPATCHED"):
        # -P: do not put the wrapper's folder (edge_ssd/convert, which has an inspect.py) ahead of the stdlib
        return [str(py), "-P", str(PATCHED)]
    return [str(exe)]


def onnx2tf_version(exe: Path) -> str:
    try:
        r = subprocess.run([str(exe), "-V"], capture_output=True, text=True, timeout=120)
        m = re.search(r"\d+\.\d+\.\d+", r.stdout + r.stderr)
        return m.group(0) if m else (r.stdout + r.stderr).strip()[:40]
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@dataclass
class Onnx2tfResult:
    returncode: int
    seconds: float
    peak_rss_mb: float
    log_path: Path
    out_dir: Path
    command: list[str]
    files: dict = field(default_factory=dict)  # variant -> path
    error: str = ""


def _last_error(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errs = [ln.strip() for ln in lines if re.search(r"(Error|error):", ln)]
    return (errs[-1] if errs else (lines[-1].strip() if lines else ""))[:300]


def run_onnx2tf(onnx_path: Path, out_dir: Path, *, input_name: str, calib_npy: Path, mean: list[float],
                std: list[float], quant_type: str = "per-tensor", input_dtype: str = "int8",
                output_dtype: str = "int8", backend: str = "flatbuffer_direct", log_path: Path | None = None,
                progress: bool = True, extra: list[str] | None = None, timeout: float = 3600,
                activation_percentile: float | None = None) -> Onnx2tfResult:
    """One onnx2tf run; ``activation_percentile`` calibrates activations by percentile instead of min-max
    (flatbuffer_direct through ``onnx2tf_patched.py`` only)."""
    exe = find_onnx2tf(backend)
    if activation_percentile is not None and (backend != "flatbuffer_direct" or len(launcher(exe)) == 1):
        raise UserError("percentile calibration needs the flatbuffer_direct backend run through "
                        "edge_ssd/convert/onnx2tf_patched.py; use --calibration minmax")
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_path or out_dir / "onnx2tf.log"
    # onnx2tf writes its onnxsim-simplified model back over the input file: give it a private copy so the
    # user's model is never modified
    private = out_dir / "input" / Path(onnx_path).name
    if Path(onnx_path).resolve() != private.resolve():
        private.parent.mkdir(exist_ok=True)
        shutil.copyfile(onnx_path, private)
    onnx_path = private
    cmd = [*launcher(exe), "-i", str(onnx_path), "-o", str(out_dir), "-oiqt", "-qt", quant_type,
           "-cind", input_name, str(calib_npy), json.dumps([[[mean]]]), json.dumps([[[std]]]),
           "-iqd", input_dtype, "-oqd", output_dtype, "-tb", backend, *(extra or [])]
    env = dict(os.environ)
    env["PATH"] = str(exe.parent) + os.pathsep + env.get("PATH", "")  # onnxsim lives beside onnx2tf
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("EDGE_SSD_ACTIVATION_PERCENTILE", None)
    if activation_percentile is not None:
        env["EDGE_SSD_ACTIVATION_PERCENTILE"] = repr(float(activation_percentile))
    t0 = time.monotonic()
    peak = [0.0]
    with open(log_path, "w") as logf:
        pre = f"EDGE_SSD_ACTIVATION_PERCENTILE={activation_percentile} " if activation_percentile is not None else ""
        logf.write("$ " + pre + shlex.join(cmd) + "\n")
        logf.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=str(out_dir))
        except OSError as e:
            raise DependencyError(f"cannot run {exe}: {e.strerror}; re-run scripts/setup.sh") from None
        stop = threading.Event()

        def watch():
            try:
                import psutil

                p = psutil.Process(proc.pid)
                while not stop.is_set():
                    try:
                        rss = p.memory_info().rss + sum(c.memory_info().rss for c in p.children(recursive=True))
                        peak[0] = max(peak[0], rss / 2**20)
                    except psutil.Error:
                        pass
                    stop.wait(0.2)
            except ImportError:
                pass

        th = threading.Thread(target=watch, daemon=True)
        th.start()
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=None, desc=f"onnx2tf ({quant_type}, log: {log_path.name})", bar_format="{desc}: {elapsed}",
                       disable=None)
        try:
            while True:
                try:
                    rc = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    if bar is not None:
                        bar.update(0)
                        bar.refresh()
                    if time.monotonic() - t0 > timeout:
                        proc.kill()
                        proc.wait()
                        raise UserError(f"onnx2tf ran longer than {timeout:.0f} s and was stopped; "
                                        f"see {log_path}") from None
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        finally:
            stop.set()
            th.join(1)
            if bar is not None:
                bar.close()
    if peak[0] == 0.0:
        import resource

        peak[0] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stem = onnx_path.stem
    files = {}
    for variant in ("full_integer_quant", "integer_quant", "float32"):
        f = out_dir / f"{stem}_{variant}.tflite"
        if f.is_file():
            files[variant] = f
    res = Onnx2tfResult(rc, time.monotonic() - t0, peak[0], log_path, out_dir, cmd, files)
    if rc != 0:
        res.error = _last_error(log_path)
    return res
