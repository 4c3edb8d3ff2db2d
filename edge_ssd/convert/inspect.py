"""Inspect an SSD ONNX model: its I/O, and the post-processing tail (score function + box decoding).

The tail is found structurally and then *proved* numerically, never guessed:

* scores: the ``Softmax``/``Sigmoid`` whose output is the ``scores`` graph output (through ``Identity`` only);
  the raw logits are its input. Checked by running the tail sub-graph on random logits with onnxruntime and
  comparing with :func:`edge_ssd.model.box.softmax`/``sigmoid``.
* boxes: walking back from ``boxes`` through decode ops (Slice/Mul/Exp/Add/Sub/Div/Concat along the last axis,
  Split/Gather/Unsqueeze/Squeeze/Identity) over constants, the single non-constant tensor it reaches is the raw
  offsets tensor. The tail sub-graph is then evaluated with onnxruntime: offsets 0 give the priors (corner form
  -> center form), unit offsets give the variances, and random offsets must reproduce
  :func:`edge_ssd.model.box.decode_boxes` to ~1e-5.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DependencyError, UserError
from ..model.box import decode_boxes, sigmoid, softmax
from ..model.labels import LABELS_KEY
from ..model.priors import IMAGE_MEAN, IMAGE_STD, MOBILENET_SSD_SPECS, generate_priors

DECODE_OPS = {"Slice", "Mul", "Exp", "Add", "Sub", "Div", "Split", "Gather", "Unsqueeze", "Squeeze", "Identity",
              "Concat", "Constant", "Cast"}


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
    num_classes: int | None = None
    center_variance: float | None = None
    size_variance: float | None = None
    decode_error: float | None = None  # max abs error of host decode vs graph tail on random offsets
    score_error: float | None = None
    priors_match_spec: bool | None = None
    priors_spec_error: float | None = None
    priors: np.ndarray | None = field(default=None, repr=False)
    # per-head tensors concatenated (priors axis) into the logits / offsets: the converter cuts before that
    # Concat, because the toolchain mis-quantises an int8 CONCATENATION whose inputs have different scales
    logits_parts: list[str] | None = None
    offsets_parts: list[str] | None = None


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
    normalization: dict
    tail: TailInfo
    metadata: dict

    @property
    def input(self) -> TensorInfo:
        return self.inputs[0]

    def input_hw(self) -> tuple[int, int]:
        s = self.input.shape
        return int(s[2]), int(s[3])

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
    import onnxruntime as ort
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    for n in names:
        m.graph.output.append(helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(names, feeds)


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


def _find_outputs(model) -> tuple[str | None, str | None]:
    outs = [_vi(o) for o in model.graph.output]
    names = {o.name: o for o in outs}
    scores = "scores" if "scores" in names else None
    boxes = "boxes" if "boxes" in names else None
    if boxes is None:
        cands = [o for o in outs if len(o.shape) == 3 and o.shape[-1] == 4]
        if len(cands) == 1:
            boxes = cands[0].name
    if scores is None:
        cands = [o for o in outs if len(o.shape) == 3 and o.name != boxes]
        if len(cands) == 1:
            scores = cands[0].name
    return scores, boxes


def _concat_last_axis(node, rank: int = 3) -> bool:
    for a in node.attribute:
        if a.name == "axis":
            return a.i == -1 or a.i == rank - 1
    return False


def find_tail(model) -> TailInfo:
    """Structural search for the cut points; see the module docstring. Numerical proof is in :func:`analyse`."""
    scores, boxes = _find_outputs(model)
    if boxes is None or scores is None:
        outs = ", ".join(f"{o.name} {_vi(o).shape}" for o in model.graph.output)
        return TailInfo(False, f"no SSD outputs (a 1xNxC `scores` and a 1xNx4 `boxes`) among: {outs}")
    g = model.graph
    prod = {o: n for n in g.node for o in n.output}
    const = constant_tensors(model)
    info = TailInfo(False, scores_output=scores, boxes_output=boxes)
    # scores: Softmax/Sigmoid, possibly behind Identity
    t = scores
    while t in prod and prod[t].op_type == "Identity":
        t = prod[t].input[0]
    n = prod.get(t)
    if n is None or n.op_type not in ("Softmax", "Sigmoid"):
        info.reason = f"`{scores}` is not produced by a Softmax/Sigmoid (found {n.op_type if n else 'an input'})"
        return info
    info.score_fn = n.op_type.lower()
    info.logits_tensor = n.input[0]
    # boxes: walk back through decode ops
    frontier, seen, stack = set(), set(), [boxes]
    while stack:
        t = stack.pop()
        if t in seen or t in const:
            continue
        seen.add(t)
        n = prod.get(t)
        if n is None:
            frontier.add(t)
            continue
        if n.op_type in DECODE_OPS and (n.op_type != "Concat" or _concat_last_axis(n)):
            stack.extend(i for i in n.input if i)
        else:
            frontier.add(t)
    if len(frontier) != 1:
        info.reason = (f"box decoding feeding `{boxes}` starts from {len(frontier)} tensors "
                       f"({', '.join(sorted(frontier)[:4])}), expected one raw-offsets tensor")
        return info
    info.offsets_tensor = frontier.pop()
    if info.offsets_tensor == boxes:
        info.reason = f"`{boxes}` is not decoded inside the graph (no Slice/Mul/Exp/Add decode found)"
        return info
    info.logits_parts = _head_parts(model, prod, const, info.logits_tensor)
    info.offsets_parts = _head_parts(model, prod, const, info.offsets_tensor)
    info.recognised = True
    return info


def _head_parts(model, prod: dict, const: set, tensor: str) -> list[str] | None:
    """Inputs of the Concat (along the priors axis of a 1xNxK tensor) that produces ``tensor``, if any."""
    n = prod.get(tensor)
    while n is not None and n.op_type == "Identity":
        n = prod.get(n.input[0])
    if n is None or n.op_type != "Concat" or len(n.input) < 2:
        return None
    axis = next((a.i for a in n.attribute if a.name == "axis"), None)
    if axis not in (1, -2) or any(i in const or not i for i in n.input):
        return None
    return list(n.input)


def prove_tail(model, info: TailInfo, input_name: str, input_shape: list[int], seed: int = 0) -> TailInfo:
    """Read priors/variances out of the graph and check the host decode reproduces the graph's tail."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(np.float32)
    logits, offsets = run_onnx_tensors(model, {input_name: x}, [info.logits_tensor, info.offsets_tensor])
    if offsets.ndim != 3 or offsets.shape[-1] != 4 or logits.ndim != 3 or logits.shape[1] != offsets.shape[1]:
        info.recognised = False
        info.reason = f"raw outputs have unexpected shapes {logits.shape} / {offsets.shape}"
        return info
    n, c = offsets.shape[1], logits.shape[2]
    info.num_priors, info.num_classes = int(n), int(c)
    # score tail
    st = subgraph(model, {info.logits_tensor: list(logits.shape)}, [info.scores_output])
    probe = (rng.standard_normal(logits.shape) * 4).astype(np.float32)
    got = run_onnx_tensors(st, {info.logits_tensor: probe}, [info.scores_output])[0]
    ref = softmax(probe) if info.score_fn == "softmax" else sigmoid(probe)
    info.score_error = float(np.max(np.abs(got - ref)))
    # box tail
    bt = subgraph(model, {info.offsets_tensor: list(offsets.shape)}, [info.boxes_output])

    def tail(loc):
        return run_onnx_tensors(bt, {info.offsets_tensor: loc.astype(np.float32)}, [info.boxes_output])[0][0]

    zero = np.zeros(offsets.shape, np.float32)
    b0 = tail(zero)
    pri = np.concatenate([(b0[:, :2] + b0[:, 2:]) / 2, b0[:, 2:] - b0[:, :2]], axis=1).astype(np.float32)
    if not np.all(pri[:, 2:] > 0):
        info.recognised, info.reason = False, "decoded zero offsets do not give positive prior sizes"
        return info
    one = zero.copy()
    one[..., 0] = 1.0
    one[..., 2] = 1.0
    b1 = tail(one)
    c1 = (b1[:, :2] + b1[:, 2:]) / 2
    w1 = b1[:, 2] - b1[:, 0]
    cv = float(np.median((c1[:, 0] - pri[:, 0]) / pri[:, 2]))
    sv = float(np.median(np.log(w1 / pri[:, 2])))
    info.center_variance, info.size_variance = round(cv, 6), round(sv, 6)
    probe = (rng.standard_normal(offsets.shape) * 1.5).astype(np.float32)
    got = tail(probe)
    ref = decode_boxes(probe[0], pri, info.center_variance, info.size_variance)
    info.decode_error = float(np.max(np.abs(got - ref)))
    info.priors = pri
    if info.decode_error > 1e-4 or info.score_error > 1e-5:
        info.recognised = False
        info.reason = (f"the graph's tail is not a standard SSD decode (host decode error "
                       f"{info.decode_error:.2g}, score error {info.score_error:.2g})")
    return info


