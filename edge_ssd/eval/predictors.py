"""Model side of evaluation: the device's own detector turned into a :class:`Predictor` (``bgr -> Detections``).

Every model type (``.onnx``, ``.tflite``, a bundle directory) is loaded by :func:`edge_ssd.runtime.load_detector`:
evaluation runs the same preprocessing, inference and post-processing as ``detect`` and the daemon, with
``score_threshold`` 0.01 (pytorch-ssd's eval setting). Labels come from
:func:`edge_ssd.model.labels.resolve_labels` through the loader.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.box import Detections

EVAL_PROB_THRESHOLD = 0.01


@dataclass
class Predictor:
    fn: Callable[[np.ndarray], Detections]
    labels: list[str] | None = None
    description: str = ""
    info: dict = field(default_factory=dict)

    def __call__(self, bgr: np.ndarray) -> Detections:
        return self.fn(bgr)


def load_predictor(path, labels=None, prob_threshold: float = EVAL_PROB_THRESHOLD, threads: int | None = None,
                   normalization=None, labels_required: bool = False) -> Predictor:
    """A predictor for an ``.onnx``, a ``.tflite`` or a bundle directory, through the runtime's loader
    (``labels_required``: a model without labels is a one-line error, not ``class1...``)."""
    from ..runtime.detector import load_detector

    path = Path(path)
    if not path.exists():
        raise UserError(f"model {path} does not exist (give an .onnx file, a .tflite file or a bundle directory)")
    det = load_detector(path, score_threshold=prob_threshold, labels=labels, threads=threads,
                        normalization=normalization, labels_required=labels_required)
    w, h = det.input_size
    return Predictor(det.detect, list(det.labels), f"{det.backend.describe()} {path.name} ({w}x{h})",
                     {"width": w, "height": h, "scores": det.scores_name, "boxes": det.boxes_name})


def onnx_predictor(path, labels=None, prob_threshold: float = EVAL_PROB_THRESHOLD, threads: int | None = None
                   ) -> Predictor:
    """:func:`load_predictor` for an ``.onnx`` model (ONNX Runtime, the reference path)."""
    if Path(path).suffix.lower() != ".onnx":
        raise UserError(f"{path}: not an .onnx model; use load_predictor for .tflite files and bundles")
    return load_predictor(path, labels=labels, prob_threshold=prob_threshold, threads=threads)
