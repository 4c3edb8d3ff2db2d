"""Inspect an SSD ONNX model: its I/O, its input prologue and the post-processing tail.

Any SSD whose tail is "score function + box decoding over constants" is recognised structurally and then
*proved* numerically, never guessed (pytorch-ssd, Ultra-Light, TF Object Detection API graphs from tf2onnx, ...):

* outputs: a scores output (N rows x C) and a boxes output (N rows x 4), batch axis optional;
* scores: walking back from the scores output through layout ops and a column Slice to a ``Softmax``/``Sigmoid``;
  its input is the raw logits. Proved on random logits: the graph's scores equal ``softmax``/``sigmoid`` of them,
  all columns or with the background column sliced off (``scores_first_column``).
* boxes: walking back from the boxes output through decode ops (arithmetic, Exp, Slice/Split/Gather, layout ops,
  Concat of coordinates) over constants, the single non-constant tensor reached is the raw offsets. Probed with
  onnxruntime: zero offsets give the priors, a unit offset in each channel tells which output columns it moves
  (a center channel moves a min and a max column alike, a size channel moves them apart), so the offset order,
  the box order and the variances are read off; which axis is x comes from the priors' order (row-major over
  each feature map: successive cells of a row differ in x only). Random offsets must then reproduce
  :func:`edge_ssd.model.box.decode` with that :class:`~edge_ssd.model.box.BoxCoding` to ~1e-5.
* input prologue: Transpose (NHWC -> NCHW) and per-channel Mul/Div/Add/Sub over constants right after the input
  are the model's own normalisation; proved affine on random input, it is folded into the bundle's mean/std and
  cut off the int8 body (the device's input table applies it exactly).

``raw_outputs`` (``--raw-outputs SCORES,BOXES``) names the raw tensors instead of searching for them; the tail
after them is then proved the same way, or refused. A refusal lists the op types between the last convolution
and each output.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DependencyError, UserError
from ..model.box import BoxCoding, decode, from_xyxy, sigmoid, softmax
from ..model.labels import LABELS_KEY
from ..model.preprocess import Normalization
from ..model.priors import IMAGE_MEAN, IMAGE_STD, MOBILENET_SSD_SPECS, generate_priors

# ops a box decode may use between the raw offsets and the boxes output (with constants)
DECODE_OPS = {"Slice", "Mul", "Exp", "Add", "Sub", "Div", "Split", "Gather", "Unsqueeze", "Squeeze", "Identity",
              "Concat", "Constant", "Cast", "Reshape", "Transpose", "Flatten", "Neg"}
# ops between a score function and the scores output (column slice, batch squeeze)
SCORE_OPS = {"Identity", "Slice", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast"}
# ops that keep a tensor's row-major element order (heads' Concat -> raw tensor)
ORDER_OPS = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten"}
PROLOGUE_OPS = {"Transpose", "Mul", "Div", "Add", "Sub", "Cast", "Identity"}
CONV_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "QLinearConv"}
SCORE_FNS = ("softmax", "sigmoid")
HATCH = "--raw-outputs SCORES,BOXES (the raw logits and offsets tensors; `edge-ssd inspect` lists the graph)"


def _onnx():
    try:
        import onnx
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise DependencyError(f"{e.name} is not installed; install the converter extras: "
                              "pip install 'edge-ssd[convert]' (or run scripts/setup.sh)") from None
    return onnx


def load_onnx(path):
    """Load an ONNX file with one-line errors for missing, truncated or invalid files."""
    onnx = _onnx()
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{p} is a directory; pass the exported .onnx file itself")
    if not p.is_file():
        raise UserError(f"{p}: no such file; pass the path of an exported .onnx model")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # google.protobuf.message.DecodeError and friends
        raise UserError(f"{p}: not a readable ONNX model ({type(e).__name__}: {str(e)[:80]}); the file is "
                        "truncated or not ONNX - export it again") from None
    if not model.graph.node:
        raise UserError(f"{p}: ONNX file has an empty graph; the file is truncated or not a model - export it again")
    return model


@dataclass
@dataclass
class TensorInfo:
    name: str
    shape: list  # ints, or strings for symbolic dims
    dtype: str


@dataclass
class TailInfo:
    recognised: bool
    reason: str = ""
    scores_output: str | None = None
    boxes_output: str | None = None
    logits_tensor: str | None = None
    offsets_tensor: str | None = None
    score_fn: str | None = None  # softmax / sigmoid
    num_priors: int | None = None
    num_classes: int | None = None  # columns of the raw logits (background column included when present)
    center_variance: float | None = None  # of the x center offset (pytorch-ssd's single center variance)
    size_variance: float | None = None  # of the width offset
    decode_error: float | None = None  # max abs error of host decode vs graph tail on random offsets
    score_error: float | None = None
    priors_match_spec: bool | None = None
    priors_spec_error: float | None = None
    priors: np.ndarray | None = field(default=None, repr=False)  # (N, 4) in coding.prior_layout
    # per-head tensors concatenated (priors axis) into the logits / offsets: the converter cuts before that
    # Concat, because the toolchain mis-quantises an int8 CONCATENATION whose inputs have different scales
    logits_parts: list[str] | None = None
    offsets_parts: list[str] | None = None
    # how the family lays out offsets, priors and decoded corners (pytorch-ssd: all defaults)
    coding: BoxCoding = field(default_factory=BoxCoding)
    # the graph's scores output = score_fn(logits)[:, first : first + C_out]; 1 when it slices the background off
    scores_first_column: int = 0
    background_class: int | None = 0  # the background column of the raw logits, None when there is none
    family: str = ""  # pytorch-ssd / tf-od-api / ssd (a name for the layout found, not a guess: all is proved)
    logits_shape: list[int] | None = None  # the raw tensors' own shapes (batch axis may be squeezed)
    offsets_shape: list[int] | None = None
    part_shapes: dict[str, list[int]] = field(default_factory=dict)  # of each per-head part
    raw_outputs_given: bool = False  # named by --raw-outputs rather than found


@dataclass
class ModelInfo:
    path: str
    opset: int
    ir_version: int
    producer: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    initializers_as_inputs: int
    labels: list[str] | None
    normalization: dict  # what to feed the *source* graph by default: mean, std, preset
    tail: TailInfo
    metadata: dict
    input_layout: str = "NCHW"  # of the source graph's image input
    # the int8 body starts here: after the model's own NHWC->NCHW Transpose and normalisation when it has them
    body_input: str = ""
    body_shape: list[int] | None = None  # NCHW
    # the graph's own normalisation (body = scale * input + offset per channel), None when it has none
    graph_norm: dict | None = None

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    def input_hw(self) -> tuple[int, int]:
        s = self.input.shape
        return (int(s[1]), int(s[2])) if self.input_layout == "NHWC" else (int(s[2]), int(s[3]))

    def body_normalization(self, feed: Normalization) -> Normalization:
        """The normalisation of the body's input when the source graph is fed ``(x - mean) / std``: the feed
        composed with the graph's own prologue (what the bundle's input table must apply)."""
        if not self.graph_norm:
            return feed
        m, s = feed.as_arrays()
        a = np.asarray(self.graph_norm["scale"], np.float64)
        b = np.asarray(self.graph_norm["offset"], np.float64)
        mean = m - b * s / a
        std = s / a  # rounded: the graph's float32 constants (2/255) are not exact
        return Normalization(tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std))

    def to_json(self) -> dict:
        d = asdict(self)
        d["tail"].pop("priors", None)
        if self.tail.priors is not None:
            d["tail"]["priors_head"] = self.tail.priors[:3].round(6).tolist()
        return d


_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 9: "bool"}


def _vi(v) -> TensorInfo:
    t = v.type.tensor_type
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            dims.append(d.dim_param or "?")
    return TensorInfo(v.name, dims, _DTYPES.get(t.elem_type, str(t.elem_type)))


def real_inputs(model) -> list:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def constant_tensors(model) -> set[str]:
    """Names of tensors computable from constants only (initializers, Constant nodes and ops over them)."""
    g = model.graph
    const = {i.name for i in g.initializer}
    for n in g.node:  # graph nodes are topologically sorted
        if n.op_type == "Constant" or (n.input and all((not i) or i in const for i in n.input)
                                       and n.op_type not in ("RandomNormal", "RandomUniform")):
            const.update(n.output)
    return const


def run_onnx_tensors(model, feeds: dict, names: list[str]) -> list[np.ndarray]:
    """Evaluate arbitrary (intermediate) tensors of ``model`` with onnxruntime."""
    import onnx

    from ..runtime.onnx import onnx_session

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in names:  # untyped: any dtype (shape computations are int64)
        m.graph.output.append(onnx.ValueInfoProto(name=n))
    return onnx_session(m).run(names, feeds)


def subgraph(model, inputs: dict[str, list[int]], outputs: list[str]):
    """A model computing ``outputs`` from the tensors ``inputs`` (name -> shape), keeping the needed
    initializers and constants. Nodes are kept in graph (topological) order."""
    import onnx
    from onnx import helper

    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    need, keep, stack = set(), set(), list(outputs)
    while stack:
        t = stack.pop()
        if t in need:
            continue
        need.add(t)
        if t in inputs:
            continue
        n = prod.get(t)
        if n is not None and id(n) not in keep:
            keep.add(id(n))
            stack.extend(i for i in n.input if i)
    nodes = [n for n in g.node if id(n) in keep]
    inits = [i for i in g.initializer if i.name in need]
    ins = [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, v) for k, v in inputs.items()]
    outs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in outputs]
    sg = helper.make_graph(nodes, g.name or "graph", ins, outs, inits)
    m = helper.make_model(sg, opset_imports=model.opset_import, ir_version=max(model.ir_version, 4))
    return m


def compare_priors_to_spec(priors: np.ndarray, width: int, height: int, specs=MOBILENET_SSD_SPECS) -> float | None:
    try:
        ref = generate_priors(specs, (width, height) if width != height else width)
    except Exception:
        return None
    if ref.shape != priors.shape:
        return None
    return float(np.max(np.abs(ref - priors)))


def _rows(shape, cols: int | None = None) -> tuple[int, int] | None:
    """(rows, columns) of a tensor laid out as rows x columns with any size-1 axes (batch) around the rows:
    (1, N, C), (N, C), (1, N, 1, C). None when the shape is not of that form."""
    shape = [int(v) for v in shape]
    if len(shape) < 2 or (cols is not None and shape[-1] != cols):
        return None
    lead = shape[:-1]
    if sum(d != 1 for d in lead) > 1:
        return None
    return int(np.prod(lead)), shape[-1]


class _Graph:
    """The graph with producers, consumers, constants, and the values of every tensor between the last
    convolution and the outputs on one random input (shapes for the walks)."""

    def __init__(self, model, input_name: str, input_shape: list[int], seed: int = 0):
        g = model.graph
        self.model = model
        self.prod = {o: n for n in g.node for o in n.output}
        self.order = {id(n): k for k, n in enumerate(g.node)}
        self.cons: dict[str, list] = {}
        for n in g.node:
            for i in n.input:
                self.cons.setdefault(i, []).append(n)
        self.const = constant_tensors(model)
        self.outputs = [o.name for o in g.output]
        self.input_name, self.input_shape = input_name, [int(v) for v in input_shape]
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal(self.input_shape).astype(np.float32)
        names = [t for t in self._tail_region() if t != input_name]
        vals = run_onnx_tensors(model, {input_name: self.x}, names) if names else []
        self.values = dict(zip(names, vals, strict=True))

    def _tail_region(self) -> list[str]:
        """Non-constant tensors reachable backwards from the outputs without crossing a convolution."""
        seen, stack = [], list(self.outputs)
        while stack:
            t = stack.pop()
            if t in seen or t in self.const or not t:
                continue
            seen.append(t)
            n = self.prod.get(t)
            if n is not None and n.op_type not in CONV_OPS:
                stack.extend(n.input)
        return seen

    def const_value(self, t: str) -> np.ndarray | None:
        """An initializer's value (None for other constants)."""
        from onnx import numpy_helper

        init = next((i for i in self.model.graph.initializer if i.name == t), None)
        if init is not None:
            return numpy_helper.to_array(init)
        n = self.prod.get(t)
        if n is not None and n.op_type == "Constant":
            a = next((a for a in n.attribute if a.name == "value"), None)
            return None if a is None else numpy_helper.to_array(a.t)
        return None

    def value(self, t: str) -> np.ndarray:
        if t == self.input_name:
            return self.x
        if t not in self.values:
            self.values[t] = run_onnx_tensors(self.model, {self.input_name: self.x}, [t])[0]
        return self.values[t]

    def shape(self, t: str) -> list[int] | None:
        if t == self.input_name:
            return self.input_shape
        v = self.values.get(t)
        return None if v is None else [int(d) for d in np.shape(v)]

    def ops_after_conv(self, output: str) -> list[str]:
        """Op types between the last convolution and ``output``, in graph order."""
        nodes, seen, stack = {}, set(), [output]
        while stack:
            t = stack.pop()
            if t in seen or t in self.const or not t:
                continue
            seen.add(t)
            n = self.prod.get(t)
            if n is None or n.op_type in CONV_OPS:
                continue
            nodes[id(n)] = n
            stack.extend(n.input)
        ordered = sorted(nodes.values(), key=lambda n: self.order[id(n)])
        return list(dict.fromkeys(n.op_type for n in ordered))

    def ops_summary(self, scores: str | None, boxes: str | None) -> str:
        outs = [o for o in (scores, boxes) if o] or self.outputs
        return "; ".join(f"{o}: {', '.join(self.ops_after_conv(o)) or 'none'}" for o in outs)

    def concat_axis(self, n) -> int | None:
        shp = self.shape(n.output[0])
        axis = next((a.i for a in n.attribute if a.name == "axis"), None)
        if shp is None or axis is None:
            return None
        return axis % len(shp)


