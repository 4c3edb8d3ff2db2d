"""The shared paths of the test suite: this checkout, its venvs and the read-only data in ../shared."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FACE_DIR = SHARED / "models" / "ultralight-face"
FACE_ONNX = FACE_DIR / "version-slim-320.onnx"
FACE_LABELS = FACE_DIR / "voc-model-labels.txt"
FACES = SHARED / "data" / "faces"
PHOTOS = SHARED / "data" / "photos"
VOC = SHARED / "data" / "voc-sample"
EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"
ONNX2TF = REPO / "convert" / ".venv" / "bin" / "onnx2tf"
