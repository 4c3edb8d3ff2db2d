"""SSD augmentations keep boxes consistent with the pixels (property tests)."""

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_ssd.train.augment import (
    Expand,
    RandomMirror,
    RandomSampleCrop,
    ToAbsoluteCoords,
    ToPercentCoords,
    TrainAugmentation,
)

WHITE = 255


@st.composite
def scene(draw):
    w = draw(st.integers(40, 160))
    h = draw(st.integers(40, 160))
    x0 = draw(st.integers(0, w - 8))
    y0 = draw(st.integers(0, h - 8))
    x1 = draw(st.integers(x0 + 6, w))
    y1 = draw(st.integers(y0 + 6, h))
    seed = draw(st.integers(0, 2**32 - 1))
    img = np.zeros((h, w, 3), np.uint8)
    img[y0:y1, x0:x1] = WHITE  # pixels x0..x1-1: the pixel box is (x0, y0, x1, y1)
    boxes = np.array([[x0, y0, x1, y1]], np.float32)
    return img, boxes, seed


def _white_inside(img, box, tol=1.0):
    ys, xs = np.nonzero(np.all(img == WHITE, axis=2))
    if xs.size == 0:
        return True
    x0, y0, x1, y1 = box
    return xs.min() >= x0 - tol and xs.max() + 1 <= x1 + tol and ys.min() >= y0 - tol and ys.max() + 1 <= y1 + tol


def _box_fills_white(img, box, tol=1.0):
    """The box is tight: the white pixels reach (within tol) every side of it."""
    ys, xs = np.nonzero(np.all(img == WHITE, axis=2))
    x0, y0, x1, y1 = box
    return (abs(xs.min() - x0) <= tol and abs(xs.max() + 1 - x1) <= tol and abs(ys.min() - y0) <= tol
            and abs(ys.max() + 1 - y1) <= tol)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(scene())
def test_mirror_keeps_the_rectangle_under_its_box(sc):
    img, boxes, seed = sc
    out, b, lab = RandomMirror(p=1.0)(img, boxes, np.array([1]), np.random.default_rng(seed))
    assert out.shape == img.shape
    assert _white_inside(out, b[0], tol=0) and _box_fills_white(out, b[0], tol=0)


@SETTINGS
@given(scene())
def test_expand_keeps_the_rectangle_under_its_box(sc):
    img, boxes, seed = sc
    out, b, lab = Expand(max_ratio=4.0, p=1.0)(img, boxes, np.array([1]), np.random.default_rng(seed))
    assert out.shape[0] >= img.shape[0] and out.shape[1] >= img.shape[1]
    assert _white_inside(out, b[0], tol=0) and _box_fills_white(out, b[0], tol=0)


@SETTINGS
@given(scene())
def test_crop_keeps_the_visible_rectangle_under_its_clipped_box(sc):
    img, boxes, seed = sc
    out, b, lab = RandomSampleCrop()(img, boxes, np.array([1]), np.random.default_rng(seed))
    assert len(b) == len(lab) == 1  # a single box: a crop is only accepted when its centre stays inside
    h, w = out.shape[:2]
    assert 0 <= b[0, 0] < b[0, 2] <= w and 0 <= b[0, 1] < b[0, 3] <= h
    assert _white_inside(out, b[0], tol=0) and _box_fills_white(out, b[0], tol=0)


@SETTINGS
@given(scene())
def test_expand_crop_mirror_chain_in_percent_coords(sc):
    img, boxes, seed = sc
    rng = np.random.default_rng(seed)
    h, w = img.shape[:2]
    nb = boxes / np.array([w, h, w, h], np.float32)
    x, b, lab = img, nb, np.array([1])
    for t in (ToAbsoluteCoords(), Expand(), RandomSampleCrop(), RandomMirror(), ToPercentCoords()):
        x, b, lab = t(x, b, lab, rng)
    assert np.all(b >= -1e-6) and np.all(b <= 1 + 1e-6)
    assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
    hh, ww = x.shape[:2]
    assert _white_inside(x, b[0] * np.array([ww, hh, ww, hh]), tol=0.01)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 5))
def test_full_train_augmentation_outputs(seed, n):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    xy = rng.uniform(0, 0.7, (n, 2))
    wh = rng.uniform(0.05, 0.3, (n, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, 1.0)], 1).astype(np.float32)
    labels = rng.integers(1, 4, n)
    x, b, lab = TrainAugmentation(size=300)(img, boxes, labels, np.random.default_rng(seed))
    assert x.shape == (3, 300, 300) and x.dtype == np.float32
    assert x.min() >= (0 - 127) / 128 - 1e-6 and x.max() <= (255 - 127) / 128 + 1e-6
    assert 1 <= len(b) <= n and len(b) == len(lab)
    assert np.all(b >= -1e-6) and np.all(b <= 1 + 1e-6)
    assert np.all(b[:, 2] >= b[:, 0]) and np.all(b[:, 3] >= b[:, 1])
    assert set(lab.tolist()) <= set(labels.tolist())


def test_augmentation_is_a_function_of_the_seed():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (100, 130, 3), dtype=np.uint8)
    boxes = np.array([[0.1, 0.2, 0.5, 0.6], [0.5, 0.5, 0.9, 0.8]], np.float32)
    t = TrainAugmentation()
    a = t(img, boxes, np.array([1, 2]), np.random.default_rng(42))
    b = t(img, boxes, np.array([1, 2]), np.random.default_rng(42))
    c = t(img, boxes, np.array([1, 2]), np.random.default_rng(43))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (a[0].shape == c[0].shape and np.array_equal(a[0], c[0]))