def fold_shape_computations(model, input_name: str, input_shape: list[int]):
    """Replace tensors computed from ``Shape``/``Size`` (dynamic reshapes of exporters: static once the input
    shape is fixed) by initializers, so the tail's Reshapes have constant shapes and its sub-graphs stand alone."""
    from onnx import numpy_helper

    g = model.graph
    const = constant_tensors(model)
    derived: set[str] = set()
    nodes = []
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in ("Shape", "Size") or (ins and any(i in derived for i in ins)
                                              and all(i in derived or i in const for i in ins)):
            derived.update(n.output)
            nodes.append(n)
    if not nodes:
        return model
    used = {i for n in g.node if not (set(n.output) & derived) for i in n.input} | {o.name for o in g.output}
    keep = sorted(derived & used)
    x = np.zeros([int(v) for v in input_shape], np.float32)
    vals = run_onnx_tensors(model, {input_name: x}, keep) if keep else []
    drop = {id(n) for n in nodes}
    kept_nodes = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(kept_nodes)
    for name, v in zip(keep, vals, strict=True):
        g.initializer.append(numpy_helper.from_array(np.asarray(v), name))
    return model


def _find_outputs(gr: _Graph) -> tuple[str | None, str | None]:
    """(scores, boxes) outputs: by name when called so, else by shape (N x 4 boxes, N x C scores)."""
    outs = gr.outputs
    if "scores" in outs and "boxes" in outs:
        return "scores", "boxes"
    shapes = {o: gr.shape(o) for o in outs}

    def named(cands: list[str], words: tuple[str, ...]) -> str | None:
        hits = [o for o in cands if any(w in o.lower() for w in words)]
        return hits[0] if len(hits) == 1 else None

    boxes_c = [o for o in outs if shapes[o] and (r := _rows(shapes[o], 4)) and r[0] > 4]
    boxes = boxes_c[0] if len(boxes_c) == 1 else named(boxes_c, ("box", "loc"))
    if boxes is None and len(boxes_c) == 2:  # both end in 4 (3 classes + background): the decoded one has an Exp
        exp = [o for o in boxes_c if "Exp" in gr.ops_after_conv(o)]
        boxes = exp[0] if len(exp) == 1 else None
    if boxes is None:
        return None, None
    n = _rows(shapes[boxes])[0]
    score_c = [o for o in outs if o != boxes and shapes[o] and (r := _rows(shapes[o])) and r[0] == n]
    scores = score_c[0] if len(score_c) == 1 else named(score_c, ("score", "conf", "class", "prob"))
    return scores, boxes


