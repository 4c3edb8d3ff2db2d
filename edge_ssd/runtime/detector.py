"""The detector: a model plus everything needed to turn a BGR frame into :class:`Detections`.

``load_detector(path)`` accepts

* a bundle directory (``manifest.json`` + ``model.tflite``, written by ``edge-ssd convert``): everything comes
  from the manifest (output names, normalisation, priors, score function, box encoding, thresholds, labels);
* an ``.onnx`` model: outputs read as the tail ``edge-ssd inspect`` proves for it when the converter extras are
  installed (TF OD API graphs: sliced sigmoid scores, ymin-first boxes, the graph's own normalisation), else the
  pytorch-ssd contract (input 1x3xHxW float, outputs ``scores`` probabilities and ``boxes`` corners);
* a bare ``.tflite``: assumed to follow the pytorch-ssd contract, outputs identified by their shape (a warning
  says so).

Labels come from :func:`edge_ssd.model.labels.resolve_labels` (``labels=``, the model's metadata, the bundle's
manifest, ``<stem>-labels.txt`` / ``<stem>.txt`` beside the model, else ``class1...`` with a warning).

The work is split in three stages so the pipeline can run them on separate threads and the benchmark can
time them: ``preprocess(bgr, out=None)`` (resize + colour conversion + one lookup table that folds
normalisation and input quantisation, into a preallocated buffer), ``infer(tensor)`` (raw outputs, dequantised
to float32 from the tensors' own parameters), ``postprocess(raw)`` (score function, box decoding, NMS).
Everything that does not depend on the frame (tables, priors, buffers) is computed once at load time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..model import box as boxlib
from ..model.bundle import BundleError, is_bundle, load_manifest
from ..model.labels import resolve_labels
from ..model.preprocess import Normalization, input_lut, value_table
from .backends import Backend, TensorInfo, open_backend
from .onnx import identify_outputs

log = logging.getLogger(__name__)

DEFAULT_SCORE_THRESHOLD = 0.5
OUTPUTS_META_KEY = "edge_ssd.outputs"  # edge-ssd's own exports: the pytorch-ssd contract, nothing to prove


@dataclass
class PostprocessConfig:
    score_fn: str = "none"
    box_encoding: str = "corners"
    priors: np.ndarray | None = None
    center_variance: float = 0.1
    size_variance: float = 0.2
    background: int | None = 0
    iou_threshold: float = 0.45
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    candidate_size: int = 200
    top_k: int = -1
    # the family's layout of offsets, priors and corners (bundle.Postprocess's orders; default pytorch-ssd)
    coding: boxlib.BoxCoding = field(default_factory=boxlib.BoxCoding)
    # the scores output starts at this logit column (a source graph that slices its background column off):
    # the host puts the columns back, as NaN (never a candidate, not compared), so class ids match the labels
    score_offset: int = 0
    num_classes: int | None = None  # every logit column, when score_offset pads (None: the output's own)

    @classmethod
    def from_manifest(cls, pp) -> PostprocessConfig:
        """From a :class:`edge_ssd.model.bundle.Postprocess`."""
        coding = boxlib.BoxCoding(offset_order=pp.offset_order, variances=tuple(pp.variances_in_offset_order()),
                                  prior_layout=pp.prior_layout, box_order=pp.box_order)
        priors = None if pp.priors is None else np.asarray(pp.priors, dtype=np.float32).reshape(-1, 4)
        return cls(score_fn=pp.score_fn, box_encoding=pp.box_encoding, priors=priors,
                   center_variance=pp.center_variance, size_variance=pp.size_variance, background=pp.background_class,
                   iou_threshold=pp.iou_threshold, score_threshold=pp.score_threshold,
                   candidate_size=pp.candidate_size, top_k=pp.top_k, coding=coding)


@dataclass
class InputConfig:
    width: int
    height: int
    layout: str = "NHWC"  # of the model's input tensor
    color: str = "RGB"
    norm: Normalization = field(default_factory=Normalization)


class Detector:
    """A loaded model with its pre- and postprocessing. Not thread-safe per stage: run each stage from one
    thread at a time (the pipeline does); ``preprocess`` may write into caller-owned buffers (``out=``)."""

    def __init__(self, backend: Backend, labels: list[str], inp: InputConfig, post: PostprocessConfig,
                 scores_name: str, boxes_name: str, name: str = "model", source_path: str = "",
                 scores_parts: list[str] | None = None, boxes_parts: list[str] | None = None,
                 labels_source: str = "list"):
        self.backend = backend
        # outputs split per SSD head (see bundle.OutputSpec.parts): concatenated on the host along the priors axis
        self._concat = [(n, list(ps)) for n, ps in ((scores_name, scores_parts), (boxes_name, boxes_parts)) if ps]
        self.labels = list(labels)
        self.labels_source = labels_source  # see edge_ssd.model.labels.Labels.source
        self.inp = inp
        self.post = post
        self.scores_name = scores_name
        self.boxes_name = boxes_name
        self.name = name
        self.path = source_path
        self.score_threshold = post.score_threshold
        info: TensorInfo = backend.input
        self.input_dtype = np.dtype(info.dtype)
        self.input_shape = tuple(info.shape)
        # one (1, 256, 3) table folding normalisation (and quantisation) per channel: cv2.LUT applies it
        if info.quantized:
            lut = input_lut(inp.norm, info.scale, info.zero_point, dtype=self.input_dtype)  # (3, 256)
        else:
            if self.input_dtype.kind in "iu":
                raise UserError(f"{source_path}: input tensor is {self.input_dtype} without quantisation "
                                "parameters; re-run `edge-ssd convert`")
            lut = value_table(inp.norm)
        self._lut_cv = np.ascontiguousarray(lut.T[None])  # (1, 256, 3)
        if self.input_dtype == np.int8:  # cv2.LUT has no int8 depth: apply on the uint8 view of the table
            self._lut_cv = self._lut_cv.view(np.uint8)
        self._h, self._w = inp.height, inp.width
        self._resized = np.empty((self._h, self._w, 3), np.uint8)
        self._rgb = np.empty((self._h, self._w, 3), np.uint8)
        self._hwc = np.empty((self._h, self._w, 3), self._lut_cv.dtype)  # scratch for NCHW models
        self._tensor = self.new_input_buffer()
        # priors in (cx, cy, w, h) once, so the per-frame decode only permutes the offsets of a family's layout
        self._priors = None
        if post.box_encoding == "offsets" and post.priors is not None:
            self._priors = post.coding.canonical_priors(post.priors)
        self._coding = None if post.coding == boxlib.BoxCoding.pytorch_ssd(post.center_variance, post.size_variance) \
            else post.coding.with_canonical_priors()

    # -- properties -------------------------------------------------------------------------------------
    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self._w, self._h

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def describe(self) -> str:
        q = f"{self.input_dtype} input" + (" (quantised)" if self.backend.input.quantized else "")
        return (f"{self.name}: {self._w}x{self._h} {q}, {len(self.labels)} labels, "
                f"backend {self.backend.describe()}")

    # -- stages ---------------------------------------------------------------------------------------
    def new_input_buffer(self) -> np.ndarray:
        """A fresh buffer shaped and typed like the model input (for the pipeline's buffer pool)."""
        return np.zeros(self.input_shape, dtype=self.input_dtype)

    def preprocess(self, bgr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """BGR uint8 frame -> model input tensor (written into ``out`` or the detector's own buffer)."""
        if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
            raise ValueError(f"expected an HxWx3 uint8 BGR frame, got {getattr(bgr, 'shape', None)}")
        out = self._tensor if out is None else out
        if bgr.shape[0] != self._h or bgr.shape[1] != self._w:
            src = cv2.resize(bgr, (self._w, self._h), dst=self._resized, interpolation=cv2.INTER_LINEAR)
        else:
            src = bgr
        if self.inp.color == "RGB":
            src = cv2.cvtColor(src, cv2.COLOR_BGR2RGB, dst=self._rgb)
        if self.inp.layout == "NHWC":
            dst = out[0]
            if dst.dtype == np.int8:
                dst = dst.view(np.uint8)
            cv2.LUT(src, self._lut_cv, dst=dst)
        else:
            cv2.LUT(src, self._lut_cv, dst=self._hwc)
            hwc = self._hwc.view(self.input_dtype) if self.input_dtype == np.int8 else self._hwc
            np.copyto(out[0], hwc.transpose(2, 0, 1))
        return out

    def infer(self, tensor: np.ndarray) -> dict[str, np.ndarray]:
        """Run the model; outputs as float32 (dequantised)."""
        raw = self.backend.run(tensor)
        for name, parts in self._concat:
            raw[name] = np.concatenate([raw[p] for p in parts], axis=1)
        return raw

    def postprocess(self, raw: dict[str, np.ndarray], score_threshold: float | None = None) -> Detections:
        p = self.post
        thr = self.score_threshold if score_threshold is None else score_threshold
        scores = raw[self.scores_name]
        if p.score_offset:
            scores = self._pad_columns(scores)
        return boxlib.postprocess(
            scores, raw[self.boxes_name], self._priors, score_fn=p.score_fn,
            center_variance=p.center_variance, size_variance=p.size_variance, iou_threshold=p.iou_threshold,
            prob_threshold=thr, candidate_size=p.candidate_size, top_k=p.top_k, background=p.background,
            coding=self._coding)

    def _pad_columns(self, scores: np.ndarray) -> np.ndarray:
        s = scores.reshape(-1, scores.shape[-1])
        k = self.post.score_offset
        out = np.full((s.shape[0], max(self.post.num_classes or 0, s.shape[1] + k)), np.nan, np.float32)
        out[:, k:k + s.shape[1]] = s
        return out

    def decode(self, raw: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Every prior's class probabilities (N, C) and corner box (N, 4), before thresholds and NMS (the tail
        :meth:`postprocess` runs, without its shortcut): what the converter compares between models."""
        p = self.post
        s, b = raw[self.scores_name], raw[self.boxes_name]
        s, b = (s[0] if s.ndim == 3 else s), (b[0] if b.ndim == 3 else b)
        if p.score_fn == "softmax":
            s = boxlib.softmax(s.astype(np.float32))
        elif p.score_fn == "sigmoid":
            s = boxlib.sigmoid(s.astype(np.float32))
        if p.score_offset:
            s = self._pad_columns(s)
        if self._priors is not None:
            if self._coding is None:
                b = boxlib.decode_boxes(b, self._priors, p.center_variance, p.size_variance)
            else:
                b = boxlib.decode(b.reshape(-1, 4), self._priors, self._coding)
        elif self._coding is not None:
            b = boxlib.to_xyxy(b, self._coding.box_order)
        return s, b

    def detect(self, bgr: np.ndarray, score_threshold: float | None = None) -> Detections:
        """Detections (normalised corner boxes, score-sorted) of one BGR frame."""
        return self.postprocess(self.infer(self.preprocess(bgr)), score_threshold)

    def __repr__(self) -> str:
        return f"Detector({self.describe()})"


Detections = boxlib.Detections


# -- loading --------------------------------------------------------------------------------------------

def _triple(v) -> tuple[float, float, float]:
    """A per-channel value (mean, std) of the manifest as the 3-tuple the preprocessing takes."""
    vals = [float(x) for x in v]
    a, b, c = vals * 3 if len(vals) == 1 else vals
    return a, b, c


def _identify_outputs(backend: Backend, path: Path, n_classes: int | None) -> tuple[str, str]:
    """Output names for (scores, boxes): by name, else by shape (see :func:`edge_ssd.runtime.onnx.identify_outputs`)."""
    return identify_outputs(_output_shapes(backend), path, n_classes)


def _output_shapes(backend: Backend) -> dict[str, tuple[int, ...]]:
    """Real output shapes after one run on zeros (TFLite can report placeholder shapes before invoking)."""
    raw = backend.run(np.zeros(backend.input.shape, dtype=backend.input.dtype))
    return {k: tuple(v.shape) for k, v in raw.items()}


def _input_config_from_tensor(info: TensorInfo, path: Path, norm: Normalization | None = None) -> InputConfig:
    shape = info.shape
    if len(shape) != 4:
        raise UserError(f"{path}: expected a 4-D image input, got shape {list(shape)}")
    if shape[-1] == 3:
        return InputConfig(width=int(shape[2]), height=int(shape[1]), layout="NHWC", norm=norm or Normalization())
    if shape[1] == 3:
        return InputConfig(width=int(shape[3]), height=int(shape[2]), layout="NCHW", norm=norm or Normalization())
    raise UserError(f"{path}: input shape {list(shape)} is neither NHWC nor NCHW with 3 channels")


def load_detector(path: str | Path, backend: str = "auto", threads: int | None = None,
                  score_threshold: float | None = None, labels: str | Path | list | None = None,
                  iou_threshold: float | None = None, top_k: int | None = None,
                  edgetpu_device: str | None = None, normalization: Normalization | None = None,
                  labels_required: bool = False, postprocess: PostprocessConfig | None = None) -> Detector:
    """Load a bundle directory, an ``.onnx`` model or a bare ``.tflite`` (see the module docstring).
    ``normalization`` sets an ``.onnx`` model's input normalisation (default pytorch-ssd's (x-127)/128),
    ``postprocess`` how its outputs are laid out (default: pytorch-ssd's probabilities and x1,y1,x2,y2 corners;
    the converter passes the tail it proved, e.g. a TF graph's sliced scores and ymin-first boxes).
    Without labels anywhere the classes are named ``class1...`` with a warning, or, with ``labels_required``,
    a one-line error."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"model {p} not found; pass a bundle directory (from `edge-ssd convert`), an .onnx "
                        "or a .tflite file")
    if is_bundle(p):
        det = _load_bundle(p, backend, threads, labels, edgetpu_device)
    elif p.is_dir():
        raise UserError(f"{p}: directory has no manifest.json; pass a bundle written by `edge-ssd convert`")
    elif p.suffix == ".onnx":
        det = _load_onnx(p, backend, threads, labels, normalization, postprocess)
    elif p.suffix == ".tflite":
        det = _load_bare_tflite(p, backend, threads, labels, edgetpu_device)
    else:
        raise UserError(f"{p}: unknown model type {p.suffix!r}; pass a bundle directory, .onnx or .tflite")
    if det.labels_source == "placeholder":
        if labels_required:
            raise UserError(f"{p}: the model carries no labels (no metadata, no {p.stem}-labels.txt or {p.stem}.txt "
                            "beside it); pass --labels FILE (one class name per line, BACKGROUND first)")
        log.warning("%s: no labels (no --labels, no metadata, no %s-labels.txt or %s.txt beside it): classes are "
                    "named %s...; pass --labels FILE", p, p.stem, p.stem, ", ".join(det.labels[:3]))
    log.info("inference backend: %s", det.backend.describe())
    if score_threshold is not None:
        det.score_threshold = det.post.score_threshold = float(score_threshold)
    if iou_threshold is not None:
        det.post.iou_threshold = float(iou_threshold)
    if top_k is not None:
        det.post.top_k = int(top_k)
    # warm up (first invoke allocates/plans) so the first real frame is not an outlier
    det.infer(det.preprocess(np.zeros((det.input_size[1], det.input_size[0], 3), np.uint8)))
    if det.backend_name != "onnxruntime":  # the interpreter works on its own copy of the weights now
        from .memory import release_file_pages

        release_file_pages(det.path)
    log.info("loaded %s", det.describe())
    return det


def _load_bundle(p: Path, backend: str, threads, labels, edgetpu_device) -> Detector:
    try:
        m, model_path = load_manifest(p)
    except BundleError as e:
        raise UserError(str(e)) from None
    if backend == "auto" and m.target == "edgetpu":
        backend = "edgetpu"
    be = open_backend(model_path, backend=backend, threads=threads, edgetpu_device=edgetpu_device)
    names = [o.name for o in be.outputs]
    scores_name, boxes_name = m.scores.name, m.boxes.name
    parts = {}
    if m.scores.parts or m.boxes.parts:
        missing = [n for n in m.scores.tensor_names() + m.boxes.tensor_names() if n not in names]
        if missing:
            raise UserError(f"{p}: outputs {missing[:3]} named in the manifest are not in the model; copy the whole "
                            "bundle again or re-run `edge-ssd convert`")
        parts = {"scores_parts": m.scores.tensor_names() if m.scores.parts else None,
                 "boxes_parts": m.boxes.tensor_names() if m.boxes.parts else None}
    elif scores_name not in names or boxes_name not in names:
        log.warning("%s: output names %s/%s from the manifest are not in the model (%s); identifying by shape",
                    p, scores_name, boxes_name, ", ".join(names))
        scores_name, boxes_name = _identify_outputs(be, model_path, len(m.labels))
    ins = m.input
    if tuple(be.input.shape) != tuple(ins.shape):
        raise UserError(f"{p}: manifest input shape {ins.shape} differs from the model's "
                        f"{list(be.input.shape)}; re-run `edge-ssd convert`")
    inp = InputConfig(width=ins.width, height=ins.height, layout=ins.layout, color=ins.color,
                      norm=Normalization(_triple(ins.mean), _triple(ins.std)))
    pp = m.postprocess
    post = PostprocessConfig.from_manifest(pp)
    lab = resolve_labels(p, m.scores.shape[-1], explicit=labels, manifest=m.labels,
                         background=pp.background_class, warn=False)
    name = p.name[:-len(".bundle")] if p.name.endswith(".bundle") else p.name
    return Detector(be, lab.names, inp, post, scores_name, boxes_name, name=name, source_path=str(p),
                    labels_source=lab.source, **parts)


def _load_onnx(p: Path, backend: str, threads, labels, norm: Normalization | None = None,
               post: PostprocessConfig | None = None) -> Detector:
    be = open_backend(p, backend=backend, threads=threads)
    proved = None
    if post is None and OUTPUTS_META_KEY not in (getattr(be, "metadata", None) or {}):
        proved = _proved_onnx_tail(p)  # a third-party graph: read its outputs as its proved tail lays them out
    if proved is not None:
        post, feed, scores_name, boxes_name = proved
        norm = norm or feed
    inp = _input_config_from_tensor(be.input, p, norm)
    if any(d <= 0 for d in be.input.shape[1:]):
        raise UserError(f"{p}: input shape {list(be.input.shape)} is not fixed; export with a fixed size")
    if inp.layout != "NCHW" and proved is None:
        log.warning("%s: input is NHWC; the pytorch-ssd contract is NCHW", p)
    be.input.shape = (1, *be.input.shape[1:])
    if proved is None:
        scores_name, boxes_name = _identify_outputs(be, p, None)
    n_classes = _output_shapes(be)[scores_name][-1]
    post = post or PostprocessConfig(score_fn="none", box_encoding="corners")
    if post.score_offset:
        n_classes = post.num_classes or n_classes + post.score_offset
    lab = resolve_labels(p, n_classes, explicit=labels, metadata=getattr(be, "metadata", None), warn=False,
                         background=post.background)
    return Detector(be, lab.names, inp, post, scores_name, boxes_name, name=p.stem, source_path=str(p),
                    labels_source=lab.source)


def _proved_onnx_tail(p: Path):
    """(postprocess, feed normalisation, scores output, boxes output) of an ONNX SSD from the tail
    ``edge-ssd inspect`` proves (e.g. a TF OD API graph's sliced sigmoid scores, ymin-first boxes and its own
    (x-127.5)/127.5), or None: the converter extras are not installed or the tail is not recognised (then the
    pytorch-ssd contract is assumed, as before)."""
    try:
        from ..convert.cut import source_postprocess
        from ..convert.inspect import load_and_inspect
        from ..errors import DependencyError
    except ImportError:
        return None
    try:
        _, info = load_and_inspect(p)
    except (UserError, DependencyError, ImportError):
        return None
    t = info.tail
    if not t.recognised:
        return None
    log.info("%s: outputs read as the proved %s tail (scores %s, boxes %s)", p, t.family, t.score_fn,
             t.coding.box_order)
    feed = Normalization(tuple(info.normalization["mean"]), tuple(info.normalization["std"]))
    return source_postprocess(info, t.background_class), feed, t.scores_output, t.boxes_output


def _load_bare_tflite(p: Path, backend: str, threads, labels, edgetpu_device) -> Detector:
    be = open_backend(p, backend=backend, threads=threads, edgetpu_device=edgetpu_device)
    inp = _input_config_from_tensor(be.input, p)
    scores_name, boxes_name = _identify_outputs(be, p, None)
    n_classes = _output_shapes(be)[scores_name][-1]
    lab = resolve_labels(p, n_classes, explicit=labels, warn=False)
    log.warning("%s: bare .tflite without a manifest: assuming the pytorch-ssd contract (RGB, (x-127)/128, "
                "softmaxed scores, corner boxes); convert with `edge-ssd convert` for a self-describing bundle", p)
    post = PostprocessConfig(score_fn="none", box_encoding="corners")
    return Detector(be, lab.names, inp, post, scores_name, boxes_name, name=p.stem, source_path=str(p),
                    labels_source=lab.source)
