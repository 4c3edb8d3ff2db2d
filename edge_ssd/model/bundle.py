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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FORMAT = "edge-ssd-bundle"
VERSION = 2  # 2: the tail's orders and per-channel variances (Postprocess); version 1 loads with defaults
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


OFFSET_TOKENS = ("cx", "cy", "w", "h")
CORNER_TOKENS = ("x1", "y1", "x2", "y2")


def _order(value: str, tokens: tuple[str, ...], what: str) -> str:
    parts = [t.strip() for t in str(value).split(",")]
    if sorted(parts) != sorted(tokens):
        raise ValueError(f"{what} {value!r} must name each of {','.join(tokens)} once (e.g. {','.join(tokens)})")
    return ",".join(parts)


class Postprocess(_Strict):
    """The SSD tail as data: everything the device needs to turn raw outputs into detections, so any SSD whose
    tail is "score function + box decoding over constants" (pytorch-ssd, Ultra-Light, TF Object Detection API
    through tf2onnx, ...) is decoded by the one implementation in :mod:`edge_ssd.model.box`. Every field was
    read from the source graph and proved numerically by ``edge-ssd convert`` (zero offsets give the priors,
    unit offsets the variances, random offsets the graph's own boxes). Defaults are pytorch-ssd's, so
    version-1 manifests (which had none of the order fields) load unchanged.

    pytorch-ssd: ``offset_order "cx,cy,w,h"``, ``variances [0.1, 0.1, 0.2, 0.2]``, ``prior_layout "cx,cy,w,h"``,
    ``box_order "x1,y1,x2,y2"``, softmax, background column 0. TF Object Detection API (FasterRcnnBoxCoder with
    scale factors 10, 10, 5, 5): ``offset_order "cy,cx,h,w"`` (ty, tx, th, tw), ``variances [0.1, 0.1, 0.2, 0.2]``
    (1 / scale factor), ``prior_layout "cy,cx,h,w"`` (anchors ycenter, xcenter, h, w), ``box_order
    "y1,x1,y2,x2"``, sigmoid, background column 0 or none.
    """

    # "softmax"/"sigmoid": scores output holds logits; "none": it holds probabilities
    score_fn: Literal["softmax", "sigmoid", "none"] = "softmax"
    # "offsets": boxes output holds raw offsets (order ``offset_order``), decoded against ``priors`` on the host;
    # "corners": boxes are already decoded corners in 0..1 (column order ``box_order``)
    box_encoding: Literal["offsets", "corners"] = "offsets"
    # the two scalars of pytorch-ssd's decode; ``variances`` (when set) overrides them per offset channel
    center_variance: float = 0.1
    size_variance: float = 0.2
    # column order of the raw offsets: cx,cy = center offsets, w,h = log-size offsets (TF: "cy,cx,h,w")
    offset_order: str = "cx,cy,w,h"
    # one multiplier per offset channel, in ``offset_order`` (TF box coder: 1 / scale_factors); None means
    # (center_variance, center_variance, size_variance, size_variance) in cx,cy,w,h terms
    variances: list[float] | None = Field(default=None, min_length=4, max_length=4)
    # column order of ``priors`` (TF anchors: "cy,cx,h,w"), normalised 0..1
    prior_layout: str = "cx,cy,w,h"
    # column order of decoded corner boxes in the source graph (and of ``boxes`` when box_encoding is
    # "corners"); the device's detections are always x1,y1,x2,y2 (= xmin, ymin, xmax, ymax)
    box_order: str = "x1,y1,x2,y2"
    priors: list[list[float]] | None = None  # (N, 4) in ``prior_layout``; required for "offsets"
    # the background column of the scores (skipped by NMS), or None when every column is an object class
    background_class: int | None = 0
    iou_threshold: float = 0.45
    score_threshold: float = 0.5
    candidate_size: int = 200
    top_k: int = -1

    @field_validator("offset_order", "prior_layout")
    @classmethod
    def _offsets(cls, v: str) -> str:
        return _order(v, OFFSET_TOKENS, "offset order")

    @field_validator("box_order")
    @classmethod
    def _corners(cls, v: str) -> str:
        return _order(v, CORNER_TOKENS, "box order")

    def variances_in_offset_order(self) -> list[float]:
        if self.variances is not None:
            return [float(v) for v in self.variances]
        by_token = {"cx": self.center_variance, "cy": self.center_variance, "w": self.size_variance,
                    "h": self.size_variance}
        return [float(by_token[t]) for t in self.offset_order.split(",")]


class Manifest(_Strict):
    format: Literal["edge-ssd-bundle"] = "edge-ssd-bundle"
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


def _problems(e: ValidationError) -> str:
    """Every problem of a pydantic error in one line: "missing input, scores; input.shape: ..." """
    missing = [".".join(map(str, err["loc"])) for err in e.errors() if err["type"] == "missing"]
    other = [f"{'.'.join(map(str, err['loc'])) or '(top level)'}: {err['msg']}" for err in e.errors()
             if err["type"] != "missing"]
    parts = ([f"missing {', '.join(missing)}"] if missing else []) + other[:4]
    more = f" (and {len(other) - 4} more)" if len(other) > 4 else ""
    return "; ".join(parts) + more


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
    except ValidationError as e:
        raise BundleError(f"{mpath}: invalid manifest: {_problems(e)}; re-run `edge-ssd convert` or fix the "
                          "file") from None
    n_classes = m.scores.shape[-1] if len(m.scores.shape) == 3 else None
    if not m.labels or (n_classes and len(m.labels) != n_classes):
        raise BundleError(f"{mpath}: labels has {len(m.labels)} entries but the model scores "
                          f"{n_classes or 'some'} classes; write one label per class (background first) into "
                          "the manifest's labels")
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