def _data_input(gr: _Graph, n) -> str | None:
    ins = [i for i in n.input if i and i not in gr.const]
    return ins[0] if len(ins) == 1 else None


def _score_fn_node(gr: _Graph, scores: str):
    """The Softmax/Sigmoid feeding ``scores`` through layout ops and a column Slice, or None."""
    t = scores
    for _ in range(16):
        n = gr.prod.get(t)
        if n is None:
            return None
        if n.op_type in ("Softmax", "Sigmoid"):
            return n
        if n.op_type not in SCORE_OPS or (t := _data_input(gr, n)) is None:
            return None
    return None


def _before_logit_scale(gr: _Graph, t: str, rows: int) -> str:
    """Back from a score function's input through a logit scale (TF OD API: ``scale_logits``, a Div/Mul by a
    scalar constant) and order-keeping layout ops to the heads' logits, so the cut is per head; the proof then
    checks the scale is 1. ``t`` itself when there is nothing of the kind."""
    best = t
    for _ in range(6):
        n = gr.prod.get(t)
        if n is None:
            break
        consts = [gr.const_value(i) for i in n.input if i in gr.const]
        scalar = n.op_type in ("Div", "Mul") and len(consts) == 1 and consts[0] is not None and consts[0].size == 1
        if not (scalar or n.op_type in ORDER_OPS) or (t := _data_input(gr, n)) is None:
            break
        r = _rows(gr.shape(t)) if gr.shape(t) else None
        if r is not None and r[0] == rows:
            best = t
    return best


