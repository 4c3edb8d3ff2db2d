"""Shared helpers for the inspect/convert tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _paths import EDGE_SSD, FACE_LABELS, FACES, PHOTOS, REPO, SHARED, VOC  # noqa: F401 (re-exported)
from _paths import FACE_ONNX as FACE


def cli(*args, timeout=900) -> subprocess.CompletedProcess:
    exe = [str(EDGE_SSD)] if EDGE_SSD.exists() else [sys.executable, "-m", "edge_ssd"]
    return subprocess.run([*exe, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def tiny_classifier(path: Path) -> Path:
    """A model that is not an SSD: Conv -> GlobalAveragePool -> Flatten -> Softmax."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("GlobalAveragePool", ["c"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Softmax", ["f"], ["prob"])]
    g = helper.make_graph(nodes, "cls", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
                          [helper.make_tensor_value_info("prob", TensorProto.FLOAT, [1, 4])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def dynamic_face(path: Path) -> Path:
    """The face model with symbolic H and W."""
    import onnx

    m = onnx.load(str(FACE))
    inits = {i.name for i in m.graph.initializer}
    for i in m.graph.input:
        if i.name not in inits:
            dims = i.type.tensor_type.shape.dim
            dims[2].Clear()
            dims[2].dim_param = "height"
            dims[3].Clear()
            dims[3].dim_param = "width"
    onnx.save(m, str(path))
    return path
