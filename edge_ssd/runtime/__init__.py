"""The device runtime: interpreter backends, the detector, the threaded pipeline and drawing."""

from .backends import available_backends, open_backend
from .detector import Detector, load_detector
from .pipeline import Pipeline, SourceConfig

__all__ = ["Detector", "Pipeline", "SourceConfig", "available_backends", "load_detector", "open_backend"]
