"""Box decoding, score functions and non-maximum suppression (pure numpy).

Semantics follow qfgaohao/pytorch-ssd (``box_utils_numpy.py`` and ``Predictor``): decode raw offsets
``(cx, cy, w, h)`` against priors with center/size variances (other families' layouts, e.g. the TF Object
Detection API's ``(ty, tx, th, tw)`` offsets, ``(ycenter, xcenter, h, w)`` anchors and ``(ymin, xmin, ymax, xmax)``
boxes, are described by a :class:`BoxCoding` and mapped onto the same decode by column permutations); per
class (background 0 skipped) keep the candidates above ``prob_threshold``, take the ``candidate_size`` best,
greedy hard NMS at ``iou_threshold`` (IoU with ``eps = 1e-5`` in the denominator, like pytorch-ssd), at most
``top_k`` per class.

Ties: candidates are ordered by score descending, equal scores by lower prior index first (a stable order
that pytorch-ssd leaves unspecified). Candidates with a non-finite score or box are dropped.

The implementation is vectorised: all classes share one greedy pass (boxes of different classes are never
compared), so the Python loop runs once per *kept* box, not once per candidate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

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
    center_variance: float | np.ndarray = CENTER_VARIANCE,
    size_variance: float | np.ndarray = SIZE_VARIANCE,
) -> np.ndarray:
    """Raw offsets ``(..., N, 4)`` against priors ``(N, 4)`` (center form) to corner-form boxes. The variances
    are scalars (pytorch-ssd) or (x, y) / (w, h) pairs."""
    loc = np.asarray(locations, dtype=np.float32)
    pri = np.asarray(priors, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        centers = loc[..., :2] * center_variance * pri[:, 2:] + pri[:, :2]
        sizes = np.exp(loc[..., 2:] * size_variance) * pri[:, 2:]
    half = sizes * 0.5
    return np.concatenate([centers - half, centers + half], axis=-1)


CANONICAL_OFFSETS = ("cx", "cy", "w", "h")
CANONICAL_CORNERS = ("x1", "y1", "x2", "y2")


def _tokens(order: str | tuple[str, ...]) -> tuple[str, ...]:
    return tuple(t.strip() for t in order.split(",")) if isinstance(order, str) else tuple(order)


@dataclass(frozen=True)
class BoxCoding:
    """How a family lays out its tail's tensors (see :class:`edge_ssd.model.bundle.Postprocess`):

    ``offset_order``: column order of the raw offsets (``cx,cy`` center offsets, ``w,h`` log-size offsets);
    ``variances``: one multiplier per offset column, in ``offset_order`` (TF box coder: 1 / scale factor);
    ``prior_layout``: column order of the priors (center form); ``box_order``: column order of decoded corners.
    The defaults are pytorch-ssd's.
    """

    offset_order: str = "cx,cy,w,h"
    variances: tuple[float, float, float, float] = (0.1, 0.1, 0.2, 0.2)
    prior_layout: str = "cx,cy,w,h"
    box_order: str = "x1,y1,x2,y2"

    @classmethod
    def pytorch_ssd(cls, center_variance: float = CENTER_VARIANCE, size_variance: float = SIZE_VARIANCE):
        return cls(variances=(center_variance, center_variance, size_variance, size_variance))

    def offsets_index(self) -> list[int] | None:
        """Columns of the raw offsets giving (cx, cy, w, h), or None when they are in that order already."""
        t = _tokens(self.offset_order)
        idx = [t.index(k) for k in CANONICAL_OFFSETS]
        return None if idx == [0, 1, 2, 3] else idx

    def center_size_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) center and (w, h) size variances as float32 arrays."""
        by = dict(zip(_tokens(self.offset_order), self.variances, strict=True))
        return (np.asarray([by["cx"], by["cy"]], np.float32), np.asarray([by["w"], by["h"]], np.float32))

    def canonical_priors(self, priors: np.ndarray) -> np.ndarray:
        """Priors in (cx, cy, w, h) from ``prior_layout``."""
        t = _tokens(self.prior_layout)
        idx = [t.index(k) for k in CANONICAL_OFFSETS]
        p = np.asarray(priors, dtype=np.float32)
        return p if idx == [0, 1, 2, 3] else np.ascontiguousarray(p[:, idx])

    def with_canonical_priors(self) -> BoxCoding:
        return replace(self, prior_layout=",".join(CANONICAL_OFFSETS))


