"""The Raspberry Pi camera through picamera2 (libcamera), imported lazily.

On Raspberry Pi OS picamera2 comes from apt (``sudo apt install python3-picamera2``), not pip: a virtual
environment must be created with ``--system-site-packages`` to see it. The main stream is configured as
``RGB888`` at a model-friendly size; libcamera's RGB888 is stored B, G, R in memory, i.e. exactly the BGR
layout OpenCV uses, so frames need no conversion.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DependencyError
from .base import Source, SourceError

log = logging.getLogger(__name__)

DEFAULT_SIZE = (640, 480)
PICAMERA2_HINT = ("on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the virtualenv with "
                  "`python3 -m venv --system-site-packages`")


def import_picamera2():
    """The Picamera2 class, or a DependencyError saying how to install it."""
    try:
        from picamera2 import Picamera2  # type: ignore[import-not-found]
    except ImportError as e:
        raise DependencyError(f"picamera2 is not available ({e}); {PICAMERA2_HINT}") from None
    return Picamera2


class Picamera2Source(Source):
    """A Pi camera. ``picamera2_cls`` replaces the Picamera2 class (tests inject a fake one)."""

    kind = "picamera2"

    def __init__(self, camera: int = 0, name: str | None = None, size: tuple[int, int] | None = None,
                 fps: float | None = None, picamera2_cls=None, **kw):
        super().__init__(name or f"picamera2:{camera}", **kw)
        self.camera = camera
        self.size = tuple(size) if size else DEFAULT_SIZE
        self.cam_fps = fps
        self._cls = picamera2_cls
        self._cam = None

    def _connect(self) -> None:
        cls = self._cls or import_picamera2()  # DependencyError is a UserError: reported, not retried
        try:
            cam = cls(self.camera)
        except (IndexError, RuntimeError) as e:
            raise SourceError(f"no Pi camera {self.camera} ({e}); check the ribbon cable and `rpicam-hello "
                              "--list-cameras`") from None
        try:
            controls = {"FrameRate": float(self.cam_fps)} if self.cam_fps else {}
            config = cam.create_video_configuration(main={"size": self.size, "format": "RGB888"},
                                                    buffer_count=2, controls=controls)
            cam.configure(config)
            cam.start()
        except Exception as e:  # noqa: BLE001 - libcamera raises its own types: reported as a capture failure
            try:
                cam.close()
            except Exception:  # noqa: BLE001 - best effort on the way out
                pass
            raise SourceError(f"Pi camera {self.camera} cannot start: {e}") from None
        self._cam = cam

    def _grab(self) -> np.ndarray:
        img = self._cam.capture_array("main")
        if img is None or img.ndim != 3:
            raise SourceError(f"Pi camera {self.camera}: bad frame")
        if img.shape[2] == 4:  # XRGB8888 configured by someone else: drop the padding byte
            img = img[:, :, :3]
        return np.ascontiguousarray(img)

    def _disconnect(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
            finally:
                cam.close()

    def _open_error(self, e: Exception) -> str:
        return f"cannot open Pi camera {self.camera}: {e}"
