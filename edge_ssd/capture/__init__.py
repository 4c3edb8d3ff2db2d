"""Capture sources: cameras (V4L2, picamera2), streams, video files and image folders behind one interface."""

from .base import Backoff, Frame, Source, SourceEnded, SourceError
from .factory import open_source, source_kind

__all__ = ["Backoff", "Frame", "Source", "SourceEnded", "SourceError", "open_source", "source_kind"]
