"""Validate ``model_postprocess.tflite`` the way its consumers read it.

Frigate (``detectors/plugins/cpu_tfl.py``, ``edgetpu_tfl.py``) and pycoral (``adapters/detect.py``) set one uint8
RGB tensor and read the outputs *by position*: 0 boxes (ymin, xmin, ymax, xmax), 1 classes (0-based, no
background), 2 scores, 3 count. :class:`ConsumerReader` does exactly that in LiteRT; :func:`validate_postprocess_model`
compares its detections on held-out photos with the bundle run by the runtime's own loader (the device path) and
with the source ONNX model.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import UserError
from ..model.box import Detections
from ..model.preprocess import read_image, resize_rgb
from .validate import Agreement

log = logging.getLogger(__name__)

MIN_BUNDLE_F1 = 0.99  # the body is the bundle's: only the float tail and the NMS implementation differ
# an approximated input (a non-integer mean on the Edge TPU) may move detections near the threshold: it must then
# agree with the ONNX model at least as well as the bundle does, less this margin
MAX_ONNX_F1_LOSS = 0.02


class ConsumerReader:
    """The post-process model in LiteRT, fed and read as Frigate and pycoral do."""

    def __init__(self, path, class_ids: list[int], threads: int | None = None):
        """``class_ids[k]``: the bundle's class id of the model's 0-based class ``k``."""
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        ins = self.it.get_input_details()
        outs = self.it.get_output_details()
        if len(ins) != 1 or len(outs) != 4:
            raise UserError(f"{path}: expected 1 input and 4 outputs (boxes, classes, scores, count), found "
                            f"{len(ins)} and {len(outs)}; rebuild it with `edge-ssd convert --postprocess-model`")
        self.inp = ins[0]
        self.outs = outs
        _, self.h, self.w, _ = (int(v) for v in self.inp["shape"])
        self.class_ids = np.asarray(class_ids, np.int64)
        self.invoke_s: list[float] = []

    def layout(self) -> dict:
        """Input and outputs as a consumer sees them (pycoral tells the formats apart by ``output 3`` being one
        value)."""
        return {"input": {"dtype": np.dtype(self.inp["dtype"]).name, "shape": [int(v) for v in self.inp["shape"]],
                          "quantization": [float(self.inp["quantization"][0]), int(self.inp["quantization"][1])]},
                "outputs": [{"name": d["name"], "shape": [int(v) for v in d["shape"]],
                             "dtype": np.dtype(d["dtype"]).name} for d in self.outs]}

    def raw(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """boxes, classes, scores, count for one HxWx3 uint8 RGB image of the model's size."""
        it = self.it
        it.set_tensor(self.inp["index"], rgb[None].astype(self.inp["dtype"], copy=False))
        t0 = time.perf_counter()
        it.invoke()
        self.invoke_s.append(time.perf_counter() - t0)
        boxes = it.get_tensor(self.outs[0]["index"])[0]
        classes = it.get_tensor(self.outs[1]["index"])[0]
        scores = it.get_tensor(self.outs[2]["index"])[0]
        count = int(it.get_tensor(self.outs[3]["index"])[0])
        return boxes, classes, scores, count

    def detect(self, bgr: np.ndarray, score_threshold: float) -> Detections:
        """Detections in the bundle's convention: (x1, y1, x2, y2) boxes, the bundle's class ids, scores strictly
        above ``score_threshold`` as the device keeps them (pycoral keeps ``>=``: with int8 heads a sigmoid of a
        logit that dequantises to exactly 0 scores exactly 0.5, so the two differ at 0.5)."""
        boxes, classes, scores, count = self.raw(resize_rgb(bgr, self.w, self.h))
        keep = [i for i in range(count) if scores[i] > score_threshold]
        if not keep:
            return Detections.empty()
        b = boxes[keep][:, [1, 0, 3, 2]].astype(np.float32)
        c = self.class_ids[np.asarray(classes[keep], np.int64)]
        return Detections(b, scores[keep].astype(np.float32), c)


def _images(images):
    """BGR images of an ImageSet (``load``) or of a list of paths; unreadable ones are skipped."""
    n = len(images)
    for k in range(n):
        try:
            yield images.load(k) if hasattr(images, "load") else read_image(images[k])
        except (UserError, ValueError, OSError):
            continue


def validate_postprocess_model(pp_path, bundle_dir, onnx=None, images=(), *, score_threshold: float = 0.5,
                               max_images: int = 100, exact_input: bool = True) -> dict:
    """F1 at IoU 0.5 of the post-process model's detections (score > ``score_threshold``) against the bundle
    (LiteRT through ``load_detector``) and the source ONNX model (ONNX Runtime): ``onnx`` is its path or the
    reference detector the conversion already loaded."""
    from ..runtime.detector import load_detector

    bundle = load_detector(bundle_dir, backend="litert")  # an Edge TPU bundle's body, on the CPU here
    labels = bundle.labels
    bg = bundle.post.background
    ids = [i for i in range(len(labels)) if i != bg]
    reader = ConsumerReader(pp_path, ids)
    ref_onnx, onnx_note = None, ""
    if onnx is not None and hasattr(onnx, "detect"):
        ref_onnx = onnx
    elif onnx is not None:
        try:
            ref_onnx = load_detector(onnx, labels=labels)
        except UserError as e:
            onnx_note = f"ONNX reference not run: {e}"
    vs_bundle, vs_onnx, bundle_vs_onnx = Agreement(), Agreement(), Agreement()
    score_err, used = 0.0, 0
    for img in _images(images):
        d_pp = reader.detect(img, score_threshold)
        d_b = bundle.detect(img, score_threshold)
        vs_bundle.add(d_b, d_pp)
        if ref_onnx is not None:
            d_ref = ref_onnx.detect(img, score_threshold)
            vs_onnx.add(d_ref, d_pp)
            bundle_vs_onnx.add(d_ref, d_b)
        if len(d_pp) and len(d_b) and len(d_pp) == len(d_b):
            score_err = max(score_err, float(np.abs(np.sort(d_pp.scores) - np.sort(d_b.scores)).max()))
        used += 1
        if used >= max_images:
            break
    if used == 0:
        raise UserError("no readable validation images for the post-process model; pass --val with real photos")
    lat = np.asarray(reader.invoke_s[1:] or reader.invoke_s) * 1000
    out = {"images": used, "score_threshold": score_threshold, "match_iou": 0.5, "layout": reader.layout(),
           "vs_bundle": vs_bundle.summary(), "vs_onnx": vs_onnx.summary() if ref_onnx is not None else None,
           "bundle_vs_onnx": bundle_vs_onnx.summary() if ref_onnx is not None else None, "exact_input": exact_input,
           "max_score_diff_vs_bundle": round(score_err, 6),
           "latency_ms": {"median": round(float(np.median(lat)), 2), "p90": round(float(np.percentile(lat, 90)), 2)},
           "min_bundle_f1": MIN_BUNDLE_F1}
    if onnx_note:
        out["note"] = onnx_note
    out["ok"] = out["vs_bundle"]["f1"] >= MIN_BUNDLE_F1
    if not exact_input and ref_onnx is not None:
        out["ok"] = out["vs_onnx"]["f1"] >= out["bundle_vs_onnx"]["f1"] - MAX_ONNX_F1_LOSS
    return out

