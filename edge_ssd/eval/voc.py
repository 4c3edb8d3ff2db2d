"""Pascal VOC average precision, written plainly (a reference, not a fast path).

Matching follows the VOC devkit (and pytorch-ssd's ``eval_ssd.py``): detections of one class are sorted by
score (descending, stable); each is matched to the ground-truth box of the same image with the highest IoU; if
that IoU exceeds the threshold (strictly) the detection is

* ignored (neither TP nor FP) when that box is ``difficult``,
* a TP when the box is not yet taken (the box becomes taken),
* an FP when the box was already taken (a duplicate),

and an FP otherwise. ``npos`` counts the non-difficult boxes. IoU is continuous (no ``+1`` pixel), as
pytorch-ssd computes it; it is invariant to scaling x and y, so normalised boxes give the same AP as pixels.

Three ways to turn the precision/recall curve into AP: VOC2007's 11-point interpolation, VOC2010+'s area under
the monotone precision envelope ("AUC"), and COCO's 101-point interpolation (used to cross-check against
pycocotools / faster-coco-eval).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one corner box (4,) against (K, 4) boxes; 0 where the union is empty."""
    ix1 = np.maximum(boxes[:, 0], box[0])
    iy1 = np.maximum(boxes[:, 1], box[1])
    ix2 = np.minimum(boxes[:, 2], box[2])
    iy2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    a = max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)
    b = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    union = a + b - inter
    out = np.zeros(boxes.shape[0], np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def match_class(
    detections: Iterable[tuple[object, float, np.ndarray]],
    ground_truth: dict[object, tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Match one class's detections to its ground truth.

    ``detections``: ``(image_key, score, box)`` triples; ``ground_truth``: ``image_key -> (boxes (K,4),
    difficult (K,))``. Returns ``(scores, tp, fp, npos)`` with scores sorted descending and tp/fp as 0/1 arrays
    in that order (a detection ignored because it matched a difficult box has tp = fp = 0).
    """
    dets = list(detections)
    npos = int(sum(int((~np.asarray(d, bool)).sum()) for _, d in ground_truth.values()))
    scores = np.asarray([float(s) for _, s, _ in dets], np.float64)
    order = np.argsort(-scores, kind="stable")
    taken = {k: np.zeros(len(d), bool) for k, (_, d) in ground_truth.items()}
    tp = np.zeros(len(dets), np.float64)
    fp = np.zeros(len(dets), np.float64)
    for rank, i in enumerate(order):
        key, _, box = dets[i]
        gt = ground_truth.get(key)
        if gt is None or len(gt[0]) == 0:
            fp[rank] = 1
            continue
        gboxes, gdiff = np.asarray(gt[0], np.float64), np.asarray(gt[1], bool)
        ious = box_iou(np.asarray(box, np.float64), gboxes)
        j = int(np.argmax(ious))
        if ious[j] > iou_threshold:
            if gdiff[j]:
                continue
            if not taken[key][j]:
                tp[rank] = 1
                taken[key][j] = True
            else:
                fp[rank] = 1
        else:
            fp[rank] = 1
    return scores[order], tp, fp, npos


def precision_recall(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall and precision over ranked detections (ignored detections drop out)."""
    keep = (tp + fp) > 0
    ctp = np.cumsum(tp[keep])
    cfp = np.cumsum(fp[keep])
    rec = ctp / npos if npos > 0 else np.zeros_like(ctp)
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    return rec, prec


def ap_voc07(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2007 11-point interpolated AP."""
    ap = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        p = float(np.max(prec[rec >= t])) if np.any(rec >= t) else 0.0
        ap += p / 11.0
    return ap


def ap_auc(rec: np.ndarray, prec: np.ndarray) -> float:
    """VOC2010+ AP: area under the monotonically decreasing precision envelope."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def ap_101(rec: np.ndarray, prec: np.ndarray) -> float:
    """COCO-style 101-point interpolated AP (recall thresholds 0, 0.01, ..., 1; precision envelope)."""
    if rec.size == 0:
        return 0.0
    env = prec.astype(np.float64).copy()
    for i in range(env.size - 1, 0, -1):
        env[i - 1] = max(env[i - 1], env[i])
    total = 0.0
    for t in np.linspace(0.0, 1.0, 101):
        idx = int(np.searchsorted(rec, t, side="left"))
        total += env[idx] if idx < env.size else 0.0
    return total / 101.0


def class_ap(
    detections: Iterable[tuple[object, float, np.ndarray]],
    ground_truth: dict[object, tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> dict:
    """AP of one class in all three flavours plus counts; APs are None when the class has no positives."""
    scores, tp, fp, npos = match_class(detections, ground_truth, iou_threshold)
    rec, prec = precision_recall(tp, fp, npos)
    out = {"npos": npos, "ndet": int(scores.size), "tp": int(tp.sum()), "fp": int(fp.sum())}
    if npos == 0:
        out.update(ap_voc07=None, ap_auc=None, ap_101=None)
    else:
        out.update(ap_voc07=ap_voc07(rec, prec), ap_auc=ap_auc(rec, prec), ap_101=ap_101(rec, prec))
    return out
