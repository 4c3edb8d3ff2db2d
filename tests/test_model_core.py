"""Model core (priors, decode, softmax, hard/soft NMS, postprocess) against plain-loop references written here.

The references are deliberately naive: Python loops over priors, classes and candidates, following
qfgaohao/pytorch-ssd's ``generate_ssd_priors``, ``convert_locations_to_boxes``, ``hard_nms`` and ``soft_nms``.
NMS references compute IoU with float32 scalars in the same order of operations as the library, so decisions at
the threshold agree exactly; the library's documented tie rule (equal scores: lower prior index first) is used.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge_ssd.model import box
from edge_ssd.model.box import Detections, decode_boxes, encode_boxes, hard_nms, postprocess, soft_nms, softmax
from edge_ssd.model.priors import MOBILENET_SSD_SPECS, SSDBoxSizes, SSDSpec, generate_priors

F32 = np.float32


# ----------------------------------------------------------------------------------------------- references
def ref_priors(specs, image_size, clamp=True):
    """pytorch-ssd's generate_ssd_priors (square images), as loops."""
    priors = []
    for spec in specs:
        scale = image_size / spec.shrinkage
        for j, i in itertools.product(range(spec.feature_map_size), repeat=2):
            x_center = (i + 0.5) / scale
            y_center = (j + 0.5) / scale
            size = spec.box_sizes.min
            h = w = size / image_size
            priors.append([x_center, y_center, w, h])
            size = math.sqrt(spec.box_sizes.max * spec.box_sizes.min)
            h = w = size / image_size
            priors.append([x_center, y_center, w, h])
            size = spec.box_sizes.min
            h = w = size / image_size
            for ratio in spec.aspect_ratios:
                ratio = math.sqrt(ratio)
                priors.append([x_center, y_center, w * ratio, h / ratio])
                priors.append([x_center, y_center, w / ratio, h * ratio])
    if clamp:
        priors = [[min(max(v, 0.0), 1.0) for v in p] for p in priors]
    return priors


def ref_decode(loc, priors, cv=0.1, sv=0.2):
    out = []
    for (dx, dy, dw, dh), (px, py, pw, ph) in zip(loc.tolist(), priors.tolist(), strict=True):
        cx, cy = dx * cv * pw + px, dy * cv * ph + py
        w, h = math.exp(dw * sv) * pw, math.exp(dh * sv) * ph
        out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    return out


def ref_softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ref_iou(a, b, eps=F32(1e-5)):
    """IoU of two boxes with float32 scalars, in the library's order of operations."""
    a = [F32(v) for v in a]
    b = [F32(v) for v in b]
    zero = F32(0)
    ow = max(min(a[2], b[2]) - max(a[0], b[0]), zero)
    oh = max(min(a[3], b[3]) - max(a[1], b[1]), zero)
    overlap = ow * oh
    a0 = max(a[2] - a[0], zero) * max(a[3] - a[1], zero)
    a1 = max(b[2] - b[0], zero) * max(b[3] - b[1], zero)
    return overlap / (a0 + a1 - overlap + eps)


def ref_candidates(scores, boxes, prob_threshold, candidate_size, background=0):
    """Per class: [(score, row)] above the threshold, finite, sorted by score desc then row, capped."""
    per_class = {}
    n, c = scores.shape
    for k in range(c):
        if k == background:
            continue
        cand = []
        for r in range(n):
            s = scores[r, k]
            if not s > prob_threshold:
                continue
            if not math.isfinite(s) or not all(math.isfinite(v) for v in boxes[r]):
                continue
            cand.append((s, r))
        cand.sort(key=lambda t: (-t[0], t[1]))
        if candidate_size > 0:
            cand = cand[:candidate_size]
        if cand:
            per_class[k] = cand
    return per_class


