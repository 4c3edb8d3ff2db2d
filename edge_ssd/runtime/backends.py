"""Interpreter backends: one small interface over LiteRT, tflite_runtime, TensorFlow Lite, the Coral Edge TPU
delegate and ONNX Runtime.

A backend holds a loaded model and exposes::

    backend.name            # "litert", "tflite_runtime", "tensorflow", "edgetpu" or "onnxruntime"
    backend.input           # TensorInfo of the (single) input
    backend.outputs         # list[TensorInfo]
    backend.run(tensor)     # -> dict[name, np.ndarray] of outputs, dequantised to float32

Quantisation parameters come from the tensors themselves (``get_input_details()[0]["quantization"]``),
so a bundle whose manifest disagrees with its model file is still run correctly.

TFLite runtimes are tried in order: ``ai_edge_litert`` (the current LiteRT wheel), ``tflite_runtime`` (old
Pi OS images), ``tensorflow.lite`` (a full TensorFlow). The Edge TPU is used through
``load_delegate("libedgetpu.so.1")`` without pycoral.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from ..errors import DependencyError, UserError

log = logging.getLogger(__name__)

# the one list of backends: the config (model.backend), the CLI (--backend) and bench validate against it
BackendChoice = Literal["auto", "litert", "tflite_runtime", "tensorflow", "edgetpu", "onnxruntime"]
BACKEND_CHOICES: tuple[str, ...] = get_args(BackendChoice)  # "auto" first
BACKENDS = BACKEND_CHOICES[1:]
TFLITE_BACKENDS = BACKENDS[:3]  # litert, tflite_runtime, tensorflow: tried in this order
EDGETPU_LIB = "libedgetpu.so.1"

_TFLITE_MODULES = {
    "litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    "tensorflow": "tensorflow.lite",
}
_INSTALL_HINT = (
    "install the TFLite runtime: `pip install ai-edge-litert` (64-bit Linux, aarch64 or x86_64); on a 32-bit "
    "OS flash a 64-bit image"
)
EDGETPU_HINT = (
    "install the Edge TPU runtime (`sudo apt install libedgetpu1-std` from packages.cloud.google.com/apt "
    "coral-edgetpu-stable), make sure its udev rules are installed (/lib/udev/rules.d/60-libedgetpu1-std.rules), "
    "then unplug and replug the Coral USB accelerator"
)


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float = 0.0  # 0.0: not quantised
    zero_point: int = 0
    index: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and np.dtype(self.dtype).kind in "iu"


def _tflite_module(name: str):
    """Import the interpreter module of a TFLite runtime, or None when absent."""
    mod = _TFLITE_MODULES[name]
    try:
        m = importlib.import_module(mod)
    except ImportError:
        return None
    except Exception as e:  # noqa: BLE001 - a broken install (e.g. numpy ABI mismatch) is 'absent', with a note
        log.debug("cannot import %s: %s", mod, e)
        return None
    if name == "tensorflow":  # tensorflow.lite exposes Interpreter and experimental.load_delegate
        return m
    return m


def _module_version(name: str) -> str:
    top = {"litert": "ai_edge_litert", "tflite_runtime": "tflite_runtime", "tensorflow": "tensorflow",
           "onnxruntime": "onnxruntime"}[name]
    try:
        from importlib.metadata import version

        dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(top, top)
        return version(dist)
    except Exception:  # noqa: BLE001 - a version is informational
        return "?"


def available_backends() -> list[dict]:
    """What can run here: one dict per backend (name, available, version, detail). Imports, loads nothing."""
    out = []
    for name in TFLITE_BACKENDS:
        ok = _tflite_module(name) is not None
        out.append({"name": name, "available": ok, "version": _module_version(name) if ok else None,
                    "detail": _TFLITE_MODULES[name] if ok else f"`import {_TFLITE_MODULES[name]}` failed"})
    lib = ctypes.util.find_library("edgetpu")
    any_tfl = any(b["available"] for b in out)
    out.append({"name": "edgetpu", "available": bool(lib) and any_tfl, "version": None,
                "detail": (f"{lib} found (a Coral device must also be plugged in)" if lib
                           else f"{EDGETPU_LIB} not found")})
    try:
        import onnxruntime as ort

        out.append({"name": "onnxruntime", "available": True, "version": ort.__version__,
                    "detail": ",".join(ort.get_available_providers())})
    except ImportError:
        out.append({"name": "onnxruntime", "available": False, "version": None,
                    "detail": "`import onnxruntime` failed (pip install onnxruntime)"})
    return out


class Backend:
    """Base class: a loaded model with one input."""

    name = "?"
    input: TensorInfo
    outputs: list[TensorInfo]

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


def dequantize(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    if info.quantized:
        return (x.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)
    return x if x.dtype == np.float32 else x.astype(np.float32)


class TFLiteBackend(Backend):
    """LiteRT / tflite_runtime / tf.lite interpreter, optionally with the Edge TPU delegate."""

    def __init__(self, model_path: str | Path, runtime: str = "auto", threads: int | None = None,
                 edgetpu: bool = False, edgetpu_device: str | None = None):
        path = Path(model_path)
        if runtime == "auto":
            order = list(TFLITE_BACKENDS)
        elif runtime in TFLITE_BACKENDS:
            order = [runtime]
        else:
            raise UserError(f"unknown TFLite runtime {runtime!r}: use one of {', '.join(TFLITE_BACKENDS)}")
        mod, used = None, ""
        for r in order:
            mod = _tflite_module(r)
            if mod is not None:
                used = r
                break
        if mod is None:
            which = "no TFLite runtime is installed" if runtime == "auto" else f"{runtime} is not installed"
            hint = _INSTALL_HINT
            if runtime == "tflite_runtime":
                hint = "pip install tflite-runtime (Python <= 3.11 only), or use the faster --backend litert"
            raise DependencyError(f"{which}; {hint}")
        self.runtime = used
        delegates = []
        if edgetpu:
            load_delegate = getattr(mod, "load_delegate", None)
            if load_delegate is None:  # tensorflow.lite
                load_delegate = mod.experimental.load_delegate
            from .edgetpu_probe import edgetpu_lib, probe_once

            # a libedgetpu built for another TFLite segfaults in-process: probe it in a child first
            probe = probe_once(edgetpu_device, path, _TFLITE_MODULES[used])
            if not probe.ok:
                raise UserError(probe.line())
            lib = edgetpu_lib()
            opts = {"device": edgetpu_device} if edgetpu_device else None
            try:
                delegates.append(load_delegate(lib, opts) if opts else load_delegate(lib))
            except (ValueError, OSError, RuntimeError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"cannot load the Edge TPU delegate {lib} ({first}); {EDGETPU_HINT}") from None
        self.name = "edgetpu" if edgetpu else used
        self.threads = threads
        kwargs: dict[str, object] = {"model_path": str(path)}
        if delegates:
            kwargs["experimental_delegates"] = delegates
        if threads:
            kwargs["num_threads"] = int(threads)
        try:
            self.interpreter = mod.Interpreter(**kwargs)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = ("compile the model for the Edge TPU with edgetpu_compiler" if edgetpu
                    else "re-run `edge-ssd convert` or check the file is a .tflite model")
            raise UserError(f"{path}: the {self.name} interpreter cannot load the model ({first}); {hint}") \
                from None
        ins = self.interpreter.get_input_details()
        if len(ins) != 1:
            raise UserError(f"{path}: expected a model with one input, found {len(ins)}; "
                            "convert a single-input SSD model")
        self.input = self._info(ins[0])
        self._in_index = ins[0]["index"]
        self._out = self.interpreter.get_output_details()
        self.outputs = [self._info(d) for d in self._out]
        self._set = self.interpreter.set_tensor
        self._invoke = self.interpreter.invoke
        self._get = self.interpreter.get_tensor

    @staticmethod
    def _info(d: dict) -> TensorInfo:
        scale, zp = d.get("quantization", (0.0, 0))
        return TensorInfo(d["name"], tuple(int(v) for v in d["shape"]), np.dtype(d["dtype"]), float(scale),
                          int(zp), int(d["index"]))

    def set_input(self, tensor: np.ndarray) -> None:
        self._set(self._in_index, tensor)

    def invoke(self) -> None:
        self._invoke()

    def raw_outputs(self) -> dict[str, np.ndarray]:
        """Outputs as stored in the model (quantised ints for int8 outputs); copies."""
        return {o.name: self._get(o.index) for o in self.outputs}

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        self._set(self._in_index, tensor)
        self._invoke()
        return {o.name: dequantize(self._get(o.index), o) for o in self.outputs}

    def describe(self) -> str:
        t = f", {self.threads} threads" if self.threads else ""
        return f"{self.name} ({_module_version(self.runtime)}{t})"


class OnnxBackend(Backend):
    """ONNX Runtime on the CPU (the reference backend for the source ONNX model)."""

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None):
        from .onnx import onnx_session

        self.threads = threads
        self.session = onnx_session(Path(model_path), threads=threads, source=model_path)
        ins = self.session.get_inputs()
        if len(ins) != 1:
            raise UserError(f"{model_path}: expected a model with one input, found {len(ins)}; "
                            "export the SSD with a single image input")
        i = ins[0]
        self.input = TensorInfo(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape),
                                np.dtype(np.float32))
        self.outputs = [TensorInfo(o.name, tuple(d if isinstance(d, int) else -1 for d in o.shape),
                                   np.dtype(np.float32)) for o in self.session.get_outputs()]
        self._names = [o.name for o in self.outputs]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map or {})

    def run(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        res = self.session.run(self._names, {self.input.name: tensor})
        return dict(zip(self._names, res, strict=True))

    def describe(self) -> str:
        t = f", {self.threads} threads" if self.threads else ""
        return f"onnxruntime ({_module_version('onnxruntime')}{t})"


def open_backend(model_path: str | Path, backend: str = "auto", threads: int | None = None,
                 edgetpu_device: str | None = None) -> Backend:
    """Load ``model_path`` on ``backend`` ("auto", "litert", "tflite_runtime", "tensorflow", "edgetpu",
    "onnxruntime"). "auto" picks onnxruntime for .onnx, else the first installed TFLite runtime (and the
    Edge TPU delegate for ``*_edgetpu.tflite`` files)."""
    p = Path(model_path)
    if threads is None:
        env = os.environ.get("EDGE_SSD_THREADS")
        threads = int(env) if env and env.isdigit() else None
    if backend not in ("auto", *BACKENDS):
        raise UserError(f"unknown backend {backend!r}: use auto or one of {', '.join(BACKENDS)}")
    if p.suffix == ".onnx":
        if backend not in ("auto", "onnxruntime"):
            raise UserError(f"{p}: an .onnx model runs on onnxruntime, not {backend}; "
                            "convert it with `edge-ssd convert` to use a TFLite backend")
        b: Backend = OnnxBackend(p, threads=threads)
    else:
        if backend == "onnxruntime":
            raise UserError(f"{p}: onnxruntime runs .onnx models only; pass the source .onnx or pick a "
                            "TFLite backend")
        edgetpu = backend == "edgetpu" or (backend == "auto" and p.stem.endswith("_edgetpu"))
        runtime = "auto" if backend in ("auto", "edgetpu") else backend
        b = TFLiteBackend(p, runtime=runtime, threads=threads, edgetpu=edgetpu, edgetpu_device=edgetpu_device)
    return b
