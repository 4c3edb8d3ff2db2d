"""Model side of evaluation: anything that turns a BGR image into :class:`Detections`.

``load_predictor(path)`` returns a :class:`Predictor` (callable ``bgr -> Detections`` with ``.labels``):

* ``.onnx``: ONNX Runtime, the reference path. Input size is read from the model's input shape (NCHW);
  outputs are found by name (``scores``/``boxes``) or by shape (last dim 4 = boxes); scores that are not
  probabilities (outside 0..1) are treated as logits and softmaxed. Preprocessing is
  :func:`edge_ssd.model.preprocess.preprocess` (pytorch-ssd normalisation), post-processing
  :func:`edge_ssd.model.box.postprocess` with ``prob_threshold`` 0.01 (pytorch-ssd's eval setting).
* anything else (``.tflite``, a bundle directory): ``edge_ssd.runtime.load_detector`` when that module provides
  it (imported lazily).

Labels: the ONNX ``metadata_props`` key ``edge_ssd.labels`` (a JSON list), else the ``labels`` argument (a list or
a labels file), else a single ``*labels*.txt`` beside the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DependencyError, UserError
from ..model.box import Detections, postprocess

LABELS_METADATA_KEY = "edge_ssd.labels"
EVAL_PROB_THRESHOLD = 0.01


@dataclass
class Predictor:
    fn: Callable[[np.ndarray], Detections]
    labels: list[str] | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    def __call__(self, bgr: np.ndarray) -> Detections:
        return self.fn(bgr)


def _labels_from(labels) -> list[str] | None:
    if labels is None:
        return None
    if isinstance(labels, (list, tuple)):
        return [str(x) for x in labels]
    from ..data.datasets import read_labels

    return read_labels(labels)


def _labels_beside(model: Path) -> list[str] | None:
    from ..data.datasets import read_labels

    found = sorted(model.parent.glob("*labels*.txt"))
    return read_labels(found[0]) if len(found) == 1 else None


def onnx_predictor(path, labels=None, prob_threshold: float = EVAL_PROB_THRESHOLD, iou_threshold: float = 0.45,
                   candidate_size: int = 200, top_k: int = -1, threads: int | None = None) -> Predictor:
    """A predictor running an SSD ONNX model (decoded corner boxes + scores) with ONNX Runtime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed (pip install 'edge-ssd[convert]')") from None
    from ..model.preprocess import preprocess

    path = Path(path)
    if not path.is_file():
        raise UserError(f"model {path} does not exist (give the path of an .onnx file)")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise UserError(f"cannot load ONNX model {path}: {msg} (is it a valid .onnx file?)") from None
    inp = sess.get_inputs()[0]
    shape = inp.shape
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[2:]) or shape[1] not in (3, "3"):
        raise UserError(f"{path}: input {inp.name!r} has shape {shape}; expected a fixed 1x3xHxW image input")
    height, width = int(shape[2]), int(shape[3])
    outs = sess.get_outputs()
    by_name = {o.name: o for o in outs}
    if "scores" in by_name and "boxes" in by_name:
        scores_name, boxes_name = "scores", "boxes"
    else:
        box_outs = [o for o in outs if o.shape and o.shape[-1] == 4]
        other = [o for o in outs if o not in box_outs]
        if len(outs) != 2 or len(box_outs) != 1:
            raise UserError(f"{path}: cannot tell scores from boxes among outputs "
                            f"{[(o.name, o.shape) for o in outs]}; expected outputs named 'scores' and 'boxes'")
        scores_name, boxes_name = other[0].name, box_outs[0].name
    meta = sess.get_modelmeta().custom_metadata_map or {}
    names = None
    if LABELS_METADATA_KEY in meta:
        try:
            names = [str(x) for x in json.loads(meta[LABELS_METADATA_KEY])]
        except (ValueError, TypeError):
            raise UserError(f"{path}: metadata {LABELS_METADATA_KEY} is not a JSON list of names") from None
    if names is None:
        names = _labels_from(labels)
    if names is None:
        names = _labels_beside(path)

    def predict(bgr: np.ndarray) -> Detections:
        x = preprocess(bgr, width, height)
        scores, boxes = sess.run([scores_name, boxes_name], {inp.name: x})
        s = scores[0] if scores.ndim == 3 else scores
        fn = "none"
        if s.size and (float(np.nanmin(s)) < -1e-6 or float(np.nanmax(s)) > 1 + 1e-6):
            fn = "softmax"
        return postprocess(s, boxes, score_fn=fn, prob_threshold=prob_threshold, iou_threshold=iou_threshold,
                           candidate_size=candidate_size, top_k=top_k)

    return Predictor(predict, names, f"onnxruntime {path.name} ({width}x{height})",
                     {"width": width, "height": height, "scores": scores_name, "boxes": boxes_name})


def load_predictor(path, labels=None, prob_threshold: float = EVAL_PROB_THRESHOLD) -> Predictor:
    """A predictor for an ONNX model, or (via ``edge_ssd.runtime.load_detector``) a ``.tflite`` / bundle."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return onnx_predictor(path, labels=labels, prob_threshold=prob_threshold)
    if not path.exists():
        raise UserError(f"model {path} does not exist (give an .onnx file, a .tflite file or a bundle directory)")
    try:
        from .. import runtime
    except ImportError:
        runtime = None
    load_detector = getattr(runtime, "load_detector", None)
    if load_detector is None:
        raise UserError(f"cannot evaluate {path}: only .onnx models are supported by this install "
                        "(edge_ssd.runtime.load_detector is unavailable)")
    det = load_detector(path, score_threshold=prob_threshold, labels=labels)
    names = getattr(det, "labels", None) or _labels_from(labels)
    return Predictor(det.detect, list(names) if names else None, f"{type(det).__name__} {path.name}")
