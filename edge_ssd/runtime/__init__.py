"""The device runtime: interpreter backends, the detector, the threaded pipeline and drawing.

The names below are imported on first use, so that ``edge_ssd.runtime.backends`` (the backend names the config
validates against) stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["Detector", "Pipeline", "SourceConfig", "available_backends", "load_detector", "open_backend"]
_HOME = {"available_backends": "backends", "open_backend": "backends", "Detector": "detector",
         "load_detector": "detector", "Pipeline": "pipeline", "SourceConfig": "pipeline"}

if TYPE_CHECKING:
    from .backends import available_backends, open_backend
    from .detector import Detector, load_detector
    from .pipeline import Pipeline, SourceConfig


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
