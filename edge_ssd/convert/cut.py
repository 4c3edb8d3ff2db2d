"""Cut an SSD ONNX model before its post-processing tail, and prove the cut on real images.

The cut model keeps the body (input -> raw class logits ``1xNxC`` and raw box offsets ``1xNx4``); the tail
(head concatenation, softmax + box decode against the priors) runs in float on the host, in the runtime
(:class:`edge_ssd.runtime.detector.Detector`). The converter proves the cut by running the float body through
the runtime against the source model (``convert.api._cut_check``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .inspect import ModelInfo, real_inputs, run_onnx_tensors, subgraph


def cut_outputs(info: ModelInfo) -> tuple[list[str], list[str]]:
    """The cut model's outputs for (logits, offsets): the per-head tensors before the heads' Concat when the
    graph has one (each head then keeps its own int8 scale), else the concatenated tensors."""
    t = info.tail
    return (t.logits_parts or [t.logits_tensor]), (t.offsets_parts or [t.offsets_tensor])


def cut_model(model, info: ModelInfo):
    """An ONNX model whose outputs are the tail's inputs (per-head logits and offsets, or the concatenated
    logits and offsets), with static output shapes."""
    import onnx
    from onnx import helper

    inp = real_inputs(model)[0]
    shape = [int(s) for s in info.input.shape]
    lg, of = cut_outputs(info)
    names = lg + of
    sub = subgraph(model, {inp.name: shape}, names)
    outs = run_onnx_tensors(sub, {inp.name: np.zeros(shape, np.float32)}, names)
    for group, total in ((lg, info.tail.num_classes), (of, 4)):
        arrs = [outs[names.index(n)] for n in group]
        if len(group) > 1 and (any(a.ndim != 3 or a.shape[2] != total for a in arrs)
                               or sum(a.shape[1] for a in arrs) != info.tail.num_priors):
            raise UserError(f"{info.path}: the heads feeding the tail have unexpected shapes "
                            f"{[list(a.shape) for a in arrs]}; this export's tail is unusual - please report it")
    del sub.graph.output[:]
    for name, arr in zip(names, outs, strict=True):
        sub.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(arr.shape)))
    for p in model.metadata_props:
        sub.metadata_props.append(p)
    onnx.checker.check_model(sub)
    return sub


def save_cut(cut, path: str | Path) -> Path:
    import onnx

    p = Path(path)
    try:
        onnx.save(cut, str(p))
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}; choose a writable output directory with -o") from None
    return p
