"""Helpers for the Edge TPU tests: stand-in delegate libraries built with gcc, and a tiny real .tflite."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

# a TFLite external delegate (the ABI libedgetpu implements): create/destroy entry points and a TfLiteDelegate
# whose Prepare claims no node, so the model runs on the CPU. device "usb:9" -> no delegate (no such Coral);
# device "crash" -> a segfault inside the delegate's creation (as an ABI-mismatched libedgetpu does).
_DELEGATE_C = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
typedef struct TfLiteDelegate {
  void *data_;
  int (*Prepare)(void *context, struct TfLiteDelegate *delegate);
  int (*CopyFromBufferHandle)(void *, struct TfLiteDelegate *, int, void *);
  int (*CopyToBufferHandle)(void *, struct TfLiteDelegate *, int, void *);
  void (*FreeBufferHandle)(void *, struct TfLiteDelegate *, int *);
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;
static int prepare(void *context, TfLiteDelegate *delegate) { (void)context; (void)delegate; return 0; }
TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n, void (*report)(const char *)) {
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "device") != 0) continue;
    if (strcmp(values[i], "usb:9") == 0) { if (report) report("no Edge TPU at usb:9"); return NULL; }
    if (strcmp(values[i], "crash") == 0) *(volatile int *)0 = 1;
  }
  TfLiteDelegate *d = calloc(1, sizeof *d);
  d->Prepare = prepare;
  return d;
}
void tflite_plugin_destroy_delegate(TfLiteDelegate *d) { free(d); }
"""
# a library that segfaults while it is being loaded (in its ELF constructor)
_CRASH_C = "__attribute__((constructor)) static void boom(void) { *(volatile int *)0 = 42; }\n"


def build_lib(tmp: Path, kind: str) -> Path:
    """``kind`` "delegate" or "crash_init": a shared object compiled here with gcc."""
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.skip("no C compiler (gcc) to build the stand-in delegate library")
    src = tmp / f"{kind}.c"
    src.write_text(_DELEGATE_C if kind == "delegate" else _CRASH_C)
    out = tmp / f"lib{kind}.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O0", "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def tiny_tflite(path: Path) -> Path:
    """A real one-op TFLite model (float ADD of a constant to a [1, 8, 8, 3] input), written with the schema's
    object API."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    m = s.ModelT()
    m.version = 3
    m.buffers = [s.BufferT(), s.BufferT(), s.BufferT(), s.BufferT()]
    m.buffers[2].data = np.ones((1, 1, 1, 3), np.float32).tobytes()
    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.ADD
    m.operatorCodes = [oc]
    tensors = []
    for i, (name, shape) in enumerate((("input", [1, 8, 8, 3]), ("one", [1, 1, 1, 3]), ("output", [1, 8, 8, 3]))):
        t = s.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, s.TensorType.FLOAT32, i + 1
        tensors.append(t)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.AddOptions, s.AddOptionsT()
    sg = s.SubGraphT()
    sg.tensors, sg.inputs, sg.outputs, sg.operators = tensors, [0], [2], [op]
    m.subgraphs = [sg]
    b = flatbuffers.Builder(1024)
    b.Finish(m.Pack(b), file_identifier=b"TFL3")
    path.write_bytes(bytes(b.Output()))
    return path