def _offsets_walk(gr: _Graph, boxes: str) -> tuple[set[str], set[str]]:
    """(frontier, walked): the non-constant tensors where the box decode starts, and the decode's tensors."""
    frontier, seen, stack = set(), set(), [boxes]
    while stack:
        t = stack.pop()
        if t in seen or t in gr.const or not t:
            continue
        seen.add(t)
        n = gr.prod.get(t)
        if n is not None and n.op_type in DECODE_OPS and (n.op_type != "Concat" or _coordinate_concat(gr, n)):
            stack.extend(n.input)
        else:
            frontier.add(t)
    return frontier, seen


def _coordinate_concat(gr: _Graph, n) -> bool:
    """A decode's Concat joins coordinates (<= 4 along its axis); a Concat of SSD heads joins priors."""
    ax, shp = gr.concat_axis(n), gr.shape(n.output[0])
    return ax is not None and shp[ax] <= 4


def _settle(gr: _Graph, t: str, rows: int, cols: int | None, walked: set[str]) -> str | None:
    """``t`` or the first tensor after it (through layout ops of the tail) laid out as ``rows`` x ``cols``."""
    for _ in range(8):
        shp = gr.shape(t)
        r = _rows(shp, cols) if shp else None
        if r is not None and r[0] == rows:
            return t
        nxt = [n for n in gr.cons.get(t, []) if n.op_type in ORDER_OPS | {"Transpose"} and n.output[0] in walked]
        if len(nxt) != 1:
            return None
        t = nxt[0].output[0]
    return None


def _head_parts(gr: _Graph, tensor: str, cols: int) -> list[str] | None:
    """Inputs of the Concat of SSD heads (along the priors axis) that produces ``tensor`` through order-keeping
    layout ops, each laid out as rows x ``cols``; None when there is no such Concat."""
    n = gr.prod.get(tensor)
    while n is not None and n.op_type in ORDER_OPS:
        t = _data_input(gr, n)
        n = gr.prod.get(t) if t else None
    if n is None or n.op_type != "Concat" or len(n.input) < 2 or any(not i or i in gr.const for i in n.input):
        return None
    ax = gr.concat_axis(n)
    shapes = [gr.shape(i) for i in n.input]
    if ax is None or any(s is None or int(np.prod(s[:ax])) != 1 or _rows(s, cols) is None for s in shapes):
        return None
    if ax == len(shapes[0]) - 1:
        return None
    return list(n.input)


def _not_recognised(info: TailInfo, gr: _Graph, why: str) -> TailInfo:
    info.recognised = False
    info.reason = (f"{why}; ops between the last convolution and each output: "
                   f"{gr.ops_summary(info.scores_output, info.boxes_output)}; name the raw tensors with {HATCH}")
    return info


