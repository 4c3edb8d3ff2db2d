"""Evaluation: VOC-style mAP of a model (ONNX, TFLite, bundle) or of precomputed detections on a dataset."""

from .evaluate import evaluate, evaluate_detections, format_report
from .predictors import Predictor, load_predictor, onnx_predictor

__all__ = ["Predictor", "evaluate", "evaluate_detections", "format_report", "load_predictor", "onnx_predictor"]