def to_xyxy(boxes: np.ndarray, box_order: str = "x1,y1,x2,y2") -> np.ndarray:
    """Corner boxes with columns in ``box_order`` to (x1, y1, x2, y2)."""
    t = _tokens(box_order)
    idx = [t.index(k) for k in CANONICAL_CORNERS]
    return boxes if idx == [0, 1, 2, 3] else boxes[..., idx]


def from_xyxy(boxes: np.ndarray, box_order: str = "x1,y1,x2,y2") -> np.ndarray:
    """(x1, y1, x2, y2) corner boxes to columns in ``box_order``."""
    idx = [CANONICAL_CORNERS.index(k) for k in _tokens(box_order)]
    return boxes if idx == [0, 1, 2, 3] else boxes[..., idx]


def decode(locations: np.ndarray, priors: np.ndarray, coding: BoxCoding) -> np.ndarray:
    """:func:`decode_boxes` for any :class:`BoxCoding`: raw offsets (..., N, 4) in ``offset_order`` against
    priors in ``prior_layout`` to (x1, y1, x2, y2) corners (the same arithmetic, columns permuted)."""
    idx = coding.offsets_index()
    loc = np.asarray(locations, dtype=np.float32)
    if idx is not None:
        loc = loc[..., idx]
    cv, sv = coding.center_size_variances()
    return decode_boxes(loc, coding.canonical_priors(priors), cv, sv)


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


def _score_view(scores: np.ndarray, background: int | None) -> tuple[np.ndarray, int]:
    """The columns that can hold candidates and the class id of its first column: a view (no copy) when the
    background is the first or last column, else a copy with the background column at -inf."""
    s = scores
    c = s.shape[1]
    if background is None or not 0 <= background < c:
        return s, 0
    if background == 0:
        return s[:, 1:], 1
    if background == c - 1:
        return s[:, :-1], 0
    s = s.copy()
    s[:, background] = -np.inf
    return s, 0


def _candidates(scores: np.ndarray, boxes: np.ndarray, prob_threshold: float, candidate_size: int,
                background: int | None):
    """(rows, classes, scores) of candidates sorted by class, then score desc, then row asc; per-class capped
    at ``candidate_size``. Candidates with a non-finite score or box are dropped."""
    s, offset = _score_view(scores, background)
    with np.errstate(invalid="ignore"):
        mask = s > prob_threshold
    cls, rows = np.nonzero(mask.T)  # class-major, rows ascending within a class
    if rows.size == 0:
        return rows, cls, np.zeros((0,), np.float32)
    if offset:
        cls += offset
    sc = scores[rows, cls]
    finite = np.isfinite(sc) & np.isfinite(boxes[rows]).all(axis=1)
    if not finite.all():
        rows, cls, sc = rows[finite], cls[finite], sc[finite]
        if rows.size == 0:
            return rows, cls, sc
    if rows.size <= 2048 and (candidate_size <= 0 or rows.size <= candidate_size):
        order = np.lexsort((-sc, cls))  # stable: ties keep row order
        return rows[order], cls[order], sc[order]
    # many candidates: per class, select the candidate_size best (ties: lower row first), then sort those
    bounds = np.r_[0, np.flatnonzero(np.diff(cls)) + 1, cls.size].tolist()
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        neg = -sc[a:b]
        if 0 < candidate_size < b - a:
            kth = np.partition(neg, candidate_size - 1)[candidate_size - 1]
            better = np.flatnonzero(neg < kth)
            ties = np.flatnonzero(neg == kth)[: candidate_size - better.size]
            sel = np.sort(np.concatenate([better, ties]))
            parts.append(a + sel[np.argsort(neg[sel], kind="stable")])
        else:
            parts.append(a + np.argsort(neg, kind="stable"))
    order = np.concatenate(parts)
    return rows[order], cls[order], sc[order]


