"""Validation on the device's code path: a written bundle, loaded by the runtime, against the source ONNX.

Both sides are :class:`edge_ssd.runtime.detector.Detector` objects from ``load_detector``: the bundle runs on the
TFLite backend with the daemon's input table, head concatenation, dequantisation, decode and NMS; the reference
is the source ONNX model in ONNX Runtime (the runtime's ``.onnx`` loader). Nothing here re-implements any of it.

Per image: the decoded scores/boxes of every prior (max/mean abs error), the detections above the score
threshold matched greedily by class and IoU >= 0.5 (precision, recall, F1, mean IoU, mean score error), the
inference time of the bundle, and, on datasets with ground truth, mAP of both (VOC07 11-point and area) over the
classes the model knows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError
from ..model.box import Detections, iou_of

MAP_THRESHOLD = 0.01  # pytorch-ssd's evaluation threshold


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


@dataclass
class Outputs:
    """One model's answer on one image: decoded priors, detections at the score threshold and at mAP's."""

    scores: np.ndarray
    boxes: np.ndarray
    dets: Detections
    dets_map: Detections
    ms: float


def run_detector(det, img: np.ndarray, score_threshold: float) -> Outputs:
    """The daemon's stages on one BGR image (preprocess, infer, postprocess), plus the decoded priors."""
    x = det.preprocess(img)
    t0 = time.perf_counter()
    raw = det.infer(x)
    ms = 1000.0 * (time.perf_counter() - t0)
    s, b = det.decode(raw)
    return Outputs(s, b, det.postprocess(raw, score_threshold), det.postprocess(raw, MAP_THRESHOLD), ms)


@dataclass
class Reference:
    """The source model's outputs on the validation images, computed once and compared with every attempt."""

    keys: list[tuple[int, str]] = field(default_factory=list)  # (dataset index, image id)
    index: list[int] = field(default_factory=list)  # position in the ImageSet
    outputs: list[Outputs] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def reference_outputs(ref, images, score_threshold: float, progress: bool = True, limit: int | None = None
                      ) -> Reference:
    """Run the reference detector over ``images`` (:class:`~edge_ssd.convert.calibrate.ImageSet`); unreadable
    images are skipped (and named)."""
    from tqdm import tqdm

    out = Reference()
    for k in tqdm(range(len(images)), desc="reference (ONNX Runtime)", unit="img", disable=None if progress else True,
                  leave=False):
        if limit is not None and len(out.index) >= limit:
            break
        try:
            img = images.load(k)
        except (UserError, ValueError, OSError):
            out.skipped.append(str(images.path(k)))
            continue
        out.keys.append((images.refs[k][0], images.sample(k).image_id))
        out.index.append(k)
        out.outputs.append(run_detector(ref, img, score_threshold))
    if not out.index:
        raise UserError(f"none of the {len(images)} validation images could be decoded; point --val to real "
                        "images")
    return out


def compare(reference: Reference, det, images, *, score_threshold: float = 0.5, progress: bool = True,
            keep: int = 4, labels=None, desc: str = "validating") -> dict:
    """``det`` (a loaded bundle) against the reference outputs on the same images: errors, agreement, mAP,
    latency; ``_examples`` holds a few (path, image, ref dets, dets) for the report picture."""
    from tqdm import tqdm

    agree = Agreement()
    es_max = eb_max = es_sum = eb_sum = 0.0
    n_el_s = n_el_b = 0
    examples, ms = [], []
    dets_ref, dets_got = {}, {}
    for k, key, r in tqdm(list(zip(reference.index, reference.keys, reference.outputs, strict=True)), desc=desc,
                          unit="img", disable=None if progress else True, leave=False):
        img = images.load(k)
        o = run_detector(det, img, score_threshold)
        if o.scores.shape != r.scores.shape or o.boxes.shape != r.boxes.shape:
            raise UserError(f"the bundle's outputs {o.scores.shape}/{o.boxes.shape} differ from the ONNX model's "
                            f"{r.scores.shape}/{r.boxes.shape}; this export's tail is unusual - please report it")
        ms.append(o.ms)
        # NaN reference columns: scores the source graph does not output (its sliced-off background)
        ds, db = np.abs(o.scores - r.scores), np.abs(o.boxes - r.boxes)
        ds = ds[np.isfinite(r.scores)]
        es_max, eb_max = max(es_max, float(ds.max())), max(eb_max, float(db.max()))
        es_sum += float(ds.sum())
        eb_sum += float(db.sum())
        n_el_s += ds.size
        n_el_b += db.size
        agree.add(r.dets, o.dets)
        dets_ref[key], dets_got[key] = r.dets_map, o.dets_map
        if len(examples) < keep:
            examples.append((str(images.path(k)), img, r.dets, o.dets))
    out = {
        "images": len(reference.index), "skipped": len(reference.skipped), "score_threshold": score_threshold,
        "match_iou": 0.5,
        "scores_error": {"max_abs": es_max, "mean_abs": es_sum / max(n_el_s, 1)},
        "boxes_error": {"max_abs": eb_max, "mean_abs": eb_sum / max(n_el_b, 1)},
        "agreement": agree.summary(),
        "latency_ms": {"median": round(float(np.median(ms)), 2), "mean": round(float(np.mean(ms)), 2)},
        "map": _maps(images, dets_ref, dets_got, labels),
        "_examples": examples,
    }
    return out


def _maps(images, dets_fp, dets_q, labels=None) -> dict | None:
    """mAP (VOC07 11-point and AUC at IoU 0.5) of both models on datasets with ground truth, over the classes
    the model knows."""
    from ..eval import evaluate_detections

    res = {}
    for di, ds in enumerate(images.datasets):
        if len(getattr(ds, "class_names", [])) < 2 or not any(len(s) for s in ds.samples):
            continue
        fp = {iid: d for (d_i, iid), d in dets_fp.items() if d_i == di}
        q = {iid: d for (d_i, iid), d in dets_q.items() if d_i == di}
        sub = _SubDataset(ds, set(fp))
        if not any(len(s) for s in sub.samples):
            continue
        try:
            r0 = evaluate_detections(fp, sub, model_labels=labels)
        except UserError:  # the model knows none of this dataset's classes: no mAP to report
            continue
        if r0["num_gt"] == 0:
            continue
        r1 = evaluate_detections(q, sub, model_labels=labels)
        res[str(ds.root)] = {"fp32_map_voc07": r0["map_voc07"], "int8_map_voc07": r1["map_voc07"],
                             "fp32_map_auc": r0["map_auc"], "int8_map_auc": r1["map_auc"],
                             "delta_points_voc07": 100 * (r0["map_voc07"] - r1["map_voc07"]),
                             "delta_points_auc": 100 * (r0["map_auc"] - r1["map_auc"]),
                             "images": len(sub), "num_gt": r0["num_gt"], "classes": r0["num_classes"],
                             "classes_model_lacks": r0["classes_model_lacks"]}
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