def ref_hard_nms(scores, boxes, iou_threshold=0.45, prob_threshold=0.01, candidate_size=200, top_k=-1,
                 background=0):
    """pytorch-ssd's per-class greedy NMS; returns [(score, row, class, box)] by score desc, row, class."""
    out = []
    for k, cand in ref_candidates(scores, boxes, prob_threshold, candidate_size, background).items():
        kept = []
        for s, r in cand:
            if all(not ref_iou(boxes[r], boxes[q]) > iou_threshold for _, q in kept):
                kept.append((s, r))
                if top_k > 0 and len(kept) == top_k:
                    break
        out.extend((s, r, k, list(boxes[r])) for s, r in kept)
    out.sort(key=lambda t: (-t[0], t[1], t[2]))
    return out


def ref_soft_nms(scores, boxes, prob_threshold=0.01, sigma=0.5, top_k=-1, candidate_size=200, background=0):
    """pytorch-ssd's Gaussian soft-NMS per class (ties: first in candidate order); [(score, class, box)]."""
    out = []
    for k, cand in ref_candidates(scores, boxes, prob_threshold, candidate_size, background).items():
        live = [[F32(s), r] for s, r in cand]
        picked = 0
        while live:
            j = max(range(len(live)), key=lambda t: (live[t][0], -t))
            s, r = live.pop(j)
            out.append((float(s), k, list(boxes[r])))
            picked += 1
            if (top_k > 0 and picked == top_k) or not live:
                break
            for item in live:
                iou = ref_iou(boxes[r], boxes[item[1]])
                item[0] = item[0] * F32(math.exp(-(float(iou) * float(iou)) / sigma))
            live = [item for item in live if item[0] > prob_threshold]
    out.sort(key=lambda t: -t[0])
    return out


def assert_matches(d: Detections, ref):
    assert len(d) == len(ref)
    if ref:
        np.testing.assert_array_equal(d.scores, np.asarray([t[0] for t in ref], F32))
        np.testing.assert_array_equal(d.class_ids, [t[2] for t in ref])
        np.testing.assert_array_equal(d.boxes, np.asarray([t[3] for t in ref], F32))
    assert d.boxes.shape == (len(ref), 4) and d.scores.dtype == F32 and d.class_ids.dtype == np.int64


def random_case(rng, n=300, c=6, spread=0.3):
    centers = rng.uniform(0, 1, (n, 2))
    sizes = rng.uniform(0.02, spread, (n, 2))
    boxes = np.concatenate([centers - sizes / 2, centers + sizes / 2], axis=1).astype(F32)
    scores = softmax(rng.normal(0, 2, (n, c)).astype(F32))
    return scores, boxes


# -------------------------------------------------------------------------------------------------- priors
def test_priors_match_pytorch_ssd_loops():
    p = generate_priors(MOBILENET_SSD_SPECS, 300)
    ref = np.asarray(ref_priors(MOBILENET_SSD_SPECS, 300), F32)
    assert p.shape == (3000, 4) and p.dtype == F32
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-7)
    # first prior: cell (0, 0) of the 19x19 map, small square box of 60 px
    np.testing.assert_allclose(p[0], [8 / 300, 8 / 300, 0.2, 0.2], atol=1e-7)  # (0.5) / (300/16)
    # last prior: the 1x1 map's second aspect-ratio box (w / sqrt 3, h * sqrt 3) of 285 px, clamped
    np.testing.assert_allclose(p[-1], [0.5, 0.5, 0.95 / math.sqrt(3), min(1.0, 0.95 * math.sqrt(3))], atol=1e-7)
    np.testing.assert_allclose(p[1], [8 / 300, 8 / 300, math.sqrt(60 * 105) / 300] * 1 + [math.sqrt(60 * 105) / 300],
                               atol=1e-7)


@pytest.mark.parametrize("clamp", [True, False])
def test_priors_other_spec_and_unclamped(clamp):
    specs = (SSDSpec(4, 8, SSDBoxSizes(10, 20), (2,)), SSDSpec(2, 16, SSDBoxSizes(20, 40), ()))
    p = generate_priors(specs, 32, clamp=clamp)
    assert p.shape == (4 * 4 * 4 + 2 * 2 * 2, 4)
    np.testing.assert_allclose(p, np.asarray(ref_priors(specs, 32, clamp), F32), atol=1e-7)


