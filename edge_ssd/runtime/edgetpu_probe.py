"""Probe the Edge TPU delegate in a child process before anything loads it in-process.

The 2021 ``libedgetpu1-std`` (Coral's apt repository) is built against TensorFlow Lite 2.5; with TFLite >= 2.12
and LiteRT it segfaults while the delegate is created or applied (google-coral/edgetpu#812,
tensorflow/tensorflow#62371). In-process that kills ``doctor`` and the daemon without a word. The probe loads
the library, creates the delegate with the configured device and, given a model, builds an interpreter with it
and runs it once, all in a child: a crash there is one line naming the fix instead of a dead process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .backends import EDGETPU_LIB

RUNTIME_MODULES = "ai_edge_litert.interpreter,tflite_runtime.interpreter,tensorflow.lite"
ENV_LIB = "EDGE_SSD_EDGETPU_LIB"  # another library path (a locally built libedgetpu); tests use it too
DEVICES_HELP = "usb, usb:0, usb:1, pci, pci:0"
FIX_CRASH = ("install a libedgetpu built for the installed TFLite runtime: `sudo deploy/install.sh --coral` "
             "(feranick/libedgetpu builds; the 2021 libedgetpu1-std only works with TFLite <= 2.11)")
FIX_MISSING = ("install the Edge TPU runtime with `sudo deploy/install.sh --coral` (a libedgetpu1-std built for "
               "your TFLite runtime, e.g. from feranick/libedgetpu, and the udev rules), then unplug and replug the "
               "Coral")
FIX_NO_DEVICE = ("plug the Coral in (USB: a USB 3 port, then replug after installing the udev rules; PCIe/M.2: "
                 "the gasket/apex driver, see `edge-ssd doctor`) or set edgetpu_device (" + DEVICES_HELP + ")")

_CHILD = r"""
import ctypes, json, sys
lib, device, model, modules = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
def out(status, detail=""):
    print(json.dumps({"status": status, "detail": detail}), flush=True)
    sys.exit(0)
try:
    ctypes.CDLL(lib)
except OSError as e:
    out("missing", str(e))
load_delegate = Interpreter = None
for mod in modules.split(","):
    try:
        m = __import__(mod, fromlist=["Interpreter"])
    except ImportError:
        continue
    load_delegate = getattr(m, "load_delegate", None) or m.experimental.load_delegate
    Interpreter, runtime = m.Interpreter, mod.split(".")[0]
    break
if load_delegate is None:
    out("no_runtime", "no TFLite runtime (ai_edge_litert or tflite_runtime) importable")
print(json.dumps({"status": "loaded", "detail": runtime}), flush=True)
try:
    d = load_delegate(lib, {"device": device} if device else {})
except AttributeError as e:
    out("not_delegate", str(e).strip().splitlines()[0])
except (ValueError, RuntimeError, OSError) as e:
    out("no_device", (str(e).strip().splitlines() or [type(e).__name__])[0])
if model:
    try:
        it = Interpreter(model_path=model, experimental_delegates=[d])
        it.allocate_tensors()
        it.invoke()
    except (ValueError, RuntimeError) as e:
        out("model_error", (str(e).strip().splitlines() or [type(e).__name__])[0])
out("ok", runtime)
"""


@dataclass
class ProbeResult:
    status: str  # ok, missing, not_delegate, no_device, model_error, no_runtime, crashed, timeout
    lib: str
    device: str | None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def message(self) -> str:
        """What happened, without the fix."""
        where = f"{self.lib}" + (f" (device {self.device})" if self.device else "")
        return {
            "ok": f"Edge TPU delegate {where} loads and runs ({self.detail})",
            "crashed": f"{where} crashed the process that loaded it ({self.detail})",
            "timeout": f"{where} hung while loading ({self.detail})",
            "missing": f"{where} cannot be loaded ({self.detail})",
            "not_delegate": f"{where} is not a TFLite delegate ({self.detail})",
            "no_device": f"{where} found no Edge TPU ({self.detail or 'the delegate was not created'})",
            "model_error": f"{where} loaded but cannot run the model ({self.detail})",
        }.get(self.status, f"{where}: {self.detail}")

    def fix(self) -> str:
        return {
            "ok": "", "crashed": FIX_CRASH, "timeout": "replug the Coral; if it persists, " + FIX_CRASH,
            "missing": FIX_MISSING, "not_delegate": FIX_MISSING, "no_device": FIX_NO_DEVICE,
            "model_error": "compile the model with edgetpu_compiler (`edge-ssd convert --target edgetpu`)",
        }.get(self.status, "install a TFLite runtime (`pip install ai-edge-litert`)")

    def line(self) -> str:
        """One line: what happened and the fix."""
        return self.message() + (f"; {self.fix()}" if self.fix() else "")


def edgetpu_lib() -> str:
    return os.environ.get(ENV_LIB) or EDGETPU_LIB


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


_PROBED: dict[tuple, ProbeResult] = {}


def probe_once(device: str | None = None, model_path: str | Path | None = None,
               runtime_module: str | None = None) -> ProbeResult:
    """:func:`probe_edgetpu`, once per library, device and model file (and its mtime) in this process."""
    mtime = Path(model_path).stat().st_mtime_ns if model_path and Path(model_path).exists() else None
    key = (edgetpu_lib(), device, str(model_path or ""), mtime, runtime_module)
    if key not in _PROBED:
        _PROBED[key] = probe_edgetpu(device, model_path, runtime_module=runtime_module)
    return _PROBED[key]


def probe_edgetpu(device: str | None = None, model_path: str | Path | None = None, lib: str | None = None,
                  timeout_s: float = 60.0, runtime_module: str | None = None) -> ProbeResult:
    """Load the delegate (and run ``model_path`` with it) in a child process with the TFLite runtime
    ``runtime_module`` (default: the first importable of ai_edge_litert, tflite_runtime, tensorflow.lite);
    never raises."""
    lib = lib or edgetpu_lib()
    cmd = [sys.executable, "-c", _CHILD, lib, device or "", str(model_path or ""), runtime_module or RUNTIME_MODULES]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return ProbeResult("timeout", lib, device, f"no answer in {timeout_s:.0f} s")
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    last = json.loads(lines[-1]) if lines else {"status": "?", "detail": ""}
    if r.returncode < 0 or (r.returncode != 0 and last["status"] in ("loaded", "?")):
        stage = "creating or applying the delegate" if last["status"] == "loaded" else "loading the library"
        sig = _signal_name(r.returncode) if r.returncode < 0 else f"exit {r.returncode}"
        return ProbeResult("crashed", lib, device, f"{sig} while {stage}")
    if last["status"] == "?":
        err = (r.stderr.strip().splitlines() or ["no output"])[-1]
        return ProbeResult("crashed", lib, device, f"exit {r.returncode}: {err[:160]}")
    return ProbeResult(last["status"], lib, device, last.get("detail", ""))


def main(argv: list[str] | None = None) -> int:
    """``python -m edge_ssd.runtime.edgetpu_probe [DEVICE [MODEL]]``: print the probe's line; exit 0 when the
    delegate loads, 2 when it crashes, 1 otherwise (used by ``deploy/install.sh --coral``)."""
    args = sys.argv[1:] if argv is None else argv
    r = probe_edgetpu(args[0] if args else None, args[1] if len(args) > 1 else None)
    print(r.line())
    return 0 if r.ok else 2 if r.status in ("crashed", "timeout") else 1


if __name__ == "__main__":
    sys.exit(main())
