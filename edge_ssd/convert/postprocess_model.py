"""The standard TFLite detection model: ``<bundle>/model_postprocess.tflite``.

Frigate's TFLite and Edge TPU detectors, pycoral's ``adapters/detect.py``, picamera2's examples, Viseron and DOODS2
read one kind of detection model: a graph ending in the ``TFLite_Detection_PostProcess`` custom op with four float
outputs, in this order: boxes ``[1, K, 4]`` (ymin, xmin, ymax, xmax in 0..1), classes ``[1, K]`` (0-based, without
background), scores ``[1, K]`` and count ``[1]``. This module appends that tail to a bundle's int8 body by editing
its flatbuffer (the object API of the TFLite schema that ships with ``ai-edge-litert``):

* input: the raw RGB pixel as uint8. When the bundle's normalisation is one ``(x - mean) / std`` with an integer
  mean (``(x - 127) / 128`` is exactly uint8 with scale 1/128 and zero point 127), a QUANTIZE to the body's int8
  input (a pure zero-point shift when the scales agree; the Edge TPU maps it); otherwise (``(x - 127.5) / 127.5``,
  per-channel ImageNet statistics) the device's own 256-entry table per channel (CAST, ADD, GATHER), bit-exact,
  except for the Edge TPU with one mean and std for all channels, where the QUANTIZE rounds the mean;
* each head output: DEQUANTIZE, CONCATENATION along the priors axis in float;
* scores: SOFTMAX or LOGISTIC (the bundle's score function); the background column first (the op drops it);
* offsets: a GATHER into the op's (ty, tx, th, tw) order; priors as anchors (ycenter, xcenter, h, w); scales from
  the variances (1/0.1, 1/0.2 for pytorch-ssd);
* pytorch-ssd's ``candidate_size`` (only the 200 best priors of a class enter NMS): scores below each class's
  200th best are zeroed (TOPK_V2 and a mask), which the op itself cannot express;
* ``TFLite_Detection_PostProcess`` with regular (per-class) NMS, as pytorch-ssd does.

Nothing of the body is changed, so on the same pixels the body computes exactly what the bundle computes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DependencyError, UserError
from ..model.bundle import BundleError, Manifest, load_manifest

log = logging.getLogger(__name__)

POSTPROCESS_FILE = "model_postprocess.tflite"
LABELMAP_FILE = "labelmap.txt"
CUSTOM_OP = "TFLite_Detection_PostProcess"
OUTPUT_NAMES = (CUSTOM_OP, f"{CUSTOM_OP}:1", f"{CUSTOM_OP}:2", f"{CUSTOM_OP}:3")  # as TF's exporter names them
# the ops this module appends (the Edge TPU compiler leaves them on the CPU: float, or custom)
TAIL_OPS = ("CAST", "ADD", "DEQUANTIZE", "CONCATENATION", "SOFTMAX", "LOGISTIC", "GATHER", "RESHAPE", "TRANSPOSE",
            "TOPK_V2", "SLICE", "GREATER_EQUAL", "MUL", CUSTOM_OP, "CUSTOM")


@dataclass
class PostprocessOptions:
    """Parameters of the ``TFLite_Detection_PostProcess`` op. ``score_threshold``: the op's
    ``nms_score_threshold``; lower than the bundle's so that Frigate's and pycoral's own thresholds decide (greedy
    NMS never lets a lower-scoring box suppress a higher one, so detections above the bundle's threshold are the
    same). ``iou_threshold`` None: the bundle's; ``detections_per_class`` None: the bundle's ``candidate_size``
    (pytorch-ssd keeps at most that many per class). ``max_detections``: TF's exporter uses 100, Frigate reads the
    first 20; 200 keeps a crowd of faces whole."""

    max_detections: int = 200
    detections_per_class: int | None = None
    score_threshold: float = 0.3
    iou_threshold: float | None = None
    use_regular_nms: bool = True
    candidate_size: int | None = None  # None: the bundle's; 0: no cap before NMS (the op's own behaviour)


@dataclass
class PostprocessModel:
    """What was written: the file, its input contract and the op's options."""

    path: Path
    input_dtype: str
    input_scale: float | None
    input_zero_point: int | None
    input_exact: bool  # the uint8 input reproduces the bundle's normalisation exactly
    input_note: str
    num_classes: int  # without background
    op_options: dict
    appended_ops: list[str] = field(default_factory=list)
    labelmap: Path | None = None

    def to_json(self) -> dict:
        return {"file": self.path.name, "input_dtype": self.input_dtype, "input_scale": self.input_scale,
                "input_zero_point": self.input_zero_point, "input_exact": self.input_exact,
                "input_note": self.input_note, "num_classes": self.num_classes, "op_options": self.op_options,
                "appended_ops": self.appended_ops,
                "labelmap": self.labelmap.name if self.labelmap else None,
                "outputs": ["boxes (ymin, xmin, ymax, xmax)", "classes (0-based, no background)", "scores",
                            "count"]}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as s
    except ImportError:
        raise DependencyError("the TFLite schema of ai-edge-litert is missing; `pip install ai-edge-litert` "
                              "(>= 1.0) to write the post-process model") from None
    return s