def test_non_square_priors_reduce_to_square_when_equal():
    specs = (SSDSpec((5, 5), (60, 60), SSDBoxSizes(60, 105), (2, 3)),)
    np.testing.assert_array_equal(generate_priors(specs, (300, 300)), generate_priors(
        (SSDSpec(5, 60, SSDBoxSizes(60, 105), (2, 3)),), 300))


# ---------------------------------------------------------------------------------------- decode, softmax
def test_decode_matches_loops_and_encode_inverts():
    rng = np.random.default_rng(0)
    priors = generate_priors()
    loc = rng.normal(0, 1, (3000, 4)).astype(F32)
    d = decode_boxes(loc, priors)
    np.testing.assert_allclose(d, np.asarray(ref_decode(loc, priors)), rtol=1e-5, atol=2e-6)
    assert decode_boxes(loc[None], priors).shape == (1, 3000, 4)
    np.testing.assert_allclose(encode_boxes(d, priors), loc, atol=2e-4)


def ref_decode_tf(rel_codes, anchors, scale_factors=(10.0, 10.0, 5.0, 5.0)):
    """TF Object Detection API FasterRcnnBoxCoder._decode as loops: codes (ty, tx, th, tw), anchors (ycenter,
    xcenter, h, w), boxes (ymin, xmin, ymax, xmax)."""
    out = []
    for (ty, tx, th, tw), (yca, xca, ha, wa) in zip(rel_codes.tolist(), anchors.tolist(), strict=True):
        ty, tx, th, tw = ty / scale_factors[0], tx / scale_factors[1], th / scale_factors[2], tw / scale_factors[3]
        w, h = math.exp(tw) * wa, math.exp(th) * ha
        yc, xc = ty * ha + yca, tx * wa + xca
        out.append([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2])
    return out


def test_decode_tf_box_coder_matches_loops():
    rng = np.random.default_rng(3)
    anchors = generate_priors()[:, [1, 0, 3, 2]]  # (ycenter, xcenter, h, w)
    codes = rng.normal(0, 2, (3000, 4)).astype(F32)
    coding = box.BoxCoding(offset_order="cy,cx,h,w", variances=(0.1, 0.1, 0.2, 0.2), prior_layout="cy,cx,h,w",
                           box_order="y1,x1,y2,x2")
    got = box.from_xyxy(box.decode(codes, anchors, coding), coding.box_order)
    np.testing.assert_allclose(got, np.asarray(ref_decode_tf(codes, anchors)), rtol=1e-5, atol=2e-6)
    # per-axis variances (scale factors 8, 10, 4, 5) and mixed layouts: still the loops
    coding = box.BoxCoding(offset_order="cy,cx,h,w", variances=(1 / 8, 0.1, 0.25, 0.2), prior_layout="cx,cy,w,h",
                           box_order="x1,y1,x2,y2")
    got = box.decode(codes, generate_priors(), coding)
    ref = np.asarray(ref_decode_tf(codes, anchors, (8.0, 10.0, 4.0, 5.0)))[:, [1, 0, 3, 2]]
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-6)


def test_coding_defaults_are_pytorch_ssd_bit_for_bit():
    rng = np.random.default_rng(4)
    priors = generate_priors()
    loc = rng.normal(0, 1, (3000, 4)).astype(F32)
    np.testing.assert_array_equal(box.decode(loc, priors, box.BoxCoding.pytorch_ssd()), decode_boxes(loc, priors))
    corners = decode_boxes(loc, priors)
    assert box.to_xyxy(box.from_xyxy(corners, "y2,x1,x2,y1"), "y2,x1,x2,y1") is not corners
    np.testing.assert_array_equal(box.to_xyxy(box.from_xyxy(corners, "y2,x1,x2,y1"), "y2,x1,x2,y1"), corners)


