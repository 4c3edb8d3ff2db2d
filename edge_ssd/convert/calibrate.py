"""Calibration (and validation) images, preprocessed by the very code the device runs (the runtime detector's).

onnx2tf's ``-cind NAME data.npy MEAN STD`` expects NHWC float data scaled to 0..1 and normalises it as
``(data - MEAN) / STD``. With ``data = (x * std + mean) / 255`` (``x`` = our preprocessed input) and
``MEAN = mean / 255``, ``STD = std / 255`` it reproduces ``x`` exactly; :func:`onnx2tf_scaling` returns both and
:func:`check_scaling` proves it numerically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.preprocess import Normalization

log = logging.getLogger(__name__)

MIN_IMAGES = 10
WARN_IMAGES = 100
HOLDOUT_FRACTION = 0.25  # of the --calib images, held out for validation when no --val is given
HOLDOUT_SEED = 0
MIN_VAL_IMAGES = 4


@dataclass
class ImageSet:
    """Images from one or more dataset roots/folders; ``datasets[k]`` with ``refs`` = (dataset index, sample)."""

    roots: list[str]
    datasets: list = field(default_factory=list)
    refs: list[tuple[int, int]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.refs)

    def path(self, k: int) -> Path:
        d, i = self.refs[k]
        return Path(self.datasets[d].samples[i].image_path)

    def sample(self, k: int):
        d, i = self.refs[k]
        return self.datasets[d].samples[i]

    def class_names(self) -> list[str] | None:
        for d in self.datasets:
            if len(getattr(d, "class_names", [])) > 1:
                return list(d.class_names)
        return None

    def has_boxes(self) -> bool:
        return any(len(self.sample(k)) for k in range(len(self)))

    def load(self, k: int) -> np.ndarray:
        d, i = self.refs[k]
        return self.datasets[d].load_image(i)

    def subset(self, count: int) -> ImageSet:
        """``count`` images spread evenly over the set (deterministic)."""
        if count <= 0 or count >= len(self.refs):
            return self
        idx = np.linspace(0, len(self.refs) - 1, count).round().astype(int)
        return ImageSet(self.roots, self.datasets, [self.refs[j] for j in idx])

    def ids(self) -> set[str]:
        return {str(self.path(k).resolve()) for k in range(len(self))}

    def pick(self, positions) -> ImageSet:
        return ImageSet(self.roots, self.datasets, [self.refs[int(j)] for j in positions])


def hold_out(images: ImageSet, fraction: float = HOLDOUT_FRACTION, seed: int = HOLDOUT_SEED,
             force: bool = False) -> tuple[ImageSet, ImageSet]:
    """(calibration, validation): a seeded random ``fraction`` of ``images`` held out for validation, so the
    figures are measured on images the calibration never saw. Too few images for both is an error unless
    ``force``."""
    n = len(images)
    n_val = int(round(fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    if (n_val < MIN_VAL_IMAGES or n - n_val < MIN_IMAGES) and not force:
        raise UserError(f"only {n} images in --calib ({', '.join(images.roots)}): holding out {fraction:.0%} for "
                        f"validation leaves {n - n_val} to calibrate (need {MIN_IMAGES}) and {n_val} to validate "
                        f"(need {MIN_VAL_IMAGES}); add images, pass a separate --val, or --force")
    if n < 2:
        raise UserError(f"only {n} image in --calib ({', '.join(images.roots)}); give at least 2 (100+ "
                        "recommended) or a separate --val")
    perm = np.random.default_rng(seed).permutation(n)
    return images.pick(sorted(perm[n_val:])), images.pick(sorted(perm[:n_val]))


def open_images(paths, split: str | None = None, class_names: list[str] | None = None) -> ImageSet:
    """Open dataset roots / image folders (VOC, Open Images, plain folders) as one :class:`ImageSet`."""
    from ..data.datasets import open_dataset

    if isinstance(paths, (str, Path)):
        paths = [paths]
    s = ImageSet([str(p) for p in paths])
    for p in paths:
        if not Path(p).exists():
            raise UserError(f"{p}: no such directory; give a folder of images or a VOC / Open Images root")
        ds = open_dataset(p, split=split, class_names=class_names, add_unknown=True)
        s.datasets.append(ds)
        s.refs.extend((len(s.datasets) - 1, i) for i in range(len(ds)))
    return s


def onnx2tf_scaling(norm: Normalization) -> tuple[list[float], list[float]]:
    mean, std = norm.as_arrays()
    return [float(m) / 255.0 for m in mean], [float(s) / 255.0 for s in std]


def to_unit_range(x: np.ndarray, norm: Normalization) -> np.ndarray:
    mean, std = norm.as_arrays()
    return ((x * std + mean) / 255.0).astype(np.float32)


def check_scaling(x: np.ndarray, norm: Normalization) -> float:
    """Max error of onnx2tf's normalisation of our calibration data vs our preprocessing, relative to the input's
    range (a graph that normalises itself is fed raw 0..255 pixels)."""
    m, s = onnx2tf_scaling(norm)
    back = (to_unit_range(x, norm) - np.asarray(m, np.float32)) / np.asarray(s, np.float32)
    return float(np.max(np.abs(back - x))) / max(1.0, float(np.max(np.abs(x))))


@dataclass
class Calibration:
    data: np.ndarray  # (N, H, W, 3) float32, 0..1 (onnx2tf scaling)
    used: int
    skipped: list[str]
    scaling_error: float
    warnings: list[str]
    paths: list[str] = field(default_factory=list)  # the images calibrated on


def build_calibration(images: ImageSet, to_input, norm: Normalization, count: int, force: bool = False,
                      progress: bool = True, layout: str = "NCHW") -> Calibration:
    """Calibration data from ``count`` images spread over ``images``; ``to_input(bgr)`` is the device's own
    preprocessing (the runtime detector's, giving the normalised 1x3xHxW or 1xHxWx3 float input)."""
    from tqdm import tqdm

    warnings: list[str] = []
    sub = images.subset(count)
    n = len(sub)
    if n < MIN_IMAGES and not force:
        raise UserError(f"only {n} calibration images in {', '.join(images.roots)}; int8 calibration needs at "
                        f"least {MIN_IMAGES} (100+ recommended) - add images or pass --force")
    data, skipped, paths = [], [], []
    err = 0.0
    for k in tqdm(range(n), desc="calibration images", unit="img", disable=None if progress else True, leave=False):
        try:
            img = sub.load(k)
        except (UserError, ValueError, OSError):
            skipped.append(str(sub.path(k)))
            continue
        x = np.asarray(to_input(img), np.float32)[0]
        if layout == "NCHW":
            x = x.transpose(1, 2, 0)  # NCHW -> HWC: onnx2tf's calibration data is NHWC
        err = max(err, check_scaling(x, norm))
        data.append(to_unit_range(x, norm))
        paths.append(str(sub.path(k)))
    if not data:
        raise UserError(f"none of the {n} calibration images in {', '.join(images.roots)} could be decoded "
                        "(not JPEG/PNG/BMP?); point --calib to a folder of real images")
    if skipped:
        msg = f"skipped {len(skipped)} unreadable calibration image(s), e.g. {skipped[0]}"
        warnings.append(msg)
        log.warning(msg)
    if len(data) < MIN_IMAGES and not force:
        raise UserError(f"only {len(data)} readable calibration images; need at least {MIN_IMAGES} (100+ "
                        "recommended) - add images or pass --force")
    if len(data) < WARN_IMAGES:
        msg = f"calibrating on {len(data)} images; 100-300 representative images give better int8 ranges"
        warnings.append(msg)
        log.warning(msg)
    if err > 1e-5:
        raise RuntimeError(f"calibration scaling does not reproduce preprocessing (error {err})")
    return Calibration(np.stack(data).astype(np.float32), len(data), skipped, err, warnings, paths)