def find_tail(gr: _Graph, raw_outputs: tuple[str, str] | None = None) -> TailInfo:
    """Structural search for the cut points (or the ones named by ``raw_outputs``); see the module docstring.
    The numerical proof is :func:`prove_tail`."""
    scores, boxes = _find_outputs(gr)
    info = TailInfo(False, scores_output=scores, boxes_output=boxes, raw_outputs_given=raw_outputs is not None)
    if boxes is None or scores is None:
        outs = ", ".join(f"{o} {gr.shape(o)}" for o in gr.outputs)
        return _not_recognised(info, gr, f"no SSD outputs (scores N x C and boxes N x 4) among: {outs}")
    n = _rows(gr.shape(boxes))[0]
    if raw_outputs is not None:
        for t in raw_outputs:
            if t not in gr.prod and t != gr.input_name:
                raise UserError(f"--raw-outputs: no tensor named {t!r} in the graph; give the raw logits and "
                                "offsets tensors (node output names, as Netron shows them)")
        info.logits_tensor, info.offsets_tensor = raw_outputs
        for t, out in ((info.logits_tensor, scores), (info.offsets_tensor, boxes)):
            if not _depends_only_on(gr, out, t):
                return _not_recognised(info, gr, f"`{out}` depends on tensors other than {t!r}")
    else:
        sn = _score_fn_node(gr, scores)
        if sn is None:
            p = gr.prod.get(scores)
            return _not_recognised(info, gr, f"`{scores}` is not produced by a Softmax/Sigmoid (found "
                                             f"{p.op_type if p else 'an input'})")
        info.score_fn = sn.op_type.lower()
        info.logits_tensor = _before_logit_scale(gr, sn.input[0], n)
        frontier, walked = _offsets_walk(gr, boxes)
        if len(frontier) != 1:
            return _not_recognised(info, gr, f"box decoding feeding `{boxes}` starts from {len(frontier)} tensors "
                                             f"({', '.join(sorted(frontier)[:4])}), expected one raw-offsets tensor")
        t = frontier.pop()
        if t == boxes or t == gr.input_name:
            return _not_recognised(info, gr, f"`{boxes}` is not decoded inside the graph (no decode over priors)")
        info.offsets_tensor = _settle(gr, t, n, 4, walked)
        if info.offsets_tensor is None:
            return _not_recognised(info, gr, f"the raw offsets `{t}` have shape {gr.shape(t)}, not {n} x 4")
    for t in (info.logits_tensor, info.offsets_tensor):
        gr.value(t)
    lg = _rows(gr.shape(info.logits_tensor))
    if lg is None or lg[0] != n or _rows(gr.shape(info.offsets_tensor), 4) != (n, 4):
        return _not_recognised(info, gr, f"raw outputs have unexpected shapes {gr.shape(info.logits_tensor)} / "
                                         f"{gr.shape(info.offsets_tensor)} (expected {n} rows, 4 box columns)")
    info.num_priors, info.num_classes = n, lg[1]
    info.logits_shape, info.offsets_shape = gr.shape(info.logits_tensor), gr.shape(info.offsets_tensor)
    info.logits_parts = _head_parts(gr, info.logits_tensor, lg[1])
    info.offsets_parts = _head_parts(gr, info.offsets_tensor, 4)
    info.part_shapes = {p: gr.shape(p) for p in (info.logits_parts or []) + (info.offsets_parts or [])}
    info.recognised = True
    return info


def _depends_only_on(gr: _Graph, output: str, source: str) -> bool:
    seen, stack = set(), [output]
    while stack:
        t = stack.pop()
        if t in seen or t in gr.const or t == source or not t:
            continue
        seen.add(t)
        n = gr.prod.get(t)
        if n is None:
            return False
        stack.extend(n.input)
    return True


def _fn(name: str, x: np.ndarray) -> np.ndarray:
    return softmax(x) if name == "softmax" else sigmoid(x)


def _prove_scores(gr: _Graph, info: TailInfo, rng) -> str | None:
    """Score function and kept columns, proved on random logits; an error message or None."""
    n, c_in = info.num_priors, info.num_classes
    out = _rows(gr.shape(info.scores_output))
    c_out = out[1]
    if not 0 <= c_in - c_out <= 1:
        return f"the scores output has {c_out} columns for {c_in} logits (at most the background dropped)"
    st = subgraph(gr.model, {info.logits_tensor: info.logits_shape}, [info.scores_output])
    probe = (rng.standard_normal(info.logits_shape) * 4).astype(np.float32)
    got = run_onnx_tensors(st, {info.logits_tensor: probe}, [info.scores_output])[0].reshape(n, c_out)
    best = None
    for fn in [info.score_fn] if info.score_fn else SCORE_FNS:
        ref = _fn(fn, probe.reshape(n, c_in))
        for j in range(c_in - c_out + 1):
            e = float(np.max(np.abs(got - ref[:, j:j + c_out])))
            if best is None or e < best[0]:
                best = (e, fn, j)
    info.score_error, info.score_fn, info.scores_first_column = best
    if c_out == c_in - 1:  # the graph drops one column before its scores output: that is the background
        info.background_class = 0 if best[2] == 1 else c_in - 1
    else:  # softmax SSDs keep the background in column 0; sigmoid ones score every column as a class
        info.background_class = 0 if info.score_fn == "softmax" else None
    return None


def _box_tail(gr: _Graph, info: TailInfo):
    n = info.num_priors
    bt = subgraph(gr.model, {info.offsets_tensor: info.offsets_shape}, [info.boxes_output])

    def tail(loc: np.ndarray) -> np.ndarray:
        feed = {info.offsets_tensor: loc.reshape(info.offsets_shape).astype(np.float32)}
        return run_onnx_tensors(bt, feed, [info.boxes_output])[0].reshape(n, 4).astype(np.float64)

    return tail