def _iou_matrix(b: np.ndarray, eps: float = EPS) -> np.ndarray:
    """``iou_of(b[:, None], b[None])`` for corner boxes (m, 4), bit for bit, without strided temporaries."""
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    area = np.clip(x2 - x1, 0.0, None) * np.clip(y2 - y1, 0.0, None)
    iw = np.minimum.outer(x2, x2)
    iw -= np.maximum.outer(x1, x1)
    np.clip(iw, 0.0, None, out=iw)
    ih = np.minimum.outer(y2, y2)
    ih -= np.maximum.outer(y1, y1)
    np.clip(ih, 0.0, None, out=ih)
    inter = iw
    inter *= ih
    den = np.add.outer(area, area)
    den -= inter
    den += eps
    inter /= den
    return inter


def _greedy_block(b: np.ndarray, iou_threshold: float, top_k: int) -> list[int]:
    """Greedy hard NMS over boxes ``b`` (m, 4) already in priority order; returns kept positions."""
    m = b.shape[0]
    if m == 1:
        return [0]
    if m <= 2048:
        # suppression rows as Python-int bitsets: the loop runs once per kept box, a few big-int operations each
        packed = np.packbits(_iou_matrix(b) > iou_threshold, axis=1, bitorder="little")
        alive = (1 << m) - 1
        kept: list[int] = []
        while alive:
            i = (alive & -alive).bit_length() - 1  # first box nothing earlier has suppressed
            kept.append(i)
            if top_k > 0 and len(kept) >= top_k:
                break
            alive &= ~int.from_bytes(packed[i].tobytes(), "little")
            alive &= ~(1 << i)
        return kept
    # very many candidates in one class (candidate_size <= 0): avoid the m x m matrix
    alive_a = np.ones(m, dtype=bool)
    kept = []
    for i in range(m):
        if not alive_a[i]:
            continue
        kept.append(i)
        if top_k > 0 and len(kept) >= top_k:
            break
        rest = i + 1 + np.flatnonzero(alive_a[i + 1:])
        if rest.size:
            alive_a[rest[iou_of(b[rest], b[i][None, :]) > iou_threshold]] = False
    return kept


def _greedy_all(b: np.ndarray, bounds: list[int], iou_threshold: float, top_k: int) -> list[int]:
    """Greedy hard NMS of a few candidates of several classes at once: one IoU matrix, masked to same-class
    pairs (``bounds`` delimit the class blocks), and one bitset loop over the kept boxes."""
    n = b.shape[0]
    sup = _iou_matrix(b) > iou_threshold
    block = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    sup &= block[:, None] == block[None, :]
    packed = np.packbits(sup, axis=1, bitorder="little")
    alive = (1 << n) - 1
    kept: list[int] = []
    counts = [0] * (len(bounds) - 1)
    while alive:
        i = (alive & -alive).bit_length() - 1
        kept.append(i)
        alive &= ~int.from_bytes(packed[i].tobytes(), "little")
        alive &= ~(1 << i)
        if top_k > 0:
            k = int(block[i])
            counts[k] += 1
            if counts[k] >= top_k:
                alive &= ~(((1 << bounds[k + 1]) - 1) ^ ((1 << bounds[k]) - 1))
    return kept


def hard_nms(scores: np.ndarray, boxes: np.ndarray, iou_threshold: float = IOU_THRESHOLD,
             prob_threshold: float = 0.01, candidate_size: int = 200, top_k: int = -1,
             background: int | None = 0) -> Detections:
    """Per-class greedy NMS over ``scores`` (N, C) and corner ``boxes`` (N, 4)."""
    rows, cls, sc = _candidates(scores, boxes, prob_threshold, candidate_size, background)
    n = rows.size
    if n == 0:
        return Detections.empty()
    b = boxes[rows].astype(np.float32, copy=False)
    bounds = np.r_[0, np.flatnonzero(np.diff(cls)) + 1, n].tolist()
    if n <= 256:
        picked = _greedy_all(b, bounds, iou_threshold, top_k)
    else:
        # classes never suppress each other: one greedy pass per class block (candidates are grouped by class)
        picked = []
        for start, end in zip(bounds[:-1], bounds[1:], strict=True):
            picked.extend(start + k for k in _greedy_block(b[start:end], iou_threshold, top_k))
    p = np.asarray(picked, dtype=np.int64)
    rows, cls, sc = rows[p], cls[p], sc[p]
    order = np.lexsort((cls, rows, -sc))  # score desc, then row asc, then class asc
    p = p[order]
    return Detections(b[p], sc[order].astype(np.float32), cls[order].astype(np.int64))


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


