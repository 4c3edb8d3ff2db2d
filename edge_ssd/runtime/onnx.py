"""ONNX Runtime in one place: the CPU session factory and the identification of an SSD's scores/boxes outputs.

``session(model)`` takes a path, an ``onnx.ModelProto`` or serialized bytes; load failures become one-line
``UserError``s. ``scores_boxes(outputs)`` tells which of two ``(name, shape)`` outputs holds the class scores
and which the boxes: by name (``scores``/``boxes``, any ``:0`` suffix or case) first, else by shape (boxes end
in 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import DependencyError, UserError

CPU = ["CPUExecutionProvider"]


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed; `pip install onnxruntime` (or "
                              "`pip install edge-ssd[convert]`) to run .onnx models") from None
    return ort


def session(model, threads: int | None = None, what: str | None = None):
    """An ``onnxruntime.InferenceSession`` on the CPU, quiet (errors only), ``threads`` intra-op threads
    (inter-op 1) when given. ``model``: a path, an ``onnx.ModelProto`` or its serialized bytes."""
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if isinstance(model, (str, Path)):
        src, name = str(model), what or str(model)
    elif isinstance(model, bytes):
        src, name = model, what or "the model"
    else:
        src, name = model.SerializeToString(), what or "the model"
    try:
        return ort.InferenceSession(src, sess_options=opts, providers=CPU)
    except Exception as e:  # noqa: BLE001 (onnxruntime raises its own, unexported exception types)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot load ONNX model {name}: {first} (is it a valid .onnx file?)") from None


def scores_boxes(outputs: Sequence[tuple[str, Sequence]], n_classes: int | None = None,
                 where: str = "model") -> tuple[str, str]:
    """The names of the (scores, boxes) outputs among ``outputs`` = ``[(name, shape), ...]``.

    By name first; else by shape: the boxes end in 4, the scores in the class count. When both end in 4
    (3 object classes + background) the first is taken as scores (pytorch-ssd's order) if ``n_classes`` is 4.
    """
    names = [n for n, _ in outputs]
    if len(names) != 2:
        raise UserError(f"{where}: expected 2 outputs (scores, boxes), found {len(names)} ({', '.join(names)}); "
                        "convert the model with `edge-ssd convert` to get a bundle with a manifest")
    by_name = {n.split(":")[0].lower(): n for n in names}
    if "scores" in by_name and "boxes" in by_name:
        return by_name["scores"], by_name["boxes"]
    (a, sa), (b, sb) = ((n, tuple(s)) for n, s in outputs)
    ends_a, ends_b = bool(sa) and sa[-1] == 4, bool(sb) and sb[-1] == 4
    if ends_a and not ends_b:
        return b, a
    if ends_b and not ends_a:
        return a, b
    if ends_a and ends_b and n_classes == 4:
        return a, b
    raise UserError(f"{where}: cannot tell scores from boxes by shape ({list(sa)} and {list(sb)}); name the "
                    "outputs 'scores' and 'boxes', or use a bundle (`edge-ssd convert`) whose manifest names them")
