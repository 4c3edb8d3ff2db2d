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

EDGETPU_LIB = "libedgetpu.so.1"
ENV_LIB = "EDGE_SSD_EDGETPU_LIB"  # another library path (a locally built libedgetpu); tests use it too
DEVICES_HELP = "usb, usb:0, usb:1, pci, pci:0"
FIX_CRASH = ("install a libedgetpu built for the installed TFLite runtime: `sudo deploy/install.sh --coral` "
             "(feranick/libedgetpu builds; the 2021 libedgetpu1-std only works with TFLite <= 2.11)")
FIX_MISSING = ("install the Edge TPU runtime with `sudo deploy/install.sh --coral` (or a libedgetpu1-std .deb "
               "from feranick/libedgetpu matching your TFLite runtime)")
FIX_NO_DEVICE = ("plug the Coral in (USB: a USB 3 port, then replug after installing the udev rules; PCIe/M.2: "
                 "the gasket/apex driver, see `edge-ssd doctor`) or set edgetpu_device (" + DEVICES_HELP + ")")

_CHILD = r"""
import ctypes, json, sys
lib, device, model = sys.argv[1], sys.argv[2], sys.argv[3]
def out(status, detail=""):
    print(json.dumps({"status": status, "detail": detail}), flush=True)
    sys.exit(0)
try:
    ctypes.CDLL(lib)
except OSError as e:
    out("missing", str(e))
load_delegate = Interpreter = None
for mod in ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"):
    try:
        m = __import__(mod, fromlist=["load_delegate"])
        load_delegate, Interpreter, runtime = m.load_delegate, m.Interpreter, mod.split(".")[0]
        break
    except ImportError:
        pass
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

    def line(self) -> str:
        """One line: what happened and the fix."""
        where = f"{self.lib}" + (f" (device {self.device})" if self.device else "")
        if self.status == "ok":
            return f"Edge TPU delegate {where} loads and runs ({self.detail})"
        if self.status == "crashed":
            return f"{where} crashed the process that loaded it ({self.detail}); {FIX_CRASH}"
        if self.status == "timeout":
            return f"{where} hung while loading ({self.detail}); replug the Coral and {FIX_CRASH}"
        if self.status == "missing":
            return f"{where} cannot be loaded ({self.detail}); {FIX_MISSING}"
        if self.status == "not_delegate":
            return f"{where} is not a TFLite delegate ({self.detail}); {FIX_MISSING}"
        if self.status == "no_device":
            return f"{where} found no Edge TPU ({self.detail}); {FIX_NO_DEVICE}"
        if self.status == "model_error":
            return (f"{where} loaded but cannot run the model ({self.detail}); compile it with edgetpu_compiler "
                    "(`edge-ssd convert --target edgetpu`)")
        return f"{where}: {self.detail}; install a TFLite runtime (`pip install ai-edge-litert`)"


def edgetpu_lib() -> str:
    return os.environ.get(ENV_LIB) or EDGETPU_LIB


def _signal_name(rc: int) -> str:
    try:
        return signal.Signals(-rc).name
    except ValueError:
        return f"signal {-rc}"


def probe_edgetpu(device: str | None = None, model_path: str | Path | None = None, lib: str | None = None,
                  timeout_s: float = 60.0) -> ProbeResult:
    """Load the delegate (and run ``model_path`` with it) in a child process; never raises."""
    lib = lib or edgetpu_lib()
    cmd = [sys.executable, "-c", _CHILD, lib, device or "", str(model_path or "")]
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
