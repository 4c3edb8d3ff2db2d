"""Image preprocessing shared by calibration (workstation) and inference (device).

One function, :func:`preprocess`, defines what the model sees: resize (stretch, as pytorch-ssd's
``PredictionTransform``: ``cv2.resize`` with bilinear interpolation), BGR->RGB when the frame is BGR, then
``(x - mean) / std``. Calibration and the device must call exactly this, or int8 calibration is wrong.

For int8/uint8 input tensors, :func:`input_lut` folds normalisation and quantisation into one 256-entry
lookup table per channel, so the per-frame work on the device is a resize and a table lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .priors import IMAGE_MEAN, IMAGE_STD


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = (IMAGE_STD, IMAGE_STD, IMAGE_STD)

    def as_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)


PYTORCH_SSD = Normalization()


def resize_rgb(image: np.ndarray, width: int, height: int, bgr: bool = True,
               out: np.ndarray | None = None) -> np.ndarray:
    """Resize a HxWx3 uint8 frame to ``width`` x ``height`` RGB (stretch, bilinear)."""
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {getattr(image, 'shape', None)}")
    if image.shape[1] != width or image.shape[0] != height:
        resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    else:
        resized = image
    if bgr:
        if out is not None:
            return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB, dst=out)
        return cv2.cvtColor(resized, cv2.COLOR_BGR2RGB)
    if out is not None:
        out[...] = resized
        return out
    return np.ascontiguousarray(resized)


def normalize(rgb: np.ndarray, norm: Normalization = PYTORCH_SSD) -> np.ndarray:
    """``(x - mean) / std`` per channel of ``...x3`` RGB values (uint8 or float) as float32: the one definition
    of the model's input normalisation (training, calibration, the device's lookup tables)."""
    mean, std = norm.as_arrays()
    return (np.asarray(rgb).astype(np.float32) - mean) / std


def value_table(norm: Normalization = PYTORCH_SSD) -> np.ndarray:
    """(3, 256): :func:`normalize` of every uint8 value, per channel."""
    return np.ascontiguousarray(normalize(np.repeat(np.arange(256, dtype=np.float32)[:, None], 3, axis=1), norm).T)


def preprocess(image: np.ndarray, width: int, height: int, norm: Normalization = PYTORCH_SSD,
               bgr: bool = True, layout: str = "NCHW") -> np.ndarray:
    """Frame (HxWx3 uint8, BGR by default as OpenCV reads it) to a float32 batch of one, normalised."""
    x = normalize(resize_rgb(image, width, height, bgr=bgr), norm)
    if layout == "NCHW":
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    if layout == "NHWC":
        return x[None]
    raise ValueError(f"unknown layout {layout!r}: use NCHW or NHWC")


def input_lut(norm: Normalization, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    """A (3, 256) table mapping a uint8 RGB value per channel to the quantised model input."""
    real = value_table(norm)
    info = np.iinfo(dtype)
    q = np.clip(np.round(real / scale) + zero_point, info.min, info.max)
    return q.astype(dtype)


def apply_lut(rgb: np.ndarray, lut: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Apply a (3, 256) per-channel table to an HxWx3 uint8 RGB image."""
    if out is None:
        out = np.empty(rgb.shape, dtype=lut.dtype)
    for c in range(3):
        np.take(lut[c], rgb[..., c], out=out[..., c])
    return out


def decode_image(data: np.ndarray) -> np.ndarray | None:
    """BGR uint8 from an encoded file's bytes, or None when it cannot be decoded. A JPEG without its end-of-image
    marker (a truncated copy) counts as undecodable: libjpeg would return it grey-filled below the cut."""
    if not data.size:
        return None
    if data[:2].tobytes() == b"\xff\xd8" and b"\xff\xd9" not in data[-65536:].tobytes():
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def read_image(path) -> np.ndarray:
    """Read an image as BGR uint8, with a one-line error when it cannot be decoded."""
    data = np.fromfile(str(path), dtype=np.uint8)
    img = decode_image(data)
    if img is None:
        what = "empty file" if not data.size else "truncated or corrupt, or not a JPEG/PNG/BMP file"
        raise ValueError(f"cannot decode image {path} ({what}); replace or remove it")
    return img
