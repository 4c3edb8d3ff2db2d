"""``open_source(spec)``: a capture source from a string.

=================================  ==========================================
spec                               source
=================================  ==========================================
``"0"``, ``"/dev/video0"``         :class:`CameraSource` (V4L2)
``"rtsp://..."``, ``"http://..."``  :class:`StreamSource` (FFmpeg)
``"clip.mp4"``                     :class:`VideoFileSource`
``"photo.jpg"``, ``"dir/"``        :class:`ImageSource`
``"picamera2"``, ``"picamera2:1"``  :class:`Picamera2Source`
=================================  ==========================================

Cameras and streams default to latest-frame mode and reconnect forever; files and folders default to
"process all frames". The returned source is not opened yet: call ``open()`` (or let the pipeline do it).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .base import Source
from .images import IMAGE_EXTS, ImageSource
from .opencv_source import STREAM_SCHEMES, CameraSource, StreamSource, VideoFileSource
from .picamera2_source import Picamera2Source

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpg", ".mjpeg", ".ts", ".h264", ".mpg", ".wmv")


def parse_size(s: str | tuple | list | None) -> tuple[int, int] | None:
    if s is None or isinstance(s, (tuple, list)):
        return tuple(s) if s else None
    try:
        w, h = (int(v) for v in str(s).lower().split("x"))
    except ValueError:
        raise UserError(f"bad size {s!r}: use WIDTHxHEIGHT, e.g. 640x480") from None
    return w, h


def source_kind(spec: str) -> str:
    """"camera", "stream", "picamera2", "images" or "file" for a source string (no I/O except stat)."""
    s = str(spec).strip()
    if s.isdigit() or s.startswith("/dev/video"):
        return "camera"
    if s.lower().startswith(STREAM_SCHEMES):
        return "stream"
    if s == "picamera2" or s.startswith("picamera2:"):
        return "picamera2"
    p = Path(s)
    if p.is_dir() or p.suffix.lower() in IMAGE_EXTS:
        return "images"
    return "file"


def open_source(spec: str | int, name: str | None = None, *, latest: bool | None = None,
                realtime: bool | None = None, loop: bool = False, size=None, fps: float | None = None,
                fail_fast: bool = False, max_frame_age: float | None = None, **kw) -> Source:
    """A source for ``spec`` (see the table above). ``latest`` defaults to True for live sources, False for
    files/folders; ``realtime`` (files: pace at the file's FPS) defaults to ``latest``."""
    s = str(spec).strip()
    if not s:
        raise UserError("empty source; pass a camera index, /dev/videoN, a URL, a file or a folder")
    kind = source_kind(s)
    size = parse_size(size)
    common = dict(fail_fast=fail_fast, max_frame_age=max_frame_age, **kw)
    if kind == "camera":
        dev: int | str = int(s) if s.isdigit() else s
        return CameraSource(dev, name=name, size=size, fps=fps, latest=True if latest is None else latest, **common)
    if kind == "stream":
        return StreamSource(s, name=name, latest=True if latest is None else latest, **common)
    if kind == "picamera2":
        cam = s.split(":", 1)[1] if ":" in s else "0"
        if not cam.isdigit():
            raise UserError(f"bad camera number in {s!r}: use picamera2 or picamera2:N")
        return Picamera2Source(int(cam), name=name, size=size, fps=fps,
                               latest=True if latest is None else latest, **common)
    p = Path(s)
    if not p.exists():
        raise UserError(f"input {s} not found; pass an image, a folder of images, a video file, a camera index "
                        "(0), /dev/videoN, picamera2 or an rtsp:// / http:// URL")
    latest = False if latest is None else latest
    if kind == "images":
        return ImageSource(p, name=name, loop=loop, latest=latest, fps=fps, **common)
    if p.suffix.lower() not in VIDEO_EXTS:
        # unknown extension: let OpenCV try, it knows more containers than this list
        pass
    return VideoFileSource(p, name=name, realtime=latest if realtime is None else realtime, loop=loop,
                           latest=latest, **common)