class _Graph:
    """Append-only editing of subgraph 0 of a TFLite model (object API)."""

    def __init__(self, buf: bytes):
        self.s = s = _schema()
        self.model = s.ModelT.InitFromObj(s.Model.GetRootAs(buf, 0))
        if len(self.model.subgraphs or []) != 1:
            raise UserError("the bundle's model.tflite has more than one subgraph; re-run `edge-ssd convert`")
        self.sg = self.model.subgraphs[0]
        self.appended: list[str] = []

    def tensor_index(self, name: str) -> int:
        for i, t in enumerate(self.sg.tensors):
            n = t.name.decode() if isinstance(t.name, bytes) else t.name
            if n == name:
                return i
        raise UserError(f"tensor {name!r} named in the manifest is not in model.tflite; copy the whole bundle "
                        "again or re-run `edge-ssd convert`")

    def tensor(self, i: int):
        return self.sg.tensors[i]

    def add_tensor(self, name: str, shape, dtype: int, data: np.ndarray | None = None,
                   scale: float | None = None, zero_point: int | None = None) -> int:
        s = self.s
        buf = s.BufferT()
        if data is not None:
            buf.data = np.ascontiguousarray(data).tobytes()
        self.model.buffers.append(buf)
        t = s.TensorT()
        t.name, t.shape, t.type = name, [int(v) for v in shape], dtype
        t.buffer = len(self.model.buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [float(scale)], [int(zero_point or 0)]
            t.quantization = q
        self.sg.tensors.append(t)
        return len(self.sg.tensors) - 1

    def _opcode(self, builtin: int, custom: str | None = None, version: int = 1) -> int:
        for i, oc in enumerate(self.model.operatorCodes):
            code = max(oc.builtinCode, oc.deprecatedBuiltinCode)
            cc = oc.customCode.decode() if isinstance(oc.customCode, bytes) else oc.customCode
            if code == builtin and cc == custom and oc.version == version:
                return i
        oc = self.s.OperatorCodeT()
        oc.builtinCode = builtin
        oc.deprecatedBuiltinCode = min(builtin, 127)
        oc.customCode, oc.version = custom, version
        self.model.operatorCodes.append(oc)
        return len(self.model.operatorCodes) - 1

    def add_op(self, name: str, inputs: list[int], outputs: list[int], *, version: int = 1, options=None,
               options_type: int = 0, custom: str | None = None, custom_options: bytes | None = None,
               first: bool = False) -> None:
        s = self.s
        op = s.OperatorT()
        code = s.BuiltinOperator.CUSTOM if custom else getattr(s.BuiltinOperator, name)
        op.opcodeIndex = self._opcode(code, custom, version)
        op.inputs, op.outputs = list(inputs), list(outputs)
        if options is not None:
            op.builtinOptionsType, op.builtinOptions = options_type, options
        if custom_options is not None:
            op.customOptions = list(custom_options)
            op.customOptionsFormat = s.CustomOptionsFormat.FLEXBUFFERS
        if first:  # ``appended`` lists the ops in execution order
            self.sg.operators.insert(0, op)
            self.appended.insert(0, custom or name)
        else:
            self.sg.operators.append(op)
            self.appended.append(custom or name)

    def serialize(self) -> bytes:
        """The model as a .tflite: every buffer's data 16-byte aligned, as TFLite's schema asks (``force_align:
        16``; the Python generator ignores it), so kernels may read constants in place on any CPU."""
        import flatbuffers

        s = self.s
        for buf in self.model.buffers:
            buf.__class__ = _aligned_buffer_class(s)
        b = flatbuffers.Builder(1 << 20)
        b.Finish(self.model.Pack(b), file_identifier=b"TFL3")
        return bytes(b.Output())


def _aligned_buffer_class(s):
    """A ``BufferT`` whose ``Pack`` writes its bytes as a 16-byte aligned vector."""

    class AlignedBuffer(s.BufferT):
        def Pack(self, builder):  # noqa: N802 (the flatbuffers object API's name)
            data = None
            if self.data is not None:
                d = self.data
                payload = bytes(d) if isinstance(d, (bytes, bytearray)) else np.asarray(d, np.uint8).tobytes()
                builder.StartVector(1, len(payload), 16)
                builder.head -= len(payload)
                builder.Bytes[builder.head:builder.head + len(payload)] = payload
                builder.vectorNumElems = len(payload)
                data = builder.EndVector()
            s.BufferStart(builder)
            if data is not None:
                s.BufferAddData(builder, data)
            s.BufferAddOffset(builder, self.offset)
            s.BufferAddSize(builder, self.size)
            return s.BufferEnd(builder)

    return AlignedBuffer


def tail_params(m: Manifest) -> dict:
    """The tail as the op needs it: anchors (N, 4) as (ycenter, xcenter, h, w), scales (y, x, h, w), the positions
    of (ty, tx, th, tw) in the regression head's output, the background column and the score function."""
    pp = m.postprocess
    if pp.box_encoding != "offsets":
        raise UserError(f"the bundle's boxes are {pp.box_encoding!r}, not raw offsets; the post-process model needs "
                        "the offsets and priors (re-run `edge-ssd convert` on the source ONNX)")
    pri = m.priors_array()
    if pri is None:
        raise UserError("the bundle's manifest has no priors; re-run `edge-ssd convert`")
    op_tokens = ("cy", "cx", "h", "w")  # the op's (ty, tx, th, tw) and anchors (ycenter, xcenter, h, w)
    layout = pp.prior_layout.split(",")
    anchors = np.ascontiguousarray(pri[:, [layout.index(t) for t in op_tokens]].astype(np.float32))
    offsets = pp.offset_order.split(",")
    order = [offsets.index(t) for t in op_tokens]
    var = dict(zip(offsets, pp.variances_in_offset_order(), strict=True))
    return {"anchors": anchors, "scales": tuple(1.0 / var[t] for t in op_tokens), "order": order,
            "background": pp.background_class, "score_fn": pp.score_fn, "num_columns": len(m.labels),
            "iou_threshold": float(pp.iou_threshold), "candidate_size": int(pp.candidate_size)}


def _flex_options(opts: PostprocessOptions, num_classes: int, scales, iou: float, per_class: int) -> tuple[bytes, dict]:
    from flatbuffers import flexbuffers

    d = {"max_detections": int(opts.max_detections), "max_classes_per_detection": 1,
         "detections_per_class": int(per_class), "use_regular_nms": bool(opts.use_regular_nms),
         "nms_score_threshold": float(opts.score_threshold), "nms_iou_threshold": float(iou),
         "num_classes": int(num_classes), "y_scale": float(scales[0]), "x_scale": float(scales[1]),
         "h_scale": float(scales[2]), "w_scale": float(scales[3])}
    fbb = flexbuffers.Builder()
    with fbb.Map():
        for k, v in d.items():
            if isinstance(v, bool):
                fbb.Bool(k, v)
            elif isinstance(v, int):
                fbb.Int(k, v)
            else:
                fbb.Float(k, v)
    return bytes(fbb.Finish()), d


def _float_head(g: _Graph, names: list[str], label: str) -> int:
    """DEQUANTIZE each head part, CONCATENATION along the priors axis: the float [1, N, K] tensor."""
    s = g.s
    parts = []
    for n in names:
        i = g.tensor_index(n)
        t = g.tensor(i)
        shape = list(t.shape)
        if len(shape) != 3:
            raise UserError(f"head output {n!r} has shape {shape}, expected [1, priors, k]; re-run `edge-ssd "
                            "convert`")
        if t.type in (s.TensorType.INT8, s.TensorType.UINT8):
            f = g.add_tensor(f"{label}/dequant/{n}", shape, s.TensorType.FLOAT32)
            g.add_op("DEQUANTIZE", [i], [f], version=2 if t.type == s.TensorType.INT8 else 1)
            i = f
        parts.append(i)
    if len(parts) == 1:
        return parts[0]
    n_total = sum(g.tensor(i).shape[1] for i in parts)
    k = g.tensor(parts[0]).shape[2]
    out = g.add_tensor(f"{label}/concat", [1, n_total, k], s.TensorType.FLOAT32)
    o = s.ConcatenationOptionsT()
    o.axis = 1
    g.add_op("CONCATENATION", parts, [out], options=o, options_type=s.BuiltinOptions.ConcatenationOptions)
    return out


def _gather(g: _Graph, src: int, indices: list[int], name: str) -> int:
    s = g.s
    shape = list(g.tensor(src).shape)
    idx = g.add_tensor(f"{name}/indices", [len(indices)], s.TensorType.INT32, np.asarray(indices, np.int32))
    out = g.add_tensor(name, shape[:-1] + [len(indices)], s.TensorType.FLOAT32)
    o = s.GatherOptionsT()
    o.axis = len(shape) - 1
    g.add_op("GATHER", [src, idx], [out], options=o, options_type=s.BuiltinOptions.GatherOptions)
    return out


def _class_scores(g: _Graph, logits: int, score_fn: str, background: int | None, ncol: int) -> tuple[int, int]:
    """Probabilities with the background (if any) as column 0; returns (tensor, classes without background)."""
    s = g.s
    shape = list(g.tensor(logits).shape)
    if score_fn == "softmax":
        out = g.add_tensor("scores/softmax", shape, s.TensorType.FLOAT32)
        o = s.SoftmaxOptionsT()
        o.beta = 1.0
        g.add_op("SOFTMAX", [logits], [out], options=o, options_type=s.BuiltinOptions.SoftmaxOptions)
    elif score_fn == "sigmoid":
        out = g.add_tensor("scores/sigmoid", shape, s.TensorType.FLOAT32)
        g.add_op("LOGISTIC", [logits], [out])
    else:
        out = logits
    if background is None or not 0 <= background < ncol:
        return out, ncol
    if background != 0:  # the op drops column 0 only
        out = _gather(g, out, [background] + [c for c in range(ncol) if c != background], "scores/background_first")
    return out, ncol - 1


def _const(g: _Graph, name: str, values, dtype=np.int32) -> int:
    a = np.asarray(values, dtype)
    code = g.s.TensorType.INT32 if a.dtype == np.int32 else g.s.TensorType.FLOAT32
    return g.add_tensor(name, list(a.shape), code, a)


def _candidate_cap(g: _Graph, probs: int, k: int) -> int:
    """pytorch-ssd's ``candidate_size``: per class only the ``k`` best priors enter NMS. The op has no such cap,
    so scores below each class's k-th best are zeroed first (TRANSPOSE, TOPK_V2, SLICE, GREATER_EQUAL, MUL)."""
    s = g.s
    _, n, c = (int(v) for v in g.tensor(probs).shape)
    if k <= 0 or k >= n:
        return probs
    f32 = s.TensorType.FLOAT32
    pt = g.add_tensor("scores/cap/transposed", [1, c, n], f32)
    g.add_op("TRANSPOSE", [probs, _const(g, "scores/cap/perm", [0, 2, 1])], [pt], options=s.TransposeOptionsT(),
             options_type=s.BuiltinOptions.TransposeOptions)
    vals = g.add_tensor("scores/cap/topk_values", [1, c, k], f32)
    idx = g.add_tensor("scores/cap/topk_indices", [1, c, k], s.TensorType.INT32)
    g.add_op("TOPK_V2", [pt, _const(g, "scores/cap/k", k)], [vals, idx], options=s.TopKV2OptionsT(),
             options_type=s.BuiltinOptions.TopKV2Options)
    kth = g.add_tensor("scores/cap/kth", [1, c, 1], f32)
    g.add_op("SLICE", [vals, _const(g, "scores/cap/begin", [0, 0, k - 1]), _const(g, "scores/cap/size", [1, c, 1])],
             [kth], options=s.SliceOptionsT(), options_type=s.BuiltinOptions.SliceOptions)
    kth_row = g.add_tensor("scores/cap/kth_row", [1, 1, c], f32)
    ro = s.ReshapeOptionsT()
    ro.newShape = [1, 1, c]
    g.add_op("RESHAPE", [kth, _const(g, "scores/cap/row_shape", [1, 1, c])], [kth_row], options=ro,
             options_type=s.BuiltinOptions.ReshapeOptions)
    keep = g.add_tensor("scores/cap/keep", [1, n, c], s.TensorType.BOOL)
    g.add_op("GREATER_EQUAL", [probs, kth_row], [keep], options=s.GreaterEqualOptionsT(),
             options_type=s.BuiltinOptions.GreaterEqualOptions)
    keep_f = g.add_tensor("scores/cap/keep_float", [1, n, c], f32)
    co = s.CastOptionsT()
    co.inDataType, co.outDataType = s.TensorType.BOOL, f32
    g.add_op("CAST", [keep], [keep_f], options=co, options_type=s.BuiltinOptions.CastOptions)
    out = g.add_tensor("scores/capped", [1, n, c], f32)
    g.add_op("MUL", [probs, keep_f], [out], options=s.MulOptionsT(), options_type=s.BuiltinOptions.MulOptions)
    return out


def _raw_input(g: _Graph, m: Manifest) -> tuple[str, float | None, int | None, bool, str]:
    """Put a uint8 raw-pixel input in front of the body: a QUANTIZE when one ``(x - mean) / std`` with an integer
    mean covers all channels (exact, and mapped by the Edge TPU), else the bundle's own 256-entry table."""
    s = g.s
    i_in = g.sg.inputs[0]
    t = g.tensor(i_in)
    mean, std = m.input.mean, m.input.std
    if m.input.layout != "NHWC" or m.input.color != "RGB":
        return _dtype(s, t), *_quant(t), False, "body input kept (not NHWC RGB)"
    mu, sd = float(mean[0]), float(std[0])
    zp = int(round(mu))
    uniform = len(set(mean)) == 1 and len(set(std)) == 1
    exact = uniform and abs(mu - zp) < 1e-6 and 0 <= zp <= 255
    int_body = t.type in (s.TensorType.INT8, s.TensorType.UINT8)
    if int_body and not exact and not (uniform and m.target == "edgetpu"):
        return _lut_input(g, m, i_in)
    scale = 1.0 / sd
    q_in = _quant(t)
    if t.type == s.TensorType.INT8 and q_in[0] and abs(q_in[0] * sd - 1.0) < 1e-4:
        scale = q_in[0]  # the body's own scale: the QUANTIZE below is a pure zero-point shift
    note = ("raw RGB pixels: uint8 with scale 1/std and zero point mean reproduce (x - mean) / std exactly" if exact
            else f"raw RGB pixels: uint8 zero point {zp} approximates mean {mu} (error {abs(mu - zp) / sd:.2g} "
                 "in normalised units; kept for the Edge TPU, which maps the QUANTIZE)")
    new = g.add_tensor("image", list(t.shape), s.TensorType.UINT8, scale=scale, zero_point=zp)
    if int_body:
        g.add_op("QUANTIZE", [new], [i_in], version=2, first=True)
    else:
        g.add_op("DEQUANTIZE", [new], [i_in], version=1, first=True)
    g.sg.inputs = [new]
    return "uint8", scale, zp, exact, note


def _lut_input(g: _Graph, m: Manifest, i_in: int) -> tuple[str, float, int, bool, str]:
    """uint8 raw pixels through the table the device itself uses (:func:`~edge_ssd.model.preprocess.input_lut`:
    normalisation and quantisation per channel folded into 256 entries): CAST to int32, ADD the channel's offset
    into the flattened (3 x 256) table, GATHER. Bit-exact to the bundle for any normalisation."""
    from ..model.preprocess import Normalization, input_lut

    s = g.s
    t = g.tensor(i_in)
    q_scale, q_zp = _quant(t)
    dtype = np.int8 if t.type == s.TensorType.INT8 else np.uint8
    table = input_lut(Normalization(tuple(m.input.mean), tuple(m.input.std)), q_scale, q_zp, dtype=dtype)
    shape = list(t.shape)
    lut = g.add_tensor("image/table", [table.size], t.type, table.reshape(-1), scale=q_scale, zero_point=q_zp)
    offsets = _const(g, "image/channel_offsets", np.arange(3, dtype=np.int32) * 256)
    new = g.add_tensor("image", shape, s.TensorType.UINT8, scale=1.0, zero_point=0)
    as_int = g.add_tensor("image/int32", shape, s.TensorType.INT32)
    idx = g.add_tensor("image/table_index", shape, s.TensorType.INT32)
    go = s.GatherOptionsT()
    go.axis = 0
    co = s.CastOptionsT()
    co.inDataType, co.outDataType = s.TensorType.UINT8, s.TensorType.INT32
    # inserted at the front in reverse: CAST, ADD, GATHER run first
    g.add_op("GATHER", [lut, idx], [i_in], version=2 if dtype == np.int8 else 1, options=go,
             options_type=s.BuiltinOptions.GatherOptions, first=True)
    g.add_op("ADD", [as_int, offsets], [idx], options=s.AddOptionsT(), options_type=s.BuiltinOptions.AddOptions,
             first=True)
    g.add_op("CAST", [new], [as_int], options=co, options_type=s.BuiltinOptions.CastOptions, first=True)
    g.sg.inputs = [new]
    return ("uint8", 1.0, 0, True,
            f"raw RGB pixels through the bundle's own 256-entry table per channel (mean {list(m.input.mean)}, std "
            f"{list(m.input.std)} have no exact uint8 quantisation): CAST, ADD, GATHER, bit-exact to the bundle")


def _dtype(s, t) -> str:
    return {s.TensorType.INT8: "int8", s.TensorType.UINT8: "uint8", s.TensorType.FLOAT32: "float32"}.get(t.type, "?")


def _quant(t) -> tuple[float | None, int | None]:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return None, None
    return float(q.scale[0]), int(q.zeroPoint[0])


def write_labelmap(path: Path, labels: list[str], background: int | None) -> Path:
    """``id name`` per class without background: the format Frigate's ``labelmap_path`` and pycoral's
    ``read_label_file`` read."""
    names = [n for i, n in enumerate(labels) if i != background]
    path.write_text("".join(f"{i} {n}\n" for i, n in enumerate(names)))
    return path


def build_postprocess_model(bundle_dir, out_path=None, options: PostprocessOptions | None = None,
                            body_path=None) -> PostprocessModel:
    """Write ``<bundle>/model_postprocess.tflite`` (and ``labelmap.txt``) from a bundle's int8 body."""
    opts = options or PostprocessOptions()
    bundle_dir = Path(bundle_dir)
    try:
        m, model_path = load_manifest(bundle_dir)
    except BundleError as e:
        raise UserError(str(e)) from None
    body = Path(body_path) if body_path else model_path
    out = Path(out_path) if out_path else bundle_dir / POSTPROCESS_FILE
    tp = tail_params(m)
    g = _Graph(body.read_bytes())
    s = g.s
    in_dtype, in_scale, in_zp, exact, note = _raw_input(g, m)
    logits = _float_head(g, m.scores.tensor_names(), "scores")
    offsets = _float_head(g, m.boxes.tensor_names(), "boxes")
    n = g.tensor(logits).shape[1]
    if g.tensor(offsets).shape[1] != n or tp["anchors"].shape[0] != n:
        raise UserError(f"scores ({n}), boxes ({g.tensor(offsets).shape[1]}) and priors ({tp['anchors'].shape[0]}) "
                        "disagree in the bundle; re-run `edge-ssd convert`")
    probs, num_classes = _class_scores(g, logits, tp["score_fn"], tp["background"], g.tensor(logits).shape[2])
    cap = opts.candidate_size if opts.candidate_size is not None else tp["candidate_size"]
    probs = _candidate_cap(g, probs, cap)
    enc = offsets if tp["order"] == [0, 1, 2, 3] else _gather(g, offsets, tp["order"], "boxes/tytxthtw")
    anchors = g.add_tensor("anchors", [n, 4], s.TensorType.FLOAT32, tp["anchors"])
    iou = opts.iou_threshold if opts.iou_threshold is not None else tp["iou_threshold"]
    per_class = opts.detections_per_class or (tp["candidate_size"] if tp["candidate_size"] > 0 else opts.max_detections)
    flex, op_opts = _flex_options(opts, num_classes, tp["scales"], iou, per_class)
    k = int(opts.max_detections)
    outs = [g.add_tensor(OUTPUT_NAMES[0], [1, k, 4], s.TensorType.FLOAT32),
            g.add_tensor(OUTPUT_NAMES[1], [1, k], s.TensorType.FLOAT32),
            g.add_tensor(OUTPUT_NAMES[2], [1, k], s.TensorType.FLOAT32),
            g.add_tensor(OUTPUT_NAMES[3], [1], s.TensorType.FLOAT32)]
    g.add_op("CUSTOM", [enc, probs, anchors], outs, custom=CUSTOM_OP, custom_options=flex)
    g.sg.outputs = outs
    # signatures name the body's outputs; pycoral and Frigate read outputs by position, which these drop to
    g.model.signatureDefs = []
    g.model.description = "edge-ssd: int8 SSD body + TFLite_Detection_PostProcess"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(g.serialize())
    tmp.replace(out)
    lm = write_labelmap(out.parent / LABELMAP_FILE, m.labels, tp["background"])
    log.info("wrote %s (%d classes, input %s)", out, num_classes, in_dtype)
    return PostprocessModel(out, in_dtype, in_scale, in_zp, exact, note, num_classes, op_opts, g.appended, lm)


def add_postprocess_model(bundle_dir, onnx, images, *, target: str = "cpu", allow_cpu_ops: bool = False,
                          score_threshold: float = 0.5, options: PostprocessOptions | None = None) -> dict:
    """``convert --postprocess-model``: write the model, validate it as its consumers read it and, for the Edge
    TPU, compile it. The result goes into the conversion report; ``ok`` False carries ``failure``."""
    from .edgetpu import compile_for_edgetpu
    from .postprocess_check import validate_postprocess_model

    pm = build_postprocess_model(bundle_dir, options=options)
    res = pm.to_json()
    v = validate_postprocess_model(pm.path, bundle_dir, onnx, images, score_threshold=score_threshold,
                                   exact_input=pm.input_exact)
    res["validation"] = v
    res["ok"] = bool(v["ok"])
    if not v["ok"] and pm.input_exact:
        res["failure"] = (f"{POSTPROCESS_FILE} agrees with the bundle at F1 {v['vs_bundle']['f1']:.3f} < "
                          f"{v['min_bundle_f1']}; please report it with the report.json")
    elif not v["ok"]:
        res["failure"] = (f"{POSTPROCESS_FILE} (approximated uint8 input: {pm.input_note}) agrees with the ONNX model "
                          f"at F1 {v['vs_onnx']['f1']:.3f}, the bundle at {v['bundle_vs_onnx']['f1']:.3f}; convert "
                          "for --target cpu (exact input table) or check the normalisation")
    if target == "edgetpu":
        tail = [n for n in pm.appended_ops if n != "QUANTIZE"]  # the input QUANTIZE must map to the TPU
        e = compile_for_edgetpu(pm.path, Path(bundle_dir), tail_ops=tail, allow_cpu_ops=allow_cpu_ops)
        res["edgetpu"] = e
        if e.get("ok") is False and res["ok"]:
            res.update(ok=False, failure=e["failure"])
    return res