def compare_priors_to_spec(priors: np.ndarray, width: int, height: int, specs=MOBILENET_SSD_SPECS) -> float | None:
    try:
        ref = generate_priors(specs, (width, height) if width != height else width)
    except Exception:
        return None
    if ref.shape != priors.shape:
        return None
    return float(np.max(np.abs(ref - priors)))


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


def inspect_model(path, input_shape: list[int] | None = None, prove: bool = True) -> ModelInfo:
    """Everything :command:`edge-ssd inspect` reports. ``input_shape`` fixes dynamic input dims (NCHW)."""
    return load_and_inspect(path, input_shape, prove)[1]


def load_and_inspect(path, input_shape: list[int] | None = None, prove: bool = True):
    """(model with a static input shape, :class:`ModelInfo`)."""
    model = load_onnx(path)
    model = fix_input_shape(model, path, input_shape)
    ins = real_inputs(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    n_init_inputs = len(model.graph.input) - len(ins)
    info = ModelInfo(
        path=str(path), opset=int(opset), ir_version=int(model.ir_version), producer=model.producer_name,
        inputs=[_vi(i) for i in ins], outputs=[_vi(o) for o in model.graph.output],
        initializers_as_inputs=n_init_inputs, labels=read_labels_metadata(model),
        normalization={"mean": list(IMAGE_MEAN), "std": [IMAGE_STD] * 3, "preset": "pytorch-ssd (x-127)/128"},
        tail=find_tail(model), metadata={p.key: p.value[:200] for p in model.metadata_props},
    )
    if prove and info.tail.recognised:
        prove_tail(model, info.tail, ins[0].name, info.inputs[0].shape)
        if info.tail.priors is not None:
            h, w = info.input_hw()
            err = compare_priors_to_spec(info.tail.priors, w, h)
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
        raise UserError(f"{path}: input `{ti.name}` has shape {ti.shape}; expected an NCHW image input "
                        "like 1x3x300x300")
    dims = ins[0].type.tensor_type.shape.dim
    if input_shape is not None:
        if len(input_shape) != 4:
            raise UserError(f"--input-shape {input_shape}: give four numbers N,C,H,W, e.g. 1,3,300,300")
        for d, v in zip(dims, input_shape, strict=True):
            d.Clear()
            d.dim_value = int(v)
        return model
    if isinstance(ti.shape[0], str):
        dims[0].Clear()
        dims[0].dim_value = 1
    if any(isinstance(s, str) for s in ti.shape[1:]):
        raise UserError(f"{path}: input `{ti.name}` has a dynamic shape {ti.shape}; pass --input-shape "
                        "1,3,H,W (e.g. 1,3,300,300) or export with a fixed size")
    return model


def format_info(info: ModelInfo) -> str:
    t = info.tail
    lines = [
        f"model:        {info.path}",
        f"opset:        {info.opset} (ir {info.ir_version}, producer {info.producer or '?'})",
        f"input:        {info.input.name} {info.input.shape} {info.input.dtype}"
        + (f"  ({info.initializers_as_inputs} initializers also listed as graph inputs, ignored)"
           if info.initializers_as_inputs else ""),
    ]
    for o in info.outputs:
        lines.append(f"output:       {o.name} {o.shape} {o.dtype}")
    lines.append(f"normalise:    {info.normalization['preset']} (mean {info.normalization['mean']}, "
                 f"std {info.normalization['std']}; change with --mean/--std)")
    lines.append(f"labels:       {info.labels if info.labels else 'none in metadata (pass --labels FILE)'}")
    if t.recognised:
        lines += [
            "tail:         recognised SSD post-processing (cut here for int8; runs in float on the host)",
            f"  scores:     {t.scores_output} = {t.score_fn}({t.logits_tensor})  [host error {t.score_error:.1e}]",
            f"  boxes:      {t.boxes_output} = decode({t.offsets_tensor}, priors)  [host error {t.decode_error:.1e}]",
            f"  priors:     {t.num_priors} (center form, read from the graph), classes: {t.num_classes}",
            f"  variances:  center {t.center_variance}, size {t.size_variance}",
            f"  heads:      {len(t.logits_parts or [1])} class + {len(t.offsets_parts or [1])} box outputs "
            + ("concatenated in the graph: the int8 model outputs each head (own scale), the host concatenates"
               if t.logits_parts or t.offsets_parts else "(no per-head Concat found: cut at the tail's inputs)"),
            "  SSDSpec:    " + ("priors match the seed's MobileNet-SSD spec" if t.priors_match_spec
                               else "priors differ from the seed's MobileNet-SSD spec (the graph's are used)"),
        ]
    else:
        lines.append(f"tail:         NOT recognised: {t.reason}")
    return "\n".join(lines)
