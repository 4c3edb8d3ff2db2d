"""Export a MobileNet-SSD to ONNX with pytorch-ssd's contract, and prove the file before writing it.

The graph: input ``input`` 1x3x300x300 float32 ((rgb - 127) / 128), outputs ``scores`` (1, N, C) softmaxed and
``boxes`` (1, N, 4) corner form 0..1. The tail is pytorch-ssd's own (softmax, then Slice/Mul/Exp/Add/Concat
decoding with the priors folded into constants), which the converter recognises and cuts.

Before the final file appears, the export is checked with ``onnx.checker`` and ONNX Runtime is run against
the PyTorch forward on an image; only then is the temporary file renamed into place.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DependencyError, UserError
from ..model.labels import read_training_labels
from ..model.priors import CENTER_VARIANCE, IMAGE_MEAN, IMAGE_STD, IOU_THRESHOLD, SIZE_VARIANCE, specs_to_json

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 10, 17
META_PREFIX = "edge_ssd."
# the strict pytorch-ssd reader (line count = num_classes), kept importable here for export and fetch-model
read_labels = read_training_labels


@dataclass
class ExportReport:
    path: Path
    opset: int
    arch: str
    width_mult: float
    num_classes: int
    num_priors: int
    max_abs_err_scores: float
    max_abs_err_boxes: float
    check_image: str
    metadata: dict[str, str] = field(default_factory=dict)


def synthetic_image(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A deterministic BGR test picture (gradients and filled shapes) for when no real image is given."""
    import cv2

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([xx / width * 255, yy / height * 255, (xx + yy) / (width + height) * 255], axis=-1)
    img = img.astype(np.uint8)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x0, y0), (x1, y1), color, -1)
        else:
            cv2.circle(img, (x0, y0), int(rng.integers(10, 80)), color, -1)
    return img


def _metadata(net, labels: list[str], extra: dict[str, str] | None) -> dict[str, str]:
    from .. import __version__

    meta = {
        "edge_ssd.labels": json.dumps(labels),
        "edge_ssd.arch": net.arch,
        "edge_ssd.width_mult": f"{net.width_mult:g}",
        "edge_ssd.num_classes": str(net.num_classes),
        "edge_ssd.image_size": str(net.image_size),
        "edge_ssd.specs": json.dumps(specs_to_json(net.specs)),
        "edge_ssd.center_variance": f"{CENTER_VARIANCE:g}",
        "edge_ssd.size_variance": f"{SIZE_VARIANCE:g}",
        "edge_ssd.iou_threshold": f"{IOU_THRESHOLD:g}",
        "edge_ssd.mean": json.dumps(list(IMAGE_MEAN)),
        "edge_ssd.std": json.dumps([IMAGE_STD] * 3),
        "edge_ssd.outputs": "scores=softmax,boxes=corner",
        "edge_ssd.version": __version__,
    }
    meta.update(extra or {})
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``edge_ssd.*`` metadata_props of an exported model (labels stay a JSON string)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}