@pytest.mark.parametrize("score_fn", ["softmax", "sigmoid"])
def test_postprocess_with_coding_equals_canonical(score_fn):
    """postprocess on a TF-layout tail (permuted offsets/priors) gives the pytorch-ssd-layout detections."""
    rng = np.random.default_rng(5)
    priors = generate_priors()
    loc = rng.normal(0, 1, (3000, 4)).astype(F32)
    logits = rng.normal(0, 3, (3000, 4)).astype(F32)
    coding = box.BoxCoding(offset_order="cy,cx,h,w", prior_layout="cy,cx,h,w", box_order="y1,x1,y2,x2")
    a = postprocess(logits, loc, priors, score_fn=score_fn, prob_threshold=0.6)
    b = postprocess(logits, loc[:, [1, 0, 3, 2]], priors[:, [1, 0, 3, 2]], score_fn=score_fn, prob_threshold=0.6,
                    coding=coding)
    assert len(a) > 3
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)
    if score_fn == "softmax":  # decoded corners in y-first order (box_encoding "corners") are reordered alike
        c = postprocess(softmax(logits), box.from_xyxy(decode_boxes(loc, priors), coding.box_order), coding=coding,
                        prob_threshold=0.6)
        np.testing.assert_allclose(c.boxes, a.boxes, atol=1e-6)


def test_softmax_matches_loops_and_is_stable():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 5, (200, 21)).astype(F32)
    x[0] += 1000.0  # large logits must not overflow
    ref = np.asarray([ref_softmax(r) for r in x.astype(np.float64).tolist()])
    np.testing.assert_allclose(softmax(x), ref, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(softmax(x).sum(axis=1), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ hard NMS
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kw", [
    {},
    {"top_k": 1},
    {"top_k": 3, "candidate_size": 5},
    {"candidate_size": 2, "prob_threshold": 0.2},
    {"iou_threshold": 0.1},
    {"candidate_size": -1, "prob_threshold": 0.001},
])
def test_hard_nms_equals_reference(seed, kw):
    rng = np.random.default_rng(seed)
    scores, boxes = random_case(rng, n=int(rng.integers(50, 400)), spread=0.5)
    assert_matches(hard_nms(scores, boxes, **kw), ref_hard_nms(scores, boxes, **kw))


def test_hard_nms_many_candidates_per_class_matrix_free_path():
    rng = np.random.default_rng(5)
    scores, boxes = random_case(rng, n=2100, c=2, spread=1.5)
    scores = np.clip(scores, 0.5, None)  # every prior is a candidate of class 1: 2300 > 2048 in one block
    kw = {"candidate_size": -1, "prob_threshold": 0.4}
    assert_matches(hard_nms(scores, boxes, **kw), ref_hard_nms(scores, boxes, **kw))


def test_adversarial_equal_scores_keep_lower_prior_first():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5]] * 4 + [[0.6, 0.6, 0.9, 0.9]], F32)
    scores = np.zeros((5, 3), F32)
    scores[:, 1] = 0.7
    scores[:, 2] = 0.7
    d = hard_nms(scores, boxes, prob_threshold=0.5)
    ref = ref_hard_nms(scores, boxes, prob_threshold=0.5)
    assert_matches(d, ref)
    # identical boxes: one survivor per class and place, the first prior; classes ordered by row then class
    assert [(t[1], t[2]) for t in ref] == [(0, 1), (0, 2), (4, 1), (4, 2)]


