"""Box decoding, score functions and non-maximum suppression (pure numpy).

Semantics follow qfgaohao/pytorch-ssd (``box_utils_numpy.py`` and ``Predictor``): decode raw offsets
``(cx, cy, w, h)`` against priors with center/size variances; per class (background 0 skipped) keep the
candidates above ``prob_threshold``, take the ``candidate_size`` best, greedy hard NMS at ``iou_threshold``
(IoU with ``eps = 1e-5`` in the denominator, like pytorch-ssd), at most ``top_k`` per class.

Ties: candidates are ordered by score descending, equal scores by lower prior index first (a stable order
that pytorch-ssd leaves unspecified). Candidates with a non-finite score or box are dropped.

The implementation is vectorised: all classes share one greedy pass (boxes of different classes are never
compared), so the Python loop runs once per *kept* box, not once per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .priors import CENTER_VARIANCE, IOU_THRESHOLD, SIZE_VARIANCE

EPS = 1e-5


@dataclass
class Detections:
    """Detections of one image: ``boxes`` (K, 4) corner form, normalised 0..1 unless scaled; ``scores`` (K,);
    ``class_ids`` (K,) int. Sorted by score descending."""

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64))

    def scaled(self, width: float, height: float, clip: bool = True) -> np.ndarray:
        """Boxes in pixels of a ``width`` x ``height`` frame."""
        b = self.boxes * np.array([width, height, width, height], dtype=np.float32)
        if clip:
            np.clip(b, 0, [width, height, width, height], out=b)
        return b


def center_to_corner(boxes: np.ndarray) -> np.ndarray:
    half = boxes[..., 2:] / 2
    return np.concatenate([boxes[..., :2] - half, boxes[..., :2] + half], axis=-1)


def corner_to_center(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], axis=-1)


def decode_boxes(
    locations: np.ndarray,
    priors: np.ndarray,
    center_variance: float = CENTER_VARIANCE,
    size_variance: float = SIZE_VARIANCE,
) -> np.ndarray:
    """Raw offsets ``(..., N, 4)`` against priors ``(N, 4)`` (center form) to corner-form boxes."""
    loc = np.asarray(locations, dtype=np.float32)
    pri = np.asarray(priors, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        centers = loc[..., :2] * center_variance * pri[:, 2:] + pri[:, :2]
        sizes = np.exp(loc[..., 2:] * size_variance) * pri[:, 2:]
    half = sizes * 0.5
    return np.concatenate([centers - half, centers + half], axis=-1)


def encode_boxes(
    corner_boxes: np.ndarray,
    priors: np.ndarray,
    center_variance: float = CENTER_VARIANCE,
    size_variance: float = SIZE_VARIANCE,
) -> np.ndarray:
    """Inverse of :func:`decode_boxes` (used by training's prior matching)."""
    c = corner_to_center(np.asarray(corner_boxes, dtype=np.float32))
    pri = np.asarray(priors, dtype=np.float32)
    return np.concatenate(
        [
            (c[..., :2] - pri[:, :2]) / pri[:, 2:] / center_variance,
            np.log(np.maximum(c[..., 2:], 1e-12) / pri[:, 2:]) / size_variance,
        ],
        axis=-1,
    ).astype(np.float32)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    m = np.max(x, axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(x - m)
        return e / np.sum(e, axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def area_of(left_top: np.ndarray, right_bottom: np.ndarray) -> np.ndarray:
    hw = np.clip(right_bottom - left_top, 0.0, None)
    return hw[..., 0] * hw[..., 1]


def iou_of(boxes0: np.ndarray, boxes1: np.ndarray, eps: float = EPS) -> np.ndarray:
    """IoU of corner-form boxes, broadcasting like pytorch-ssd's ``iou_of``."""
    lt = np.maximum(boxes0[..., :2], boxes1[..., :2])
    rb = np.minimum(boxes0[..., 2:], boxes1[..., 2:])
    overlap = area_of(lt, rb)
    a0 = area_of(boxes0[..., :2], boxes0[..., 2:])
    a1 = area_of(boxes1[..., :2], boxes1[..., 2:])
    return overlap / (a0 + a1 - overlap + eps)


def _candidates(scores: np.ndarray, boxes: np.ndarray, prob_threshold: float, candidate_size: int,
                background: int | None):
    """(rows, classes, scores) of candidates, sorted by score desc then prior index, per-class capped."""
    s = scores
    if background is not None and 0 <= background < s.shape[1]:
        s = s.copy()
        s[:, background] = -np.inf
    with np.errstate(invalid="ignore"):
        rows, cls = np.nonzero(s > prob_threshold)
    if rows.size == 0:
        return rows, cls, np.zeros((0,), np.float32)
    sc = s[rows, cls]
    finite = np.isfinite(sc) & np.all(np.isfinite(boxes[rows]), axis=1)
    if not finite.all():
        rows, cls, sc = rows[finite], cls[finite], sc[finite]
    # order: class, then score desc, then row asc (np.nonzero gives row-major order, lexsort is stable)
    order = np.lexsort((rows, -sc, cls))
    rows, cls, sc = rows[order], cls[order], sc[order]
    if candidate_size > 0 and rows.size:
        # rank within class: position minus the start index of the class run
        starts = np.r_[0, np.flatnonzero(np.diff(cls)) + 1]
        run_len = np.diff(np.r_[starts, cls.size])
        rank = np.arange(cls.size) - np.repeat(starts, run_len)
        keep = rank < candidate_size
        rows, cls, sc = rows[keep], cls[keep], sc[keep]
    # global order for the greedy pass: score desc, then row asc, then class asc
    order = np.lexsort((cls, rows, -sc))
    return rows[order], cls[order], sc[order]


def hard_nms(scores: np.ndarray, boxes: np.ndarray, iou_threshold: float = IOU_THRESHOLD,
             prob_threshold: float = 0.01, candidate_size: int = 200, top_k: int = -1,
             background: int | None = 0) -> Detections:
    """Per-class greedy NMS over ``scores`` (N, C) and corner ``boxes`` (N, 4)."""
    rows, cls, sc = _candidates(scores, boxes, prob_threshold, candidate_size, background)
    n = rows.size
    if n == 0:
        return Detections.empty()
    b = boxes[rows].astype(np.float32)
    same = cls[:, None] == cls[None, :]
    if n <= 600:
        iou = iou_of(b[:, None, :], b[None, :, :])
        suppress_matrix = (iou > iou_threshold) & same
        alive = np.ones(n, dtype=bool)
        picked: list[int] = []
        counts: dict[int, int] = {}
        for i in range(n):
            if not alive[i]:
                continue
            c = int(cls[i])
            if top_k > 0 and counts.get(c, 0) >= top_k:
                continue
            picked.append(i)
            counts[c] = counts.get(c, 0) + 1
            alive &= ~suppress_matrix[i]
    else:  # very many candidates: avoid the n x n matrix
        alive = np.ones(n, dtype=bool)
        picked, counts = [], {}
        for i in range(n):
            if not alive[i]:
                continue
            c = int(cls[i])
            if top_k > 0 and counts.get(c, 0) >= top_k:
                continue
            picked.append(i)
            counts[c] = counts.get(c, 0) + 1
            rest = np.flatnonzero(alive & (cls == c))
            if rest.size:
                alive[rest[iou_of(b[rest], b[i][None, :]) > iou_threshold]] = False
    p = np.asarray(picked, dtype=np.int64)
    return Detections(b[p], sc[p].astype(np.float32), cls[p].astype(np.int64))


def soft_nms(scores: np.ndarray, boxes: np.ndarray, prob_threshold: float = 0.01, sigma: float = 0.5,
             top_k: int = -1, candidate_size: int = 200, background: int | None = 0) -> Detections:
    """Gaussian soft-NMS per class, as pytorch-ssd's ``soft_nms`` (scores decay by ``exp(-iou^2/sigma)``)."""
    rows, cls, sc = _candidates(scores, boxes, prob_threshold, candidate_size, background)
    out_b, out_s, out_c = [], [], []
    for c in np.unique(cls):
        m = cls == c
        b = boxes[rows[m]].astype(np.float32)
        s = sc[m].astype(np.float32).copy()
        idx = np.arange(b.shape[0])
        kept = 0
        while idx.size:
            j = int(np.argmax(s[idx]))
            cur = idx[j]
            out_b.append(b[cur])
            out_s.append(s[cur])
            out_c.append(int(c))
            kept += 1
            if (top_k > 0 and kept == top_k) or idx.size == 1:
                break
            idx = np.delete(idx, j)
            ious = iou_of(b[cur][None, :], b[idx])
            s[idx] = s[idx] * np.exp(-(ious * ious) / sigma)
            idx = idx[s[idx] > prob_threshold]
    if not out_s:
        return Detections.empty()
    d = Detections(np.asarray(out_b, np.float32), np.asarray(out_s, np.float32), np.asarray(out_c, np.int64))
    order = np.argsort(-d.scores, kind="stable")
    return Detections(d.boxes[order], d.scores[order], d.class_ids[order])


def postprocess(
    scores: np.ndarray,
    boxes: np.ndarray,
    priors: np.ndarray | None = None,
    *,
    score_fn: str = "none",
    center_variance: float = CENTER_VARIANCE,
    size_variance: float = SIZE_VARIANCE,
    iou_threshold: float = IOU_THRESHOLD,
    prob_threshold: float = 0.4,
    candidate_size: int = 200,
    top_k: int = -1,
    background: int | None = 0,
    nms: str = "hard",
    sigma: float = 0.5,
) -> Detections:
    """Full SSD tail for one image.

    ``scores`` (N, C): probabilities (``score_fn="none"``) or logits (``"softmax"``/``"sigmoid"``).
    ``boxes`` (N, 4): corner form when ``priors`` is None, else raw offsets decoded against ``priors``.
    """
    if scores.ndim == 3:
        scores = scores[0]
    if boxes.ndim == 3:
        boxes = boxes[0]
    if score_fn == "softmax":
        scores = softmax(scores)
    elif score_fn == "sigmoid":
        scores = sigmoid(scores)
    elif score_fn != "none":
        raise ValueError(f"unknown score_fn {score_fn!r}: use softmax, sigmoid or none")
    if priors is not None:
        boxes = decode_boxes(boxes, priors, center_variance, size_variance)
    if nms == "hard":
        return hard_nms(scores, boxes, iou_threshold, prob_threshold, candidate_size, top_k, background)
    if nms == "soft":
        return soft_nms(scores, boxes, prob_threshold, sigma, top_k, candidate_size, background)
    raise ValueError(f"unknown nms {nms!r}: use hard or soft")
