"""A folder of images (or one image, or a list of files) as a finite source."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..model.preprocess import decode_image
from .base import Source, SourceEnded

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(path: str | Path) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
    return [p]


class ImageSource(Source):
    """Images in name order; an undecodable file is skipped, logged and counted (``dropped["corrupt"]``)."""

    kind = "images"
    finite = True

    def __init__(self, path: str | Path | list, name: str | None = None, loop: bool = False, **kw):
        if isinstance(path, (list, tuple)):
            self.paths = [Path(p) for p in path]
            label = name or "images"
        else:
            p = Path(path)
            if not p.exists():
                raise UserError(f"input {p} not found; pass an image, a folder of images, a video, a camera "
                                "index or a stream URL")
            self.paths = list_images(p)
            if not self.paths:
                raise UserError(f"{p}: no images found ({', '.join(IMAGE_EXTS)}); pass a folder with images")
            label = name or str(p)
        kw.setdefault("reconnect", False)
        super().__init__(label, **kw)
        self.loop = loop
        self.finite = not loop
        self._pos = 0
        self._current: Path | None = None

    def _connect(self) -> None:
        pass

    def _grab(self) -> np.ndarray:
        while True:
            if self._pos >= len(self.paths):
                if not self.loop or not self.frames:
                    raise SourceEnded()
                self._pos = 0
            p = self.paths[self._pos]
            self._pos += 1
            data = np.fromfile(str(p), dtype=np.uint8) if p.is_file() else np.zeros(0, np.uint8)
            img = decode_image(data)
            if img is None:
                self.dropped["corrupt"] += 1
                self.errors += 1
                log.warning("%s: cannot decode %s (%s), skipped", self.name, p,
                            "empty file" if not data.size else "truncated or not an image")
                continue
            self._current = p
            return img

    def _frame_path(self) -> str | None:
        return str(self._current) if self._current else None