def test_adversarial_zero_area_nan_inf():
    boxes = np.array([
        [0.2, 0.2, 0.2, 0.2],  # zero area: IoU 0 with everything, never suppresses
        [0.2, 0.2, 0.2, 0.2],
        [0.1, 0.1, 0.4, np.nan],  # non-finite box: dropped
        [0.1, 0.1, 0.4, 0.4],
        [0.1, 0.1, 0.4, 0.4],  # its duplicate, lower score
        [0.5, 0.5, np.inf, 0.9],  # dropped
        [0.7, 0.7, 0.6, 0.6],  # inverted (negative size): area 0
    ], F32)
    scores = np.zeros((7, 2), F32)
    scores[:, 1] = [0.9, 0.8, 0.99, 0.7, 0.6, 0.95, 0.5]
    s_nan = scores.copy()
    s_nan[3, 1] = np.nan
    s_inf = scores.copy()
    s_inf[0, 1] = np.inf
    for s in (scores, s_nan, s_inf):
        d = hard_nms(s, boxes, prob_threshold=0.3)
        ref = ref_hard_nms(s, boxes, prob_threshold=0.3)
        assert_matches(d, ref)
        assert np.isfinite(d.boxes).all() and np.isfinite(d.scores).all()
    assert [t[1] for t in ref_hard_nms(scores, boxes, prob_threshold=0.3)] == [0, 1, 3, 6]


def test_no_candidates_one_candidate_and_empty_input():
    scores = np.full((10, 3), 0.001, F32)
    boxes = np.tile(np.array([[0, 0, 0.5, 0.5]], F32), (10, 1))
    d = hard_nms(scores, boxes, prob_threshold=0.4)
    assert len(d) == 0 and d.boxes.shape == (0, 4)
    scores[7, 2] = 0.9
    d = hard_nms(scores, boxes, prob_threshold=0.4)
    assert len(d) == 1 and d.class_ids.tolist() == [2] and d.scores.tolist() == [pytest.approx(0.9)]
    assert len(hard_nms(np.zeros((0, 3), F32), np.zeros((0, 4), F32))) == 0
    assert len(postprocess(np.zeros((0, 3), F32), np.zeros((0, 4), F32), score_fn="softmax")) == 0


def test_background_only_and_other_background_index():
    rng = np.random.default_rng(3)
    scores, boxes = random_case(rng, n=100, c=4)
    assert len(hard_nms(scores[:, :1], boxes, background=0)) == 0
    for bg in (None, 2, 3):
        ref = ref_hard_nms(scores, boxes, prob_threshold=0.2, background=bg)
        assert_matches(hard_nms(scores, boxes, prob_threshold=0.2, background=bg), ref)


# ------------------------------------------------------------------------------------------------ soft NMS
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kw", [{}, {"top_k": 2}, {"sigma": 0.1, "prob_threshold": 0.2}, {"candidate_size": 4}])
def test_soft_nms_equals_reference(seed, kw):
    rng = np.random.default_rng(10 + seed)
    scores, boxes = random_case(rng, n=120, c=4, spread=0.5)
    d = soft_nms(scores, boxes, **kw)
    ref = ref_soft_nms(scores, boxes, **kw)
    assert len(d) == len(ref)
    np.testing.assert_allclose(d.scores, [t[0] for t in ref], rtol=1e-5)
    np.testing.assert_array_equal(d.boxes, np.asarray([t[2] for t in ref], F32).reshape(-1, 4))
    assert sorted(d.class_ids.tolist()) == sorted(t[1] for t in ref)


# ---------------------------------------------------------------------------------------------- postprocess
def _logits_case(rng, n=3000, c=21, n_obj=6):
    x = rng.normal(0, 1, (n, c)).astype(F32)
    x[:, 0] += 7.0
    for _ in range(n_obj):
        k, r = int(rng.integers(1, c)), int(rng.integers(0, n - 8))
        x[r:r + 8, 0] = 0
        x[r:r + 8, k] = rng.uniform(1, 5, 8)
    return x, rng.normal(0, 0.6, (n, 4)).astype(F32)