def _x_axis(centers: list[np.ndarray]) -> int | None:
    """Which of two center columns is x: priors run row-major over each feature map, so successive cells of a
    row differ in x only (a new row changes both). None when the priors cannot tell."""
    a, b = (np.abs(np.diff(c)) > 1e-7 for c in centers)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    if only_a == only_b:
        return None
    return 0 if only_a > only_b else 1


def read_coding(tail, n: int) -> tuple[BoxCoding, np.ndarray] | str:
    """Offset order, variances, box order and priors read from a box tail by probing it: zero offsets give the
    priors; a unit offset per channel moves a min and a max column alike (center) or apart (size)."""
    zero = np.zeros((n, 4), np.float32)
    b0 = tail(zero)
    moves = []
    for k in range(4):
        e = zero.copy()
        e[:, k] = 1.0
        moves.append(np.median(tail(e) - b0, axis=0))
    med = np.asarray(moves)  # (channel, column)
    moved = [tuple(np.flatnonzero(np.abs(m) > 1e-6 + 1e-3 * np.abs(med).max())) for m in med]
    if any(len(m) != 2 for m in moved) or len(set(moved)) != 2:
        return f"unit offsets move box columns {moved}, not two (min, max) pairs"
    axes = []
    for pair in dict.fromkeys(moved):
        ks = [k for k in range(4) if moved[k] == pair]
        same = [k for k in ks if med[k, pair[0]] * med[k, pair[1]] > 0]
        apart = [k for k in ks if med[k, pair[0]] * med[k, pair[1]] < 0]
        if len(same) != 1 or len(apart) != 1:
            return f"box columns {pair} are not moved by one center and one size offset"
        lo, hi = (pair if med[apart[0], pair[0]] < 0 else pair[::-1])
        axes.append({"center": same[0], "size": apart[0], "lo": lo, "hi": hi})
    x = _x_axis([(b0[:, a["lo"]] + b0[:, a["hi"]]) / 2 for a in axes])
    if x is None:
        return "cannot tell x from y in the priors' order"
    ax, ay = axes[x], axes[1 - x]
    size = {t: b0[:, a["hi"]] - b0[:, a["lo"]] for t, a in (("x", ax), ("y", ay))}
    if not all(np.all(v > 0) for v in size.values()):
        return "decoded zero offsets do not give positive prior sizes"
    center = {t: (b0[:, a["lo"]] + b0[:, a["hi"]]) / 2 for t, a in (("x", ax), ("y", ay))}
    offset_tok, box_tok, var = [""] * 4, [""] * 4, [0.0] * 4
    for t, a, ct, st in (("x", ax, "cx", "w"), ("y", ay, "cy", "h")):
        offset_tok[a["center"]], offset_tok[a["size"]] = ct, st
        box_tok[a["lo"]], box_tok[a["hi"]] = f"{t}1", f"{t}2"
        var[a["center"]] = round(float(med[a["center"], a["lo"]] / np.median(size[t])), 6)
        e = zero.copy()
        e[:, a["size"]] = 1.0
        b1 = tail(e)
        var[a["size"]] = round(float(np.median(np.log((b1[:, a["hi"]] - b1[:, a["lo"]]) / size[t]))), 6)
    order = ",".join(offset_tok)
    coding = BoxCoding(offset_order=order, variances=tuple(var), prior_layout=order, box_order=",".join(box_tok))
    by = {"cx": center["x"], "cy": center["y"], "w": size["x"], "h": size["y"]}
    priors = np.stack([by[t] for t in offset_tok], axis=1).astype(np.float32)
    return coding, priors


def _family(t: TailInfo) -> str:
    c = t.coding
    if c.offset_order == "cx,cy,w,h" and c.box_order == "x1,y1,x2,y2" and t.score_fn == "softmax":
        return "pytorch-ssd"
    if c.offset_order == "cy,cx,h,w":  # FasterRcnnBoxCoder order (sigmoid or softmax score converter)
        return "tf-od-api"
    return "ssd"


def prove_tail(gr: _Graph, info: TailInfo, seed: int = 0) -> TailInfo:
    """Read the score function, priors, variances and orders out of the graph and check that the host decode
    reproduces the graph's tail on random inputs; refuse (``recognised=False``) otherwise."""
    rng = np.random.default_rng(seed)
    why = _prove_scores(gr, info, rng)
    if why:
        return _not_recognised(info, gr, why)
    tail = _box_tail(gr, info)
    got = read_coding(tail, info.num_priors)
    if isinstance(got, str):
        return _not_recognised(info, gr, got)
    info.coding, info.priors = got
    var = dict(zip(info.coding.offset_order.split(","), info.coding.variances, strict=True))
    info.center_variance, info.size_variance = var["cx"], var["w"]
    probe = (rng.standard_normal((info.num_priors, 4)) * 1.5).astype(np.float32)
    ref = from_xyxy(decode(probe, info.priors, info.coding), info.coding.box_order)
    out = tail(probe)
    scale = max(1.0, float(np.max(np.abs(ref))))
    info.decode_error = float(np.max(np.abs(out - ref)))
    info.family = _family(info)
    if not (math.isfinite(info.decode_error) and info.decode_error <= 1e-4 * scale) or info.score_error > 1e-5:
        return _not_recognised(info, gr, f"the graph's tail is not an SSD decode over constants (host decode error "
                                         f"{info.decode_error:.2g}, score error {info.score_error:.2g})")
    return info