def _torch_export(net, x, path: Path, opset: int) -> None:
    import torch

    kwargs = dict(
        input_names=["input"],
        output_names=["scores", "boxes"],
        opset_version=opset,
        do_constant_folding=True,
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(net, (x,), str(path), dynamo=False, **kwargs)
        except TypeError:  # older torch without the dynamo switch
            torch.onnx.export(net, (x,), str(path), **kwargs)


def _compare(path: Path, x_np: np.ndarray, ref_scores: np.ndarray, ref_boxes: np.ndarray, atol: float,
             check_image_name: str, threads: int, source: Path) -> tuple[float, float]:
    """Run the exported ``path`` with ONNX Runtime on ``x_np``; the max abs errors (scores, boxes) against the
    PyTorch outputs. Raises ``UserError`` when the contract or the numbers are off."""
    from ..runtime.onnx import onnx_session

    sess = onnx_session(path, threads=threads, source=source)
    names = [o.name for o in sess.get_outputs()]
    if names != ["scores", "boxes"] or [i.name for i in sess.get_inputs()] != ["input"]:
        raise UserError(f"exported graph has outputs {names}; expected ['scores', 'boxes'] (internal error)")
    got_scores, got_boxes = sess.run(["scores", "boxes"], {"input": x_np})
    if got_scores.shape != ref_scores.shape or got_boxes.shape != ref_boxes.shape:
        raise UserError(
            f"ONNX output shapes {got_scores.shape}/{got_boxes.shape} differ from PyTorch "
            f"{ref_scores.shape}/{ref_boxes.shape} (internal error)"
        )
    with np.errstate(invalid="ignore", over="ignore"):
        err_s = float(np.max(np.abs(got_scores - ref_scores)))
        err_b = float(np.max(np.abs(got_boxes - ref_boxes)))
    # boxes from random weights can be huge (exp of raw offsets); judge them relative to their magnitude
    box_scale = max(1.0, float(np.max(np.abs(ref_boxes))))
    if not (math.isfinite(err_s) and math.isfinite(err_b)) or err_s > atol or err_b > atol * box_scale:
        raise UserError(
            f"ONNX Runtime differs from PyTorch on {check_image_name}: max abs error scores {err_s:.2e}, "
            f"boxes {err_b:.2e} (tolerance {atol:g}); try another --opset"
        )
    return err_s, err_b


def export_onnx(
    net,
    labels: list[str],
    out_path: str | os.PathLike,
    opset: int = 13,
    check_image: np.ndarray | None = None,
    check_image_name: str = "synthetic",
    atol: float = 1e-4,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``net`` (an :class:`~edge_ssd.nets.SSD`) to ``out_path``; check and compare it first.

    ``check_image`` is a BGR uint8 picture for the ONNX Runtime vs PyTorch comparison (a synthetic one when
    None). Raises ``UserError`` when the export fails the checker or differs by more than ``atol``.
    """
    try:
        import onnx
        import onnxruntime  # noqa: F401 (the export is checked with it)
        import torch
    except ImportError as e:
        raise DependencyError(f"export needs {e.name}; install the extras: pip install 'edge-ssd[train]'") from None
    from ..model.preprocess import PYTORCH_SSD, preprocess

    if not (MIN_OPSET <= int(opset) <= MAX_OPSET):
        raise UserError(f"opset {opset} is not supported; use --opset between {MIN_OPSET} and {MAX_OPSET}")
    if len(labels) != net.num_classes:
        raise UserError(
            f"{len(labels)} labels for a {net.num_classes}-class network; the labels file must have one line per "
            "class, BACKGROUND included"
        )
    out = Path(out_path)
    if out.is_dir():
        raise UserError(f"output {str(out)!r} is a directory; pass -o with a file name such as model.onnx")
    if not out.parent.exists():
        raise UserError(f"output directory {str(out.parent)!r} does not exist; create it first")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    was_test, was_raw, was_training = net.is_test, net.raw, net.training
    net.is_test, net.raw = True, False
    net.eval()
    try:
        img = synthetic_image() if check_image is None else check_image
        x_np = preprocess(img, net.image_size, net.image_size, PYTORCH_SSD)
        x = torch.from_numpy(x_np)
        with torch.no_grad():
            ref_scores, ref_boxes = (t.numpy() for t in net(x))
            _torch_export(net, x, tmp, int(opset))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"the exported graph fails onnx.checker ({msg[:200]}); try another --opset") from None
        model = onnx.load(str(tmp))
        meta = _metadata(net, labels, metadata)
        del model.metadata_props[:]
        for k, v in meta.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = k, v
        model.producer_name = "edge-ssd"
        onnx.save(model, str(tmp))
        err_s, err_b = _compare(tmp, x_np, ref_scores, ref_boxes, atol, check_image_name,
                                threads=max(1, min(2, torch.get_num_threads())), source=out)
        os.replace(tmp, out)
    finally:
        net.is_test, net.raw = was_test, was_raw
        net.train(was_training)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    log.debug("exported %s: opset %d, max abs error scores %.2e boxes %.2e", out, opset, err_s, err_b)
    return ExportReport(
        path=out, opset=int(opset), arch=net.arch, width_mult=net.width_mult, num_classes=net.num_classes,
        num_priors=net.num_priors, max_abs_err_scores=err_s, max_abs_err_boxes=err_b,
        check_image=check_image_name, metadata=meta,
    )  # fmt: skip