@pytest.mark.parametrize("score_fn", ["softmax", "sigmoid"])
@pytest.mark.parametrize("thr", [0.01, 0.3, 0.6, 0.95])
def test_postprocess_prefilter_equals_full_scoring(score_fn, thr):
    """postprocess skips rows that cannot pass; it must equal scoring and decoding every row."""
    rng = np.random.default_rng(int(thr * 100))
    priors = generate_priors()
    x, loc = _logits_case(rng)
    if score_fn == "sigmoid":
        x -= 4.0  # independent per-class probabilities: keep most of them low, as a real sigmoid head does
    x[5, 3] = np.nan
    x[9, 0] = np.nan
    loc[11, 2] = np.inf
    full = softmax(x) if score_fn == "softmax" else box.sigmoid(x)
    dec = decode_boxes(loc, priors)
    for kw in ({}, {"top_k": 2}, {"candidate_size": 3}, {"background": None}):
        got = postprocess(x[None], loc[None], priors, score_fn=score_fn, prob_threshold=thr, **kw)
        ref = ref_hard_nms(full, dec, prob_threshold=thr, **{"candidate_size": 200, **kw})
        assert_matches(got, ref)


def test_postprocess_probabilities_and_bad_arguments():
    rng = np.random.default_rng(7)
    scores, boxes = random_case(rng, n=200, c=5)
    assert_matches(postprocess(scores, boxes, prob_threshold=0.3), ref_hard_nms(scores, boxes, prob_threshold=0.3))
    with pytest.raises(ValueError, match="score_fn"):
        postprocess(scores, boxes, score_fn="tanh")
    with pytest.raises(ValueError, match="nms"):
        postprocess(scores, boxes, nms="fast")


def test_postprocess_softmax_prefilter_with_huge_logits():
    rng = np.random.default_rng(8)
    x, loc = _logits_case(rng, n=500)
    x *= 1e5  # beyond the shortcut's safe range: it must fall back, results still equal full scoring
    priors = generate_priors()[:500]
    ref = ref_hard_nms(softmax(x), decode_boxes(loc, priors), prob_threshold=0.4)
    assert_matches(postprocess(x, loc, priors, score_fn="softmax", prob_threshold=0.4), ref)


# ------------------------------------------------------------------------------------------- properties
coords = st.floats(0, 1, width=32)


@st.composite
def nms_inputs(draw):
    n = draw(st.integers(1, 60))
    c = draw(st.integers(2, 4))
    xy = draw(hnp.arrays(F32, (n, 2), elements=coords))
    wh = draw(hnp.arrays(F32, (n, 2), elements=st.floats(0, 0.5, width=32)))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(F32)
    # few distinct score values so ties are common
    scores = draw(hnp.arrays(F32, (n, c), elements=st.sampled_from([0.0, 0.05, 0.3, 0.5, 0.5, 0.7, 0.9, 1.0])))
    return scores, boxes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nms_inputs(), st.sampled_from([0.0, 0.3, 0.45, 0.7]), st.sampled_from([-1, 1, 2]),
       st.sampled_from([200, 1, 3]), st.sampled_from([0.01, 0.4]))
def test_hard_nms_properties(inp, iou_thr, top_k, cand, prob):
    scores, boxes = inp
    d = hard_nms(scores, boxes, iou_threshold=iou_thr, prob_threshold=prob, candidate_size=cand, top_k=top_k)
    assert_matches(d, ref_hard_nms(scores, boxes, iou_thr, prob, cand, top_k))
    assert np.all(np.diff(d.scores) <= 0)  # sorted by score
    for k in range(len(d)):  # a subset of the input: each output is some input box with that class's score
        rows = np.flatnonzero((boxes == d.boxes[k]).all(axis=1))
        assert rows.size and np.any(scores[rows, d.class_ids[k]] == d.scores[k])
        assert d.scores[k] > prob and d.class_ids[k] != 0
    for c in np.unique(d.class_ids):
        b = d.boxes[d.class_ids == c]
        assert top_k <= 0 or len(b) <= top_k
        for i, j in itertools.combinations(range(len(b)), 2):
            assert ref_iou(b[i], b[j]) <= iou_thr
