"""The bundle: the one artefact that crosses from the workstation (``edge-ssd convert``) to the device.

A bundle is a directory holding ``manifest.json`` and the model file(s) it names. The manifest says
everything the device needs and nothing it must guess (see ``Manifest`` below). The device side imports
neither onnx nor TensorFlow: only this module, numpy and a TFLite interpreter.

Layout::

    model.bundle/
      manifest.json      # this schema
      model.tflite       # int8 body (outputs raw logits/offsets when the tail was cut)
      report.json        # validation report of the conversion (optional)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

FORMAT = "edge-ssd-bundle"
VERSION = 1
MANIFEST = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quant(_Strict):
    scale: float
    zero_point: int


class InputSpec(_Strict):
    name: str
    shape: list[int]  # e.g. [1, 300, 300, 3]
    layout: Literal["NHWC", "NCHW"] = "NHWC"
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    color: Literal["RGB", "BGR"] = "RGB"
    mean: list[float] = Field(default_factory=lambda: [127.0, 127.0, 127.0])
    std: list[float] = Field(default_factory=lambda: [128.0, 128.0, 128.0])
    resize: Literal["stretch"] = "stretch"
    quant: Quant | None = None

    @property
    def height(self) -> int:
        return self.shape[1] if self.layout == "NHWC" else self.shape[2]

    @property
    def width(self) -> int:
        return self.shape[2] if self.layout == "NHWC" else self.shape[3]


class OutputSpec(_Strict):
    name: str  # tensor name in the model file (or a logical name when ``parts`` is set)
    shape: list[int]
    dtype: Literal["float32", "int8", "uint8"] = "float32"
    quant: Quant | None = None
    # When set, this output is the concatenation along axis 1 (the priors axis), in this order, of these model
    # outputs, one per SSD head. The converter cuts before the heads' Concat because an int8 CONCATENATION of
    # inputs with different scales is mis-quantised by the toolchain; each head keeps its own scale this way.
    parts: list[OutputSpec] = Field(default_factory=list)

    def tensor_names(self) -> list[str]:
        return [p.name for p in self.parts] if self.parts else [self.name]


class Postprocess(_Strict):
    # "softmax"/"sigmoid": scores output holds logits; "none": it holds probabilities
    score_fn: Literal["softmax", "sigmoid", "none"] = "softmax"
    # "offsets": boxes output holds raw (cx, cy, w, h) offsets, decoded against priors on the host;
    # "corners": boxes are already decoded corner form (x1, y1, x2, y2) in 0..1
    box_encoding: Literal["offsets", "corners"] = "offsets"
    center_variance: float = 0.1
    size_variance: float = 0.2
    priors: list[list[float]] | None = None  # (N, 4) center form; required for "offsets"
    background_class: int | None = 0
    iou_threshold: float = 0.45
    score_threshold: float = 0.5
    candidate_size: int = 200
    top_k: int = -1


class Manifest(_Strict):
    format: Literal["edge-ssd-bundle"] = FORMAT
    version: int = VERSION
    model_file: str = "model.tflite"
    model_sha256: str
    target: Literal["cpu", "edgetpu", "float"] = "cpu"
    input: InputSpec
    scores: OutputSpec
    boxes: OutputSpec
    postprocess: Postprocess
    labels: list[str]
    source: dict = Field(default_factory=dict)  # source ONNX file name, sha256, arch
    converter: dict = Field(default_factory=dict)  # versions, backend, quantization type, flags
    fidelity: dict = Field(default_factory=dict)  # summary of the validation report

    def priors_array(self) -> np.ndarray | None:
        p = self.postprocess.priors
        return None if p is None else np.asarray(p, dtype=np.float32).reshape(-1, 4)


class BundleError(ValueError):
    pass


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a half-written manifest."""
    d = Path(bundle_dir)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (MANIFEST + ".tmp")
    tmp.write_text(manifest.model_dump_json(indent=1))
    tmp.replace(d / MANIFEST)
    return d / MANIFEST


def is_bundle(path: str | Path) -> bool:
    p = Path(path)
    return (p.is_dir() and (p / MANIFEST).is_file()) or p.name == MANIFEST


def fingerprint(path: str | Path) -> str | None:
    """sha256 that changes whenever the model at ``path`` changes: the manifest's for a bundle (it holds the
    model file's sha256, labels and post-processing), the file's for a bare .onnx / .tflite; None if unreadable."""
    p = Path(path)
    try:
        return sha256_file(p / MANIFEST if p.is_dir() else p)
    except OSError:
        return None


def load_manifest(path: str | Path, verify: bool = True) -> tuple[Manifest, Path]:
    """Load a bundle directory (or its manifest.json); return the manifest and the model file's path."""
    p = Path(path)
    mpath = p / MANIFEST if p.is_dir() else p
    if not mpath.is_file():
        raise BundleError(f"{p}: no {MANIFEST} found; pass a bundle directory written by `edge-ssd convert`")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: manifest is not valid JSON ({e}); re-run `edge-ssd convert`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not an edge-ssd bundle manifest (format != {FORMAT!r})")
    if data.get("version", 0) > VERSION:
        raise BundleError(f"{mpath}: bundle version {data.get('version')} is newer than this edge-ssd "
                          f"supports ({VERSION}); upgrade edge-ssd on the device")
    try:
        m = Manifest.model_validate(data)
    except Exception as e:  # pydantic.ValidationError
        first = str(e).splitlines()
        raise BundleError(f"{mpath}: invalid manifest: {' '.join(first[:3])}") from None
    model_path = mpath.parent / m.model_file
    if not model_path.is_file():
        raise BundleError(f"{mpath}: model file {m.model_file} is missing from the bundle; copy the whole "
                          "bundle directory")
    if verify and sha256_file(model_path) != m.model_sha256:
        raise BundleError(f"{model_path}: sha256 does not match the manifest (corrupt or partial copy); "
                          "copy the bundle again")
    if m.postprocess.box_encoding == "offsets" and m.postprocess.priors is None:
        raise BundleError(f"{mpath}: box_encoding is 'offsets' but the manifest has no priors")
    return m, model_path