def _layout(shape: list[int]) -> str:
    return "NHWC" if int(shape[-1]) == 3 and int(shape[1]) != 3 else "NCHW"


def _perm(n) -> list[int]:
    return next((list(a.ints) for a in n.attribute if a.name == "perm"), [])


def find_prologue(gr: _Graph) -> tuple[str, list[int], dict | None]:
    """(body input, its NCHW shape, the graph's own normalisation) from the chain of Transpose (NHWC -> NCHW)
    and per-channel Mul/Div/Add/Sub over constants right after the image input. The normalisation is proved
    affine per channel on a random input; when it is not, nothing is cut off."""
    layout = _layout(gr.input_shape)
    t, arith, end, end_nchw = gr.input_name, False, gr.input_name, layout == "NCHW"
    for _ in range(8):
        cons = gr.cons.get(t, [])
        if len(cons) != 1 or cons[0].op_type not in PROLOGUE_OPS or _data_input(gr, cons[0]) != t:
            break
        n = cons[0]
        if n.op_type == "Transpose":
            if layout != "NHWC" or _perm(n) != [0, 3, 1, 2]:
                break
            layout = "NCHW"
        arith |= n.op_type in ("Mul", "Div", "Add", "Sub")
        t = n.output[0]
        if layout == "NCHW":
            end, end_nchw = t, True
    s = gr.input_shape
    nchw = s if _layout(s) == "NCHW" else [s[0], s[3], s[1], s[2]]
    if end == gr.input_name or not end_nchw:
        return gr.input_name, nchw, None
    sub = subgraph(gr.model, {gr.input_name: s}, [end])

    def f(x: np.ndarray) -> np.ndarray:
        return run_onnx_tensors(sub, {gr.input_name: x.astype(np.float32)}, [end])[0].astype(np.float64)

    y0, y1 = f(np.zeros(s)), f(np.ones(s))
    a, b = (y1 - y0)[0, :, 0, 0], y0[0, :, 0, 0]
    x = gr.x if _layout(s) == "NCHW" else gr.x.transpose(0, 3, 1, 2)
    if not arith:
        a, b = np.ones(3), np.zeros(3)
    err = float(np.max(np.abs(f(gr.x) - (a[None, :, None, None] * x + b[None, :, None, None]))))
    if err > 1e-4 or not np.all(np.abs(a) > 1e-12):
        return gr.input_name, nchw, None
    norm = None if not arith else {"scale": [round(float(v), 9) for v in a], "offset": [round(float(v), 9) for v in b]}
    return end, nchw, norm


def read_labels_metadata(model) -> list[str] | None:
    for p in model.metadata_props:
        if p.key == LABELS_KEY:
            try:
                v = json.loads(p.value)
            except json.JSONDecodeError:
                return None
            if isinstance(v, list) and all(isinstance(s, str) for s in v):
                return v
    return None


def inspect_model(path, input_shape: list[int] | None = None, prove: bool = True,
                  raw_outputs: tuple[str, str] | None = None) -> ModelInfo:
    """Everything :command:`edge-ssd inspect` reports. ``input_shape`` fixes dynamic input dims (in the input's
    own order); ``raw_outputs`` names the raw (logits, offsets) tensors instead of searching for them."""
    return load_and_inspect(path, input_shape, prove, raw_outputs)[1]


def _feed_preset(graph_norm: dict | None) -> dict:
    if graph_norm:
        a, b = np.asarray(graph_norm["scale"]), np.asarray(graph_norm["offset"])
        m, sd = -b / a, 1 / a
        return {"mean": [0.0] * 3, "std": [1.0] * 3, "in_graph": True,
                "preset": f"in the graph: (x - {_fmt(m)}) / {_fmt(sd)}; feed raw 0..255 pixels"}
    return {"mean": list(IMAGE_MEAN), "std": [IMAGE_STD] * 3, "in_graph": False, "preset": "pytorch-ssd (x-127)/128"}


def _fmt(v: np.ndarray) -> str:
    v = [round(float(x), 4) for x in v]
    return f"{v[0]:g}" if len(set(v)) == 1 else "(" + ", ".join(f"{x:g}" for x in v) + ")"


def load_and_inspect(path, input_shape: list[int] | None = None, prove: bool = True,
                     raw_outputs: tuple[str, str] | None = None):
    """(model with a static input shape and its shape computations folded, :class:`ModelInfo`)."""
    model = load_onnx(path)
    model = fix_input_shape(model, path, input_shape)
    ins = real_inputs(model)
    shape = [int(d.dim_value) for d in ins[0].type.tensor_type.shape.dim]
    model = fold_shape_computations(model, ins[0].name, shape)
    gr = _Graph(model, ins[0].name, shape)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    body, body_shape, graph_norm = find_prologue(gr)
    info = ModelInfo(
        path=str(path), opset=int(opset), ir_version=int(model.ir_version), producer=model.producer_name,
        inputs=[_vi(i) for i in ins], outputs=[_vi(o) for o in model.graph.output],
        initializers_as_inputs=len(model.graph.input) - len(ins), labels=read_labels_metadata(model),
        normalization=_feed_preset(graph_norm), tail=find_tail(gr, raw_outputs),
        metadata={p.key: p.value[:200] for p in model.metadata_props}, input_layout=_layout(shape),
        body_input=body, body_shape=body_shape, graph_norm=graph_norm,
    )
    if prove and info.tail.recognised:
        prove_tail(gr, info.tail)
        if info.tail.priors is not None:
            h, w = info.input_hw()
            err = compare_priors_to_spec(info.tail.coding.canonical_priors(info.tail.priors), w, h)
            info.tail.priors_spec_error = err
            info.tail.priors_match_spec = err is not None and err < 1e-5
    return model, info