_PREFILTER_MARGIN = 0.05  # in logit units: far above float32 rounding, so the prefilter never drops a candidate


def _rows_that_can_pass(logits: np.ndarray, score_fn: str, prob_threshold: float,
                        background: int | None) -> np.ndarray | None:
    """Rows (priors) whose score for some non-background class can exceed ``prob_threshold``, judged from the
    logits alone, or None to keep all rows.

    Softmax: ``p_c = e^l_c / sum_j e^l_j <= e^l_c / (e^l_c + e^l_bg) = sigmoid(l_c - l_bg)``, so a row can only
    pass when some ``l_c > l_bg + logit(t)``. Sigmoid: some ``l_c > logit(t)``. The margin keeps the test
    conservative under float32 rounding, so the result is identical to scoring every row; score and box work
    is then done for those few rows only.
    """
    if not 0.0 < prob_threshold <= 0.99 or logits.ndim != 2 or logits.shape[0] == 0:
        return None
    c = logits.shape[1]
    bg = background if background is not None and 0 <= background < c else None
    limit = np.float32(math.log(prob_threshold / (1.0 - prob_threshold)) - _PREFILTER_MARGIN)
    with np.errstate(invalid="ignore", over="ignore"):
        if score_fn == "softmax":
            if bg is None or c < 2:
                return None
            lb = logits[:, bg]
            if not float(np.abs(lb).max()) < 1e5:  # huge or NaN background logits: skip the shortcut
                return None
            mask = logits > (lb + limit)[:, None]
        else:
            mask = logits > limit
        if bg is not None:
            mask[:, bg] = False
    r = np.flatnonzero(mask) // c  # row-major: ascending, with repeats
    if r.size:
        r = r[np.r_[True, r[1:] != r[:-1]]]
    return r


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
    coding: BoxCoding | None = None,
) -> Detections:
    """Full SSD tail for one image.

    ``scores`` (N, C): probabilities (``score_fn="none"``) or logits (``"softmax"``/``"sigmoid"``).
    ``boxes`` (N, 4): corner form (columns ``coding.box_order``) when ``priors`` is None, else raw offsets
    decoded against ``priors``; with ``coding`` (another family's layout, see :class:`BoxCoding`) the offsets,
    priors and corners follow it and ``center_variance``/``size_variance`` are ignored.
    """
    if scores.ndim == 3:
        scores = scores[0]
    if boxes.ndim == 3:
        boxes = boxes[0]
    if score_fn not in ("softmax", "sigmoid", "none"):
        raise ValueError(f"unknown score_fn {score_fn!r}: use softmax, sigmoid or none")
    rows = None
    if score_fn != "none":
        logits = np.asarray(scores, dtype=np.float32)
        rows = _rows_that_can_pass(logits, score_fn, prob_threshold, background)
        if rows is not None:
            logits = logits[rows]
        scores = softmax(logits) if score_fn == "softmax" else sigmoid(logits)
    if rows is not None:
        boxes = boxes[rows]
        if priors is not None:
            priors = np.asarray(priors)[rows]
    if priors is not None:
        if coding is None:
            boxes = decode_boxes(boxes, priors, center_variance, size_variance)
        else:
            boxes = decode(boxes, priors, coding)
    elif coding is not None:
        boxes = to_xyxy(np.asarray(boxes), coding.box_order)
    if nms == "hard":
        return hard_nms(scores, boxes, iou_threshold, prob_threshold, candidate_size, top_k, background)
    if nms == "soft":
        return soft_nms(scores, boxes, prob_threshold, sigma, top_k, candidate_size, background)
    raise ValueError(f"unknown nms {nms!r}: use hard or soft")
