"""SSD prior (anchor) boxes, generated exactly as qfgaohao/pytorch-ssd does.

Priors are in center form ``(cx, cy, w, h)``, normalised to 0..1, in pytorch-ssd's order: for each spec, for
each feature-map cell row-major (y outer, x inner), the small square box, the big square box, then for each
aspect ratio ``r`` the pair ``(w*sqrt(r), h/sqrt(r))`` and ``(w/sqrt(r), h*sqrt(r))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SSDBoxSizes:
    min: float
    max: float


@dataclass(frozen=True)
class SSDSpec:
    feature_map_size: int | tuple[int, int]  # square, or (width, height)
    shrinkage: float | tuple[float, float]  # square, or (x, y)
    box_sizes: SSDBoxSizes
    aspect_ratios: tuple[float, ...] = field(default_factory=tuple)


# The seed model's config (pytorch-ssd vision/ssd/config/mobilenetv1_ssd_config.py); used by mb1-ssd,
# mb1-ssd-lite and mb2-ssd-lite at 300x300.
MOBILENET_SSD_SPECS: tuple[SSDSpec, ...] = (
    SSDSpec(19, 16, SSDBoxSizes(60, 105), (2, 3)),
    SSDSpec(10, 32, SSDBoxSizes(105, 150), (2, 3)),
    SSDSpec(5, 64, SSDBoxSizes(150, 195), (2, 3)),
    SSDSpec(3, 100, SSDBoxSizes(195, 240), (2, 3)),
    SSDSpec(2, 150, SSDBoxSizes(240, 285), (2, 3)),
    SSDSpec(1, 300, SSDBoxSizes(285, 330), (2, 3)),
)
IMAGE_SIZE = 300
CENTER_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
IOU_THRESHOLD = 0.45
IMAGE_MEAN = (127.0, 127.0, 127.0)
IMAGE_STD = 128.0


def _pair(v) -> tuple[float, float]:
    if isinstance(v, (tuple, list)):
        return float(v[0]), float(v[1])
    return float(v), float(v)


def generate_priors(
    specs=MOBILENET_SSD_SPECS, image_size: int | tuple[int, int] = IMAGE_SIZE, clamp: bool = True
) -> np.ndarray:
    """Return an ``(N, 4)`` float32 array of priors ``(cx, cy, w, h)``.

    ``image_size`` is an int (square) or ``(width, height)``; feature-map sizes and shrinkages may be pairs
    too, which is how non-square models (e.g. 320x240) are described.
    """
    img_w, img_h = _pair(image_size)
    out: list[list[float]] = []
    for spec in specs:
        fm_w, fm_h = (int(x) for x in _pair(spec.feature_map_size))
        sh_w, sh_h = _pair(spec.shrinkage)
        scale_w, scale_h = img_w / sh_w, img_h / sh_h
        small_w, small_h = spec.box_sizes.min / img_w, spec.box_sizes.min / img_h
        big = math.sqrt(spec.box_sizes.max * spec.box_sizes.min)
        big_w, big_h = big / img_w, big / img_h
        for j in range(fm_h):
            for i in range(fm_w):
                cx = (i + 0.5) / scale_w
                cy = (j + 0.5) / scale_h
                out.append([cx, cy, small_w, small_h])
                out.append([cx, cy, big_w, big_h])
                for ratio in spec.aspect_ratios:
                    r = math.sqrt(ratio)
                    out.append([cx, cy, small_w * r, small_h / r])
                    out.append([cx, cy, small_w / r, small_h * r])
    priors = np.asarray(out, dtype=np.float32).reshape(-1, 4)
    if clamp:
        np.clip(priors, 0.0, 1.0, out=priors)
    return priors


def specs_to_json(specs) -> list[dict]:
    return [
        {
            "feature_map_size": s.feature_map_size,
            "shrinkage": s.shrinkage,
            "box_sizes": [s.box_sizes.min, s.box_sizes.max],
            "aspect_ratios": list(s.aspect_ratios),
        }
        for s in specs
    ]


def specs_from_json(items: list[dict]) -> tuple[SSDSpec, ...]:
    return tuple(
        SSDSpec(
            tuple(d["feature_map_size"]) if isinstance(d["feature_map_size"], list) else d["feature_map_size"],
            tuple(d["shrinkage"]) if isinstance(d["shrinkage"], list) else d["shrinkage"],
            SSDBoxSizes(*d["box_sizes"]),
            tuple(d.get("aspect_ratios", ())),
        )
        for d in items
    )