def fix_input_shape(model, path, input_shape: list[int] | None):
    """Make the single image input static: dynamic batch -> 1; other dynamic dims need ``input_shape``."""
    ins = real_inputs(model)
    if len(ins) != 1:
        raise UserError(f"{path}: model has {len(ins)} inputs ({', '.join(i.name for i in ins)}); an SSD "
                        "detector takes one image input")
    ti = _vi(ins[0])
    if len(ti.shape) != 4:
        raise UserError(f"{path}: input `{ti.name}` has shape {ti.shape}; expected an image input like "
                        "1x3x300x300 (NCHW) or 1x300x300x3 (NHWC)")
    dims = ins[0].type.tensor_type.shape.dim
    if input_shape is not None:
        if len(input_shape) != 4:
            raise UserError(f"--input-shape {input_shape}: give four numbers in the input's order, e.g. "
                            "1,3,300,300 (NCHW) or 1,300,300,3 (NHWC)")
        for d, v in zip(dims, input_shape, strict=True):
            d.Clear()
            d.dim_value = int(v)
        return model
    if isinstance(ti.shape[0], str):
        dims[0].Clear()
        dims[0].dim_value = 1
    if any(isinstance(s, str) for s in ti.shape[1:]):
        raise UserError(f"{path}: input `{ti.name}` has a dynamic shape {ti.shape}; pass --input-shape in the "
                        "input's order (e.g. 1,3,300,300 or 1,300,300,3) or export with a fixed size")
    if ti.dtype not in ("float32",):
        raise UserError(f"{path}: input `{ti.name}` is {ti.dtype}; edge-ssd converts float32 image inputs - "
                        "export the graph from its float input (e.g. tf2onnx --inputs of the preprocessed image)")
    return model


def format_info(info: ModelInfo) -> str:
    t = info.tail
    lines = [
        f"model:        {info.path}",
        f"opset:        {info.opset} (ir {info.ir_version}, producer {info.producer or '?'})",
        f"input:        {info.input.name} {info.input.shape} {info.input.dtype} {info.input_layout}"
        + (f"  ({info.initializers_as_inputs} initializers also listed as graph inputs, ignored)"
           if info.initializers_as_inputs else ""),
    ]
    for o in info.outputs:
        lines.append(f"output:       {o.name} {o.shape} {o.dtype}")
    lines.append(f"normalise:    {info.normalization['preset']} (feed mean {info.normalization['mean']}, "
                 f"std {info.normalization['std']}; change with --mean/--std)")
    if info.body_input != info.input.name:
        what = "normalisation, folded into the bundle's input table" if info.graph_norm else "input layout ops"
        lines.append(f"body input:   {info.body_input} {info.body_shape} (the int8 body starts after the graph's "
                     f"own {what})")
    lines.append(f"labels:       {info.labels if info.labels else 'none in metadata (pass --labels FILE)'}")
    if t.recognised:
        c = t.coding
        first = f"[:, {t.scores_first_column}:]" if t.scores_first_column else ""
        bg = (f"column {t.background_class}" if t.background_class is not None else "none: every column is a "
              "class (a labels file starting with BACKGROUND, or one label fewer than columns, makes column 0 "
              "the background, as in TF OD API graphs that keep it)")
        lines += [
            f"tail:         recognised SSD post-processing, {t.family} layout (cut here for int8; runs in float "
            "on the host)" + (" at the tensors named by --raw-outputs" if t.raw_outputs_given else ""),
            f"  scores:     {t.scores_output} = {t.score_fn}({t.logits_tensor}){first}  [host error "
            f"{t.score_error:.1e}], background {bg}",
            f"  boxes:      {t.boxes_output} = decode({t.offsets_tensor}, priors) as {c.box_order}  [host error "
            f"{t.decode_error:.1e}]",
            f"  offsets:    {c.offset_order} with variances {list(c.variances)}"
            + (f" (scale factors {[round(1 / v, 4) for v in c.variances]})" if c.offset_order != "cx,cy,w,h" else ""),
            f"  priors:     {t.num_priors} as {c.prior_layout} (read from the graph), classes: {t.num_classes}",
            f"  heads:      {len(t.logits_parts or [1])} class + {len(t.offsets_parts or [1])} box outputs "
            + ("concatenated in the graph: the int8 model outputs each head (own scale), the host concatenates"
               if t.logits_parts or t.offsets_parts else "(no per-head Concat found: cut at the tail's inputs)"),
            "  SSDSpec:    " + ("priors match the seed's MobileNet-SSD spec" if t.priors_match_spec
                               else "priors differ from the seed's MobileNet-SSD spec (the graph's are used)"),
        ]
    else:
        lines.append(f"tail:         NOT recognised: {t.reason}")
    return "\n".join(lines)
