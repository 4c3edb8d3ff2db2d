"""Re-export a pytorch-ssd ONNX model with the tail of a TF Object Detection API SSD as tf2onnx writes it.

A stand-in for the ``ssd_mobilenet_v2`` / ``ssdlite`` graphs that Raspberry Pi and Coral users hold, built from
weights we have (the trained test model, the Ultra-Light face model) so the tests need no download. The body is
the source's; only its heads' last convolutions are re-mixed (linear, exact) and the tail is rebuilt the way the
TF OD API's ``ssd_meta_arch.postprocess`` + ``FasterRcnnBoxCoder._decode`` come out of tf2onnx:

* heads: conv (NCHW) -> Transpose to NHWC -> Reshape to ``[1, -1, 1, 4]`` (box encodings) / ``[1, -1, C]`` (class
  predictions with background) -> Concat on axis 1 -> Squeeze axis 2 (``raw_box_encodings``, (1, N, 4));
* box encodings in ``(ty, tx, th, tw)`` order: the regression conv's output channels are permuted per anchor;
* decode with the batch axis squeezed: Reshape to (N, 4), Transpose, Split + Squeeze (``tf.unstack``), Div by the
  scale factors 10, 10, 5, 5, ``Exp(tw) * wa``, ``ty * ha + ycenter_a``, corners, Unsqueeze + Concat on axis 0
  (``tf.stack``), Transpose, Reshape to (1, N, 4) (``raw_box_locations``: ymin, xmin, ymax, xmax); anchors are
  (ycenter, xcenter, h, w) constants;
* scores: Div by the logit scale 1.0 (``scale_logits``), Sigmoid (``convert_scores``), then
  ``tf.slice(..., [0, 0, 1], [-1, -1, -1])`` dropping the background column, or kept; or no background column;
* optionally the boxes reordered to (xmin, ymin, xmax, ymax) by a final Gather or by Slices + Concat;
* input NHWC float 0..255 with ``Preprocessor/mul`` + ``Preprocessor/sub`` ((x - 127.5) / 127.5) and a Transpose
  before the first convolution, or NCHW, normalised inside the graph or outside.

Sigmoid scores from a softmax-trained net: class logits become ``l_c - l_background`` (so the sigmoid is the
two-way softmax of class against background; exact for one class + background, close otherwise) and the
background logit ``l_background - mean(l_c)``. Tensor names follow tf2onnx (``scope/op:0``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class TfTail:
    """Which TF OD API variant to write."""

    layout: str = "NHWC"  # of the image input
    normalise_in_graph: bool = True  # (x - 127.5) / 127.5 inside the graph, else the caller normalises
    background: bool = True  # the class predictions carry a background column (column 0)
    slice_background: bool = True  # the scores output drops it (tf.slice), else keeps it
    box_order: str = "yx"  # "yx": ymin, xmin, ymax, xmax; "gather"/"concat": reordered to x first by that op
    output_names: tuple[str, str] = ("scores", "boxes")


def _conv_of(model, tensor: str):
    """The Conv whose output reaches ``tensor`` through layout ops (a head's last convolution)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    n = prod.get(tensor)
    while n is not None and n.op_type in ("Reshape", "Transpose", "Identity", "Squeeze", "Unsqueeze", "Flatten"):
        n = prod.get(n.input[0])
    if n is None or n.op_type != "Conv":
        raise UserError(f"head tensor {tensor} does not come from a Conv; pass a pytorch-ssd style export")
    return n


def _remix(model, conv, matrix: np.ndarray, name: str) -> None:
    """Replace ``conv``'s weight and bias by ``matrix @ W`` (output channels mixed) under new names."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 else np.zeros(len(w))
    w2 = np.tensordot(matrix, w, axes=(1, 0)).astype(np.float32)
    b2 = (matrix @ b).astype(np.float32)
    model.graph.initializer.extend([numpy_helper.from_array(w2, f"{name}/weights"),
                                    numpy_helper.from_array(b2, f"{name}/biases")])
    del conv.input[1:]
    conv.input.extend([f"{name}/weights", f"{name}/biases"])


def _class_matrix(anchors: int, classes: int, background: bool) -> np.ndarray:
    """Per anchor: [bg, c1..] -> [bg - mean(c), c1 - bg, ...] (or without the bg row)."""
    k = classes - 1
    blk = np.zeros((classes, classes))
    blk[0, 0], blk[0, 1:] = 1.0, -1.0 / k
    for c in range(1, classes):
        blk[c, c], blk[c, 0] = 1.0, -1.0
    if not background:
        blk = blk[1:]
    return np.kron(np.eye(anchors), blk)


def _box_matrix(anchors: int) -> np.ndarray:
    """Per anchor: (cx, cy, w, h) -> (ty, tx, th, tw)."""
    return np.kron(np.eye(anchors), np.eye(4)[[1, 0, 3, 2]])


class _Nodes:
    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name: str, value) -> str:
        from onnx import numpy_helper

        a = np.asarray(value)
        self.inits.append(numpy_helper.from_array(a.astype(np.int64 if a.dtype.kind in "iu" else np.float32), name))
        return name

    def op(self, op: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str] | str:
        from onnx import helper

        outs = [f"{name}:{k}" for k in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outs, name=name, **attrs))
        return outs if n_out > 1 else outs[0]


def _decode(g: _Nodes, enc: str, anchors: np.ndarray, n: int) -> str:
    """FasterRcnnBoxCoder._decode over (N, 4) as tf2onnx writes it; returns (1, N, 4) ymin, xmin, ymax, xmax."""
    p = "Postprocessor/Decode"
    flat = g.op("Reshape", [enc, g.const(f"{p}/shape", [-1, 4])], "Postprocessor/Reshape")
    tr = g.op("Transpose", [flat], f"{p}/transpose", perm=[1, 0])
    parts = g.op("Split", [tr, g.const(f"{p}/split", [1, 1, 1, 1])], f"{p}/unstack", n_out=4, axis=0)
    ty, tx, th, tw = (g.op("Squeeze", [t, g.const(f"{p}/sq{k}", [0])], f"{p}/unstack_sq{k}")
                      for k, t in enumerate(parts))
    ty, tx, th, tw = (g.op("Div", [t, g.const(f"{p}/scale{k}", np.float32(s))], f"{p}/truediv{'_' * k}{k}")
                      for k, (t, s) in enumerate(zip((ty, tx, th, tw), SCALE_FACTORS, strict=True)))
    a = g.const(f"{p}/anchors", anchors.astype(np.float32))  # (N, 4) ycenter, xcenter, h, w
    yca, xca, ha, wa = (g.op("Gather", [a, g.const(f"{p}/col{k}", np.int64(k))], f"{p}/get_center_coordinates{k}",
                             axis=1) for k in range(4))
    w = g.op("Mul", [g.op("Exp", [tw], f"{p}/Exp"), wa], f"{p}/mul")
    h = g.op("Mul", [g.op("Exp", [th], f"{p}/Exp_1"), ha], f"{p}/mul_1")
    yc = g.op("Add", [g.op("Mul", [ty, ha], f"{p}/mul_2"), yca], f"{p}/add")
    xc = g.op("Add", [g.op("Mul", [tx, wa], f"{p}/mul_3"), xca], f"{p}/add_1")
    two = g.const(f"{p}/two", np.float32(2.0))
    hh = g.op("Div", [h, two], f"{p}/truediv_4")
    hw = g.op("Div", [w, two], f"{p}/truediv_5")
    corners = [g.op("Sub", [yc, hh], f"{p}/sub"), g.op("Sub", [xc, hw], f"{p}/sub_1"),
               g.op("Add", [yc, hh], f"{p}/add_2"), g.op("Add", [xc, hw], f"{p}/add_3")]
    st = [g.op("Unsqueeze", [c, g.const(f"{p}/ax{k}", [0])], f"{p}/stack_unsq{k}") for k, c in enumerate(corners)]
    stacked = g.op("Concat", st, f"{p}/stack", axis=0)
    back = g.op("Transpose", [stacked], f"{p}/transpose_1", perm=[1, 0])
    return g.op("Reshape", [back, g.const("Postprocessor/shape_1", [1, n, 4])], "Postprocessor/raw_box_locations")


def _reorder(g: _Nodes, boxes: str, how: str) -> str:
    if how == "yx":
        return boxes
    if how == "gather":
        return g.op("Gather", [boxes, g.const("Postprocessor/xy_index", np.array([1, 0, 3, 2], np.int64))],
                    "Postprocessor/to_xy", axis=2)
    if how == "concat":
        cols = g.op("Split", [boxes, g.const("Postprocessor/xy_split", [1, 1, 1, 1])], "Postprocessor/xy_cols",
                    n_out=4, axis=2)
        return g.op("Concat", [cols[1], cols[0], cols[3], cols[2]], "Postprocessor/to_xy", axis=2)
    raise ValueError(f"box_order {how!r}: use yx, gather or concat")


def export_tf_od_api_style(src_onnx: str | Path, out_path: str | Path, tail: TfTail = TfTail()) -> Path:
    """Write ``src_onnx`` (a pytorch-ssd export: softmax + background column 0, (cx, cy, w, h) offsets with
    variances 0.1/0.2) as a TF OD API / tf2onnx style graph (see the module docstring)."""
    import onnx
    from onnx import helper

    from ..convert.inspect import load_and_inspect, subgraph

    model, info = load_and_inspect(src_onnx)
    t = info.tail
    if not t.recognised or t.family != "pytorch-ssd" or not (t.logits_parts and t.offsets_parts):
        raise UserError(f"{src_onnx}: not a pytorch-ssd export with per-head outputs ({t.reason or t.family})")
    if (t.center_variance, t.size_variance) != (0.1, 0.2):
        raise UserError(f"{src_onnx}: variances {t.center_variance}/{t.size_variance}; the TF coder needs 0.1/0.2")
    g = _Nodes()
    c_in = t.num_classes
    heads = []
    convs = [(_conv_of(model, lg), _conv_of(model, of)) for lg, of in zip(t.logits_parts, t.offsets_parts, strict=True)]
    channels = [sh[1] for sh in _shapes(model, [cc.output[0] for cc, _ in convs])]  # before any head is re-mixed
    for k, ((cc, bc), ch) in enumerate(zip(convs, channels, strict=True)):
        n_anchor = ch // c_in
        _remix(model, cc, _class_matrix(n_anchor, c_in, tail.background), f"BoxPredictor_{k}/ClassPredictor")
        _remix(model, bc, _box_matrix(n_anchor), f"BoxPredictor_{k}/BoxEncodingPredictor")
        heads.append((cc.output[0], bc.output[0]))
    c_out = c_in if tail.background else c_in - 1
    body = subgraph(model, {info.input.name: info.input.shape}, [x for h in heads for x in h])
    cls_parts, box_parts = [], []
    for k, (cls, box) in enumerate(heads):
        s = f"BoxPredictor_{k}"
        ct = g.op("Transpose", [cls], f"{s}/ClassPredictor/BiasAdd__nhwc", perm=[0, 2, 3, 1])
        cls_parts.append(g.op("Reshape", [ct, g.const(f"{s}/cls_shape", [1, -1, c_out])], f"{s}/Reshape_1"))
        bt = g.op("Transpose", [box], f"{s}/BoxEncodingPredictor/BiasAdd__nhwc", perm=[0, 2, 3, 1])
        box_parts.append(g.op("Reshape", [bt, g.const(f"{s}/box_shape", [1, -1, 1, 4])], f"{s}/Reshape"))
    enc = g.op("Squeeze", [g.op("Concat", box_parts, "concat", axis=1), g.const("sq_axis", [2])], "Squeeze")
    enc = g.op("Identity", [enc], "Postprocessor/raw_box_encodings")
    anchors = t.priors[:, [1, 0, 3, 2]]  # (cx, cy, w, h) -> (ycenter, xcenter, h, w)
    boxes = _reorder(g, _decode(g, enc, anchors, t.num_priors), tail.box_order)
    logits = g.op("Div", [g.op("Concat", cls_parts, "concat_1", axis=1), g.const("Postprocessor/scale", np.float32(1))],
                  "Postprocessor/scale_logits")  # TF's score converter divides by logit_scale (1.0) first
    scores = g.op("Sigmoid", [logits], "Postprocessor/convert_scores")
    scores = g.op("Identity", [scores], "Postprocessor/raw_box_scores")
    if tail.background and tail.slice_background:
        scores = g.op("Slice", [scores, g.const("Postprocessor/begin", [1]), g.const("Postprocessor/end", [c_out]),
                                g.const("Postprocessor/axes", [2])], "Postprocessor/Slice")
    c_s = c_out - 1 if tail.background and tail.slice_background else c_out
    s_name, b_name = tail.output_names
    g.nodes += [helper.make_node("Identity", [scores], [s_name], name=s_name),
                helper.make_node("Identity", [boxes], [b_name], name=b_name)]
    inp, pre = _prologue(g, info.input.name, info.input.shape, tail)
    nodes = pre + list(body.graph.node) + g.nodes
    graph = helper.make_graph(nodes, "ssd_tf_od_api", [inp],
                              [helper.make_tensor_value_info(s_name, onnx.TensorProto.FLOAT, [1, t.num_priors, c_s]),
                               helper.make_tensor_value_info(b_name, onnx.TensorProto.FLOAT, [1, t.num_priors, 4])],
                              list(body.graph.initializer) + g.inits)
    out = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="tf2onnx-style")
    for p in model.metadata_props:
        if p.key == "edge_ssd.labels":
            labels = json.loads(p.value)
            out.metadata_props.add(key=p.key, value=json.dumps(labels if tail.background else labels[1:]))
    onnx.checker.check_model(out)
    onnx.save(out, str(out_path))
    return Path(out_path)


def _shapes(model, tensors: list[str]) -> list[list[int]]:
    from ..convert.inspect import real_inputs, run_onnx_tensors

    inp = real_inputs(model)[0]
    shape = [int(d.dim_value) for d in inp.type.tensor_type.shape.dim]
    return [list(v.shape) for v in run_onnx_tensors(model, {inp.name: np.zeros(shape, np.float32)}, tensors)]


def _prologue(g: _Nodes, body_input: str, nchw: list[int], tail: TfTail):
    """(graph input, nodes) computing the body's NCHW input ``body_input`` from the image."""
    import onnx
    from onnx import helper

    n, c, h, w = (int(v) for v in nchw)
    name = "image_tensor:0" if tail.normalise_in_graph else "normalized_input_image_tensor:0"
    shape = [n, h, w, c] if tail.layout == "NHWC" else [n, c, h, w]
    nodes, t = [], name
    if tail.normalise_in_graph:
        nodes.append(helper.make_node("Mul", [t, g.const("Preprocessor/mul/y", np.float32(2.0 / 255.0))],
                                      ["Preprocessor/mul:0"], name="Preprocessor/mul"))
        nodes.append(helper.make_node("Sub", ["Preprocessor/mul:0", g.const("Preprocessor/sub/y", np.float32(1.0))],
                                      ["Preprocessor/sub:0"], name="Preprocessor/sub"))
        t = "Preprocessor/sub:0"
    if tail.layout == "NHWC":
        nodes.append(helper.make_node("Transpose", [t], [body_input], name="FeatureExtractor/nchw", perm=[0, 3, 1, 2]))
    else:
        nodes.append(helper.make_node("Identity", [t], [body_input], name="FeatureExtractor/input"))
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape), nodes
