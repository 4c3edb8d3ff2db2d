"""OpenCV sources: a camera (device index or /dev/videoN), an RTSP/HTTP stream, or a video file."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..redact import mask
from .base import Source, SourceEnded, SourceError

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
OPEN_TIMEOUT_MS = 5000
READ_TIMEOUT_MS = 5000
MAX_CORRUPT_IN_A_ROW = 25  # consecutive undecodable frames in a file before it counts as truncated


def _device_path(dev: int | str) -> str:
    return f"/dev/video{dev}" if isinstance(dev, int) else str(dev)



def _read(cap, error: str) -> np.ndarray:
    ok, img = cap.read()
    if not ok or img is None:
        raise SourceError(error)
    return img


def _release(cap) -> None:
    if cap is not None:
        cap.release()

class CameraSource(Source):
    """A V4L2 camera by index (``0``) or path (``/dev/video0``)."""

    kind = "camera"

    def __init__(self, device: int | str, name: str | None = None, size: tuple[int, int] | None = None,
                 fps: float | None = None, **kw):
        super().__init__(name or str(device), **kw)
        self.device = device
        self.size = size
        self.cam_fps = fps
        self._cap: cv2.VideoCapture | None = None

    def _connect(self) -> None:
        path = _device_path(self.device)
        if path.startswith("/dev/") and not os.path.exists(path):
            raise SourceError(f"{path} does not exist")
        dev = self.device if isinstance(self.device, int) else str(self.device)
        cap = cv2.VideoCapture(dev, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{path} exists but cannot be opened (busy, or no permission)")
        if self.size:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.size[0])
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.size[1])
        if self.cam_fps:
            cap.set(cv2.CAP_PROP_FPS, self.cam_fps)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # keep the driver's queue short: we want the newest frame
        self._cap = cap

    def _grab(self) -> np.ndarray:
        return _read(self._cap, f"camera {self.name}: no frame (unplugged?)")

    def _disconnect(self) -> None:
        self._cap = _release(self._cap)

    def _open_error(self, e: Exception) -> str:
        path = _device_path(self.device)
        return (f"cannot open camera {self.device} ({e}); plug a camera in, check `ls /dev/video*`, that the user "
                f"is in the 'video' group and that no other process uses {path}")


class StreamSource(Source):
    """An RTSP/HTTP(S) stream via FFmpeg, with open/read timeouts so a dead stream is noticed."""

    kind = "stream"

    def __init__(self, url: str, name: str | None = None, open_timeout_ms: int = OPEN_TIMEOUT_MS,
                 read_timeout_ms: int = READ_TIMEOUT_MS, **kw):
        super().__init__(name or mask(url), **kw)
        self.url = url
        self.open_timeout_ms = open_timeout_ms
        self.read_timeout_ms = read_timeout_ms
        self._cap: cv2.VideoCapture | None = None

    def _connect(self) -> None:
        if self.url.startswith("rtsp") and "OPENCV_FFMPEG_CAPTURE_OPTIONS" not in os.environ:
            os.environ["OPENCV_FFMPEG_CAPTURE_OPTIONS"] = "rtsp_transport;tcp"
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot connect to {mask(self.url)}")
        self._cap = cap

    def _grab(self) -> np.ndarray:
        return _read(self._cap, f"stream {self.name}: no frame (stream ended or stalled)")

    def _disconnect(self) -> None:
        self._cap = _release(self._cap)

    def _open_error(self, e: Exception) -> str:
        return (f"cannot open stream {mask(self.url)} ({e}); check the URL, credentials and that the camera is "
                "reachable (try it with ffplay or VLC)")


class VideoFileSource(Source):
    """A video file. ``realtime``: paced at the file's FPS (as a camera would deliver it); otherwise as fast
    as the consumer reads. ``loop``: start again at the end (then it never ends)."""

    kind = "file"
    finite = True

    def __init__(self, path: str | Path, name: str | None = None, realtime: bool = False, loop: bool = False,
                 **kw):
        self.path = Path(path)
        super().__init__(name or str(path), **kw)
        self.realtime = realtime
        self.loop = loop
        self.finite = not loop
        self.file_fps: float = 0.0
        self.frame_count = 0
        self._cap: cv2.VideoCapture | None = None
        self._corrupt_run = 0
        if not self.path.is_file():
            raise UserError(f"video file {self.path} not found; check the path")

    def _connect(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path} not found")
        cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise UserError(f"{self.path}: cannot open as a video (unsupported or corrupt file); "
                            "re-encode it, e.g. `ffmpeg -i IN -c:v mjpeg OUT.avi`")
        self.file_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.frame_count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if self.realtime:
            self.pace_fps = self.file_fps if 0 < self.file_fps < 1000 else 25.0
        self._cap = cap

    def _grab(self) -> np.ndarray:
        while True:
            ok, img = self._cap.read()
            if ok and img is not None:
                self._corrupt_run = 0
                return img
            pos = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0)
            if self.frame_count and pos < self.frame_count and self._corrupt_run < MAX_CORRUPT_IN_A_ROW:
                # an undecodable frame inside the file: skip it, keep going
                self._corrupt_run += 1
                self.dropped["corrupt"] += 1
                if self._corrupt_run == 1:  # one line per damaged stretch, not one per frame
                    log.warning("%s: frame %d cannot be decoded: skipping undecodable frames", self.name, pos)
                if not self._cap.grab():  # advance past it; give up at the real end
                    if self._corrupt_run >= MAX_CORRUPT_IN_A_ROW:
                        log.warning("%s: no frame decodes after frame %d (of %d): the file looks truncated; "
                                    "stopping there", self.name, pos, self.frame_count)
                        break
                continue
            break
        if self.loop and self.frames:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, img = self._cap.read()
            if ok and img is not None:
                return img
        raise SourceEnded()

    def _disconnect(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
