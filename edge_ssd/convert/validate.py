"""Fidelity of a converted model: ONNX Runtime fp32 (the original, full model) vs the int8 TFLite + host tail.

Per output (after the tail, i.e. on ``scores``/``boxes``): max / mean abs error. Detections after NMS:
int8 detections are matched greedily (score order) to fp32 ones of the same class at IoU >= 0.5; precision,
recall, F1, mean IoU of matches, mean abs score error. With ground truth: mAP of both and the delta.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..model.box import Detections, decode_boxes, hard_nms, iou_of, sigmoid, softmax
from ..model.preprocess import Normalization, apply_lut, input_lut, preprocess, resize_rgb

log = logging.getLogger(__name__)

MAP_THRESHOLD = 0.01  # pytorch-ssd's evaluation threshold


class OnnxFp32:
    """The original full model in ONNX Runtime: BGR image -> (scores (N,C), corner boxes (N,4))."""

    def __init__(self, model, info, norm: Normalization):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.info, self.norm = info, norm
        self.name = info.input.name
        self.h, self.w = info.input_hw()
        t = info.tail
        self.outs = [t.scores_output, t.boxes_output]

    def __call__(self, img):
        x = preprocess(img, self.w, self.h, self.norm, layout="NCHW")
        s, b = self.sess.run(self.outs, {self.name: x})
        return s[0], b[0]


class TfliteInt8:
    """The converted model in LiteRT + the host tail, fed exactly as the device feeds it (LUT for int8 input)."""

    def __init__(self, tflite_path, norm: Normalization, scores_name, boxes_name,
                 score_fn: str = "none", priors=None, center_variance=0.1, size_variance=0.2, threads: int = 2):
        """``scores_name``/``boxes_name``: an output name, or a list of per-head output names concatenated
        along the priors axis (as the device does)."""
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_path=str(tflite_path), num_threads=threads)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        outs = {d["name"]: d for d in self.it.get_output_details()}
        as_list = (lambda n: [n] if isinstance(n, str) else list(n))  # noqa: E731
        self.s_dets = [outs[n] for n in as_list(scores_name)]
        self.b_dets = [outs[n] for n in as_list(boxes_name)]
        _, self.h, self.w, _ = (int(v) for v in self.inp["shape"])
        self.norm = norm
        self.lut = None
        if self.inp["dtype"] in (np.int8, np.uint8):
            scale, zp = self.inp["quantization"]
            self.lut = input_lut(norm, scale, zp, dtype=self.inp["dtype"])
        self.score_fn, self.priors = score_fn, priors
        self.cv, self.sv = center_variance, size_variance

    @staticmethod
    def _deq(d, a):
        if d["dtype"] in (np.int8, np.uint8):
            scale, zp = d["quantization"]
            return (a.astype(np.float32) - zp) * scale
        return a.astype(np.float32)

    def raw(self, img):
        if self.lut is not None:
            x = apply_lut(resize_rgb(img, self.w, self.h), self.lut)[None]
        else:
            x = preprocess(img, self.w, self.h, self.norm, layout="NHWC")
        self.it.set_tensor(self.inp["index"], x)
        self.it.invoke()
        s = np.concatenate([self._deq(d, self.it.get_tensor(d["index"])) for d in self.s_dets], axis=1)[0]
        b = np.concatenate([self._deq(d, self.it.get_tensor(d["index"])) for d in self.b_dets], axis=1)[0]
        return s, b

    def __call__(self, img):
        s, b = self.raw(img)
        if self.score_fn == "softmax":
            s = softmax(s)
        elif self.score_fn == "sigmoid":
            s = sigmoid(s)
        if self.priors is not None:
            b = decode_boxes(b, self.priors, self.cv, self.sv)
        return s, b


def match(ref: Detections, got: Detections, iou_thr: float = 0.5):
    """Greedy same-class matching of ``got`` (score order) to ``ref``: list of (i_got, j_ref, iou)."""
    if len(ref) == 0 or len(got) == 0:
        return []
    ious = iou_of(got.boxes[:, None, :], ref.boxes[None, :, :])
    ious[got.class_ids[:, None] != ref.class_ids[None, :]] = -1.0
    used = np.zeros(len(ref), bool)
    pairs = []
    for i in range(len(got)):
        row = np.where(used, -1.0, ious[i])
        j = int(np.argmax(row))
        if row[j] >= iou_thr:
            used[j] = True
            pairs.append((i, j, float(row[j])))
    return pairs


@dataclass
class Agreement:
    n_ref: int = 0
    n_got: int = 0
    matched: int = 0
    iou_sum: float = 0.0
    score_err_sum: float = 0.0

    def add(self, ref: Detections, got: Detections, iou_thr: float = 0.5):
        pairs = match(ref, got, iou_thr)
        self.n_ref += len(ref)
        self.n_got += len(got)
        self.matched += len(pairs)
        for i, j, iou in pairs:
            self.iou_sum += iou
            self.score_err_sum += abs(float(got.scores[i]) - float(ref.scores[j]))

    def summary(self) -> dict:
        p = self.matched / self.n_got if self.n_got else 1.0
        r = self.matched / self.n_ref if self.n_ref else 1.0
        f1 = 2 * p * r / (p + r) if (p + r) else 0.0
        return {"fp32_detections": self.n_ref, "int8_detections": self.n_got, "matched": self.matched,
                "precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
                "mean_iou": round(self.iou_sum / self.matched, 4) if self.matched else None,
                "mean_score_error": round(self.score_err_sum / self.matched, 4) if self.matched else None}


def validate(fp32: OnnxFp32, int8: TfliteInt8, images, *, score_threshold: float = 0.5, iou_threshold: float = 0.45,
             progress: bool = True, keep: int = 4, labels=None) -> dict:
    """Compare both models on ``images`` (:class:`~edge_ssd.convert.calibrate.ImageSet`)."""
    from tqdm import tqdm

    agree = Agreement()
    es_max = eb_max = es_sum = eb_sum = 0.0
    n_el_s = n_el_b = 0
    used, skipped = 0, []
    examples = []
    dets_fp, dets_q = {}, {}
    for k in tqdm(range(len(images)), desc="validating fp32 vs int8", unit="img", disable=None if progress else True,
                  leave=False):
        try:
            img = images.load(k)
        except (UserError, ValueError, OSError):
            skipped.append(str(images.path(k)))
            continue
        s0, b0 = fp32(img)
        s1, b1 = int8(img)
        ds, db = np.abs(s1 - s0), np.abs(b1 - b0)
        es_max, eb_max = max(es_max, float(ds.max())), max(eb_max, float(db.max()))
        es_sum += float(ds.sum())
        eb_sum += float(db.sum())
        n_el_s += ds.size
        n_el_b += db.size
        d0 = hard_nms(s0, b0, iou_threshold, score_threshold)
        d1 = hard_nms(s1, b1, iou_threshold, score_threshold)
        agree.add(d0, d1)
        key = (images.refs[k][0], images.sample(k).image_id)
        dets_fp[key] = hard_nms(s0, b0, iou_threshold, MAP_THRESHOLD)
        dets_q[key] = hard_nms(s1, b1, iou_threshold, MAP_THRESHOLD)
        if len(examples) < keep:
            examples.append((str(images.path(k)), img, d0, d1))
        used += 1
    if used == 0:
        raise UserError(f"none of the {len(images)} validation images could be decoded; point --val to real images")
    out = {
        "images": used, "skipped": len(skipped), "score_threshold": score_threshold, "match_iou": 0.5,
        "scores_error": {"max_abs": es_max, "mean_abs": es_sum / max(n_el_s, 1)},
        "boxes_error": {"max_abs": eb_max, "mean_abs": eb_sum / max(n_el_b, 1)},
        "agreement": agree.summary(),
    }
    out["map"] = _maps(images, dets_fp, dets_q, labels)
    out["_examples"] = examples
    return out


def _maps(images, dets_fp, dets_q, labels=None) -> dict | None:
    """mAP (VOC07 11-point and AUC at IoU 0.5) of both models on datasets with ground truth."""
    try:
        from ..eval import evaluate_detections
    except ImportError:
        return None
    res = {}
    for di, ds in enumerate(images.datasets):
        if len(getattr(ds, "class_names", [])) < 2 or not any(len(s) for s in ds.samples):
            continue
        fp = {iid: d for (d_i, iid), d in dets_fp.items() if d_i == di}
        q = {iid: d for (d_i, iid), d in dets_q.items() if d_i == di}
        keep_ids = set(fp)
        sub = _SubDataset(ds, keep_ids)
        r0 = evaluate_detections(fp, sub, model_labels=labels)
        r1 = evaluate_detections(q, sub, model_labels=labels)
        res[str(ds.root)] = {"fp32_map_voc07": r0["map_voc07"], "int8_map_voc07": r1["map_voc07"],
                             "fp32_map_auc": r0["map_auc"], "int8_map_auc": r1["map_auc"],
                             "delta_points_voc07": 100 * (r0["map_voc07"] - r1["map_voc07"]),
                             "delta_points_auc": 100 * (r0["map_auc"] - r1["map_auc"]),
                             "images": len(sub), "num_gt": r0["num_gt"]}
    return res or None


class _SubDataset:
    """The validated samples of a dataset (ground truth only for images that were evaluated)."""

    def __init__(self, ds, ids: set[str]):
        self.class_names = ds.class_names
        self.samples = [s for s in ds.samples if s.image_id in ids]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]
