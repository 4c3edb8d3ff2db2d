"""SSD training augmentations (qfgaohao/pytorch-ssd ``transforms/transforms.py`` and ``TrainAugmentation``).

Every transform is a picklable object called as ``t(image, boxes, labels, rng)`` with an explicit
``np.random.Generator``, so a sample's augmentation is a pure function of its seed (and works the same in
DataLoader workers started with ``spawn``). Boxes are corner form in **pixels** between the geometric steps
and normalised 0..1 after :class:`ToPercentCoords`.

Differences from pytorch-ssd, on purpose:
- the geometric steps (expand, crop, mirror, resize) run on the uint8 image first and the photometric
  distortion runs afterwards on the 300x300 result: the same per-pixel operations, about ten times cheaper
  because expand's canvas (up to 4x4 the image) is never converted to float. The expand fill is therefore
  distorted with the rest of the image instead of staying exactly the mean colour.
- the random channel swap of ``RandomLightingNoise`` is optional (``channel_swap``): colour is a legitimate
  cue for many detectors (and for the synthetic shapes), so the test model trains without it.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..model.box import iou_of
from ..model.priors import IMAGE_MEAN, IMAGE_SIZE, IMAGE_STD


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img, boxes, labels, rng):
        for t in self.transforms:
            img, boxes, labels = t(img, boxes, labels, rng)
        return img, boxes, labels


class ToAbsoluteCoords:
    def __call__(self, img, boxes, labels, rng):
        h, w = img.shape[:2]
        return img, boxes * np.array([w, h, w, h], np.float32), labels


class ToPercentCoords:
    def __call__(self, img, boxes, labels, rng):
        h, w = img.shape[:2]
        return img, boxes / np.array([w, h, w, h], np.float32), labels


class Expand:
    """With probability 0.5 put the image at a random place on a canvas up to ``max_ratio`` times larger,
    filled with ``mean`` (zooms out: trains small objects)."""

    def __init__(self, mean=IMAGE_MEAN, max_ratio: float = 4.0, p: float = 0.5):
        self.mean = tuple(float(m) for m in mean)
        self.max_ratio = float(max_ratio)
        self.p = float(p)

    def __call__(self, img, boxes, labels, rng):
        if rng.random() >= self.p:
            return img, boxes, labels
        h, w, c = img.shape
        ratio = rng.uniform(1.0, self.max_ratio)
        left = int(rng.uniform(0, w * ratio - w))
        top = int(rng.uniform(0, h * ratio - h))
        canvas = np.empty((int(h * ratio), int(w * ratio), c), dtype=img.dtype)
        canvas[...] = np.asarray(self.mean, dtype=img.dtype)
        canvas[top:top + h, left:left + w] = img
        boxes = boxes.copy()
        boxes[:, :2] += (left, top)
        boxes[:, 2:] += (left, top)
        return canvas, boxes, labels


class RandomSampleCrop:
    """pytorch-ssd's random IoU crop: pick a mode (keep the image, or a minimum IoU of 0.1/0.3/0.7/0.9 with
    some box, or any crop), try up to 50 crops of 0.3..1 of each side with aspect 0.5..2, keep boxes whose
    centres fall inside, clip them to the crop."""

    SAMPLE_OPTIONS = (None, (0.1, None), (0.3, None), (0.7, None), (0.9, None), (None, None))

    def __call__(self, img, boxes, labels, rng):
        if boxes.shape[0] == 0:
            return img, boxes, labels
        height, width = img.shape[:2]
        while True:
            mode = self.SAMPLE_OPTIONS[int(rng.integers(0, len(self.SAMPLE_OPTIONS)))]
            if mode is None:
                return img, boxes, labels
            min_iou, max_iou = mode
            min_iou = float("-inf") if min_iou is None else min_iou
            max_iou = float("inf") if max_iou is None else max_iou
            for _ in range(50):
                w = rng.uniform(0.3 * width, width)
                h = rng.uniform(0.3 * height, height)
                if h / w < 0.5 or h / w > 2:
                    continue
                left = rng.uniform(0, width - w)
                top = rng.uniform(0, height - h)
                rect = np.array([int(left), int(top), int(left + w), int(top + h)])
                overlap = iou_of(boxes, rect[None, :].astype(np.float32))
                if overlap.max() < min_iou or overlap.min() > max_iou:
                    continue
                centers = (boxes[:, :2] + boxes[:, 2:]) / 2.0
                m1 = (rect[0] < centers[:, 0]) & (rect[1] < centers[:, 1])
                m2 = (rect[2] > centers[:, 0]) & (rect[3] > centers[:, 1])
                mask = m1 & m2
                if not mask.any():
                    continue
                cur = img[rect[1]:rect[3], rect[0]:rect[2], :]
                b = boxes[mask].copy()
                b[:, :2] = np.maximum(b[:, :2], rect[:2]) - rect[:2]
                b[:, 2:] = np.minimum(b[:, 2:], rect[2:]) - rect[:2]
                return cur, b, labels[mask]


class RandomMirror:
    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, img, boxes, labels, rng):
        if rng.random() >= self.p:
            return img, boxes, labels
        width = img.shape[1]
        img = img[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]
        return img, boxes, labels


class Resize:
    def __init__(self, size: int = IMAGE_SIZE):
        self.size = int(size)

    def __call__(self, img, boxes, labels, rng):
        return cv2.resize(np.ascontiguousarray(img), (self.size, self.size)), boxes, labels


class PhotometricDistort:
    """Random brightness (+-32), contrast (0.5..1.5, before or after the HSV steps), saturation (0.5..1.5),
    hue (+-18 degrees), each with probability 0.5, and optionally a random channel swap; float32 RGB out."""

    PERMS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(self, channel_swap: bool = True, brightness: float = 32.0, contrast=(0.5, 1.5),
                 saturation=(0.5, 1.5), hue: float = 18.0):
        self.channel_swap = bool(channel_swap)
        self.brightness = float(brightness)
        self.contrast = tuple(contrast)
        self.saturation = tuple(saturation)
        self.hue = float(hue)

    def __call__(self, img, boxes, labels, rng):
        im = img.astype(np.float32)
        if rng.random() < 0.5:
            im += rng.uniform(-self.brightness, self.brightness)
        contrast_first = rng.random() < 0.5
        if contrast_first and rng.random() < 0.5:
            im *= rng.uniform(*self.contrast)
        do_sat, do_hue = rng.random() < 0.5, rng.random() < 0.5
        sat, hue = rng.uniform(*self.saturation), rng.uniform(-self.hue, self.hue)
        if do_sat or do_hue:
            hsv = cv2.cvtColor(np.clip(im, 0, 255), cv2.COLOR_RGB2HSV)  # float: H in 0..360, S in 0..1
            if do_sat:
                hsv[:, :, 1] *= sat
            if do_hue:
                hsv[:, :, 0] = np.mod(hsv[:, :, 0] + hue, 360.0)
            im = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first and rng.random() < 0.5:
            im *= rng.uniform(*self.contrast)
        if self.channel_swap and rng.random() < 0.5:
            im = im[:, :, self.PERMS[int(rng.integers(0, len(self.PERMS)))]]
        return np.clip(im, 0, 255), boxes, labels


class Normalize:
    """``(x - mean) / std`` and HWC -> CHW float32 (what :func:`edge_ssd.model.preprocess.preprocess` does)."""

    def __init__(self, mean=IMAGE_MEAN, std: float = IMAGE_STD):
        from ..model.preprocess import Normalization

        self.norm = Normalization(tuple(float(m) for m in mean), (float(std),) * 3)

    def __call__(self, img, boxes, labels, rng):
        from ..model.preprocess import normalize

        x = normalize(img, self.norm)
        return np.ascontiguousarray(x.transpose(2, 0, 1)), boxes, labels


class TrainAugmentation(Compose):
    """The full training pipeline on an RGB uint8 image with normalised boxes; returns a CHW float32 image and
    normalised boxes (filtered by the crop) and labels."""

    def __init__(self, size: int = IMAGE_SIZE, mean=IMAGE_MEAN, std: float = IMAGE_STD,
                 channel_swap: bool = True, max_expand: float = 4.0):
        super().__init__([
            ToAbsoluteCoords(),
            Expand(mean, max_expand),
            RandomSampleCrop(),
            RandomMirror(),
            ToPercentCoords(),
            Resize(size),
            PhotometricDistort(channel_swap=channel_swap),
            Normalize(mean, std),
        ])


class TestTransform(Compose):
    """Resize and normalise only (validation)."""

    __test__ = False  # not a pytest class

    def __init__(self, size: int = IMAGE_SIZE, mean=IMAGE_MEAN, std: float = IMAGE_STD):
        super().__init__([Resize(size), Normalize(mean, std)])
