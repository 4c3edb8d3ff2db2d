"""Cut an SSD ONNX model before its post-processing tail, and prove the cut on real images.

The cut model keeps the body (input -> raw class logits ``1xNxC`` and raw box offsets ``1xNx4``); the tail
(softmax + box decode against the priors) runs in float on the host with :mod:`edge_ssd.model.box`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.box import decode, sigmoid, softmax
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


def source_feed(info: ModelInfo, x_nchw: np.ndarray) -> np.ndarray:
    """An NCHW batch (preprocessed with the feed normalisation) in the source graph's input layout."""
    return np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)) if info.input_layout == "NHWC" else x_nchw


def body_feed(info: ModelInfo, x_nchw: np.ndarray) -> np.ndarray:
    """An NCHW batch (feed normalisation) as the cut body's input: with the graph's own normalisation applied."""
    if not info.graph_norm:
        return x_nchw
    a = np.asarray(info.graph_norm["scale"], np.float32)[None, :, None, None]
    b = np.asarray(info.graph_norm["offset"], np.float32)[None, :, None, None]
    return (x_nchw * a + b).astype(np.float32)


def reference_outputs(info: ModelInfo, scores: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source graph's (scores, boxes) outputs of one image as (N, C) scores over every logit column (the
    columns the graph slices off, i.e. its background, as zeros) and (N, 4) x1,y1,x2,y2 boxes: comparable
    class for class with the host tail's."""
    t = info.tail
    s = np.asarray(scores, np.float32).reshape(t.num_priors, -1)
    if s.shape[1] != t.num_classes:
        full = np.zeros((t.num_priors, t.num_classes), np.float32)
        full[:, t.scores_first_column:t.scores_first_column + s.shape[1]] = s
        s = full
    b = np.asarray(boxes, np.float32).reshape(t.num_priors, 4)
    idx = [t.coding.box_order.split(",").index(k) for k in ("x1", "y1", "x2", "y2")]
    return s, b[:, idx]


def tail_postprocess(info: ModelInfo, score_threshold: float, background: int | None = None):
    """The bundle's :class:`~edge_ssd.model.bundle.Postprocess`: the proved tail as data (the host decodes the
    raw outputs with it). ``background`` overrides the graph's (e.g. labels that name column 0 BACKGROUND)."""
    from ..model.bundle import Postprocess

    t = info.tail
    c = t.coding
    bg = t.background_class if background is None else background
    return Postprocess(score_fn=t.score_fn, box_encoding="offsets", center_variance=t.center_variance,
                       size_variance=t.size_variance, offset_order=c.offset_order, variances=list(c.variances),
                       prior_layout=c.prior_layout, box_order=c.box_order,
                       priors=np.round(t.priors.astype(np.float64), 7).tolist(), background_class=bg,
                       score_threshold=score_threshold)


def host_tail(logits: np.ndarray, offsets: np.ndarray, info: ModelInfo) -> tuple[np.ndarray, np.ndarray]:
    """The float tail on the host: (scores, corner boxes) of one image from raw outputs."""
    t = info.tail
    lg = logits.reshape(t.num_priors, -1)
    of = offsets.reshape(t.num_priors, 4)
    scores = softmax(lg) if t.score_fn == "softmax" else sigmoid(lg)
    return scores, decode(of, t.priors, t.coding)


@dataclass
class CutCheck:
    images: int
    scores_max_abs: float
    boxes_max_abs: float
    ok: bool


def self_check(model, cut, info: ModelInfo, batches: list[np.ndarray], tol: float = 1e-4) -> CutCheck:
    """Full model vs cut model + host tail on real preprocessed images (NCHW float batches of one, normalised as
    the source graph is fed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    full = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    part = ort.InferenceSession(cut.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name, body = info.input.name, cut_input_name(info)
    t = info.tail
    es, eb = 0.0, 0.0
    lg_names, of_names = cut_outputs(info)
    for x in batches:
        ref = full.run([t.scores_output, t.boxes_output], {name: source_feed(info, x)})
        s_ref, b_ref = reference_outputs(info, *ref)
        outs = part.run(lg_names + of_names, {body: body_feed(info, x)})
        lg = np.concatenate(outs[:len(lg_names)], axis=1)
        of = np.concatenate(outs[len(lg_names):], axis=1)
        s, b = host_tail(lg, of, info)
        cols = slice(t.scores_first_column, t.scores_first_column + ref[0].shape[-1])  # the graph's own columns
        es = max(es, float(np.max(np.abs(s[:, cols] - s_ref[:, cols]))))
        eb = max(eb, float(np.max(np.abs(b - b_ref))))
    return CutCheck(len(batches), es, eb, bool(es <= tol and eb <= tol))


def save_cut(cut, path: str | Path) -> Path:
    import onnx

    p = Path(path)
    try:
        onnx.save(cut, str(p))
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror}; choose a writable output directory with -o") from None
    return p
