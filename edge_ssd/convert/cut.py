"""Cut an SSD ONNX model before its post-processing tail, and prove the cut on real images.

The cut model keeps the body (input -> raw class logits ``1xNxC`` and raw box offsets ``1xNx4``); the tail
(head concatenation, softmax + box decode against the priors) runs in float on the host, in the runtime
(:class:`edge_ssd.runtime.detector.Detector`). The converter proves the cut by running the float body through
the runtime against the source model (``convert.api._cut_check``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UserError
from .inspect import ModelInfo, run_onnx_tensors, subgraph

_SAFE = re.compile(r"^[A-Za-z0-9_/][A-Za-z0-9_./-]*$")  # tensor names onnx2tf keeps as they are


def _out_name(name: str, shape: list[int] | None, k: int, kind: str, n_cols: int) -> str:
    """The cut's output name for a raw tensor: its own when it is already (1, rows, cols) with a plain name,
    else a new one (the cut then reshapes it to (1, rows, cols): the layout the toolchain keeps)."""
    if shape is not None and len(shape) == 3 and shape[0] == 1 and shape[2] == n_cols and _SAFE.match(name):
        return name
    return f"edge_ssd_{kind}_{k}"


def cut_outputs(info: ModelInfo) -> tuple[list[str], list[str]]:
    """The cut model's outputs for (logits, offsets): the per-head tensors before the heads' Concat when the
    graph has one (each head then keeps its own int8 scale), else the concatenated tensors; each (1, rows, K)."""
    t = info.tail
    out = []
    for kind, parts, whole, shape, cols in (("scores", t.logits_parts, t.logits_tensor, t.logits_shape,
                                             t.num_classes), ("boxes", t.offsets_parts, t.offsets_tensor,
                                                              t.offsets_shape, 4)):
        src = parts or [whole]
        shapes = [t.part_shapes.get(p) for p in parts] if parts else [shape]
        out.append([_out_name(p, s, k, kind, cols) for k, (p, s) in enumerate(zip(src, shapes, strict=True))])
    return out[0], out[1]


def cut_sources(info: ModelInfo) -> tuple[list[str], list[str]]:
    """The graph tensors behind :func:`cut_outputs`, in the same order."""
    t = info.tail
    return (t.logits_parts or [t.logits_tensor]), (t.offsets_parts or [t.offsets_tensor])


def cut_input_name(info: ModelInfo) -> str:
    """The cut model's input: the body's input (after the graph's own layout/normalisation prologue)."""
    b = info.body_input or info.input.name
    return b if _SAFE.match(b) else "edge_ssd_input"


def cut_model(model, info: ModelInfo):
    """An ONNX model from the body's input (NCHW, after the graph's own normalisation) to the tail's inputs
    (per-head logits and offsets, or the concatenated ones), each output (1, rows, K) with a static shape."""
    import onnx
    from onnx import helper

    body = info.body_input or info.input.name
    shape = [int(s) for s in (info.body_shape or info.input.shape)]
    srcs = sum(cut_sources(info), [])
    names = sum(cut_outputs(info), [])
    sub = subgraph(model, {body: shape}, srcs)
    outs = run_onnx_tensors(sub, {body: np.zeros(shape, np.float32)}, srcs)
    lg, _ = cut_outputs(info)
    rows = []
    for k, (src, name, arr) in enumerate(zip(srcs, names, outs, strict=True)):
        cols = info.tail.num_classes if k < len(lg) else 4
        if arr.size % cols:
            raise UserError(f"{info.path}: head tensor {src} {list(arr.shape)} does not split into {cols} columns; "
                            "this export's tail is unusual - please report it")
        rows.append([1, arr.size // cols, cols])
        if name != src:
            c = f"{name}/shape"
            sub.graph.initializer.append(onnx.numpy_helper.from_array(np.asarray(rows[-1], np.int64), c))
            sub.graph.node.append(helper.make_node("Reshape", [src, c], [name], name=f"{name}/reshape"))
    for group in (rows[:len(lg)], rows[len(lg):]):
        if sum(r[1] for r in group) != info.tail.num_priors:
            raise UserError(f"{info.path}: the heads feeding the tail have unexpected shapes {group}; this "
                            "export's tail is unusual - please report it")
    del sub.graph.output[:]
    for name, r in zip(names, rows, strict=True):
        sub.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, r))
    _rename_input(sub, body, cut_input_name(info))
    for p in model.metadata_props:
        sub.metadata_props.append(p)
    onnx.checker.check_model(sub)
    return sub


def _rename_input(model, old: str, new: str) -> None:
    if old == new:
        return
    for i in model.graph.input:
        if i.name == old:
            i.name = new
    for n in model.graph.node:
        for k, v in enumerate(n.input):
            if v == old:
                n.input[k] = new


def tail_postprocess(info: ModelInfo, score_threshold: float, background: int | None = None):
    """The bundle's :class:`~edge_ssd.model.bundle.Postprocess`: the proved tail as data (the host decodes the
    raw outputs with it). ``background`` overrides the graph's (e.g. labels that name column 0 BACKGROUND)."""
    from ..model.bundle import Postprocess

    t = info.tail
    c = t.coding
    bg = t.background_class if background is None else background
    pp = Postprocess(center_variance=t.center_variance, size_variance=t.size_variance, offset_order=c.offset_order)
    # per-channel variances only when the two scalars (center, size) cannot say it: one source of truth
    per_channel = None if pp.variances_in_offset_order() == list(c.variances) else list(c.variances)
    return Postprocess(score_fn=t.score_fn, box_encoding="offsets", center_variance=t.center_variance,
                       size_variance=t.size_variance, offset_order=c.offset_order, variances=per_channel,
                       prior_layout=c.prior_layout, box_order=c.box_order,
                       priors=np.round(t.priors.astype(np.float64), 7).tolist(), background_class=bg,
                       score_threshold=score_threshold)


def source_postprocess(info: ModelInfo, background: int | None):
    """How the runtime reads the *source* graph's outputs (the reference for validation): probabilities over the
    graph's own columns (padded back to every logit column), decoded corners in the graph's box order."""
    from ..model.box import BoxCoding
    from ..runtime.detector import PostprocessConfig

    t = info.tail
    return PostprocessConfig(score_fn="none", box_encoding="corners", background=background,
                             coding=BoxCoding(box_order=t.coding.box_order), score_offset=t.scores_first_column,
                             num_classes=t.num_classes)


def save_cut(cut, path: str | Path) -> Path:
    import onnx

    p = Path(path)
    try:
        onnx.save(cut, str(p))
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}; choose a writable output directory with -o") from None
    return p
