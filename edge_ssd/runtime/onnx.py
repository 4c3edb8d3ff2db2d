"""ONNX Runtime: the one session factory, and which of an SSD's two outputs holds scores and which boxes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import DependencyError, UserError


def onnx_session(model, threads: int | None = None, source: str | Path | None = None):
    """A CPU ``onnxruntime.InferenceSession`` for ``model`` (a path, serialised bytes or an ``onnx.ModelProto``),
    quiet, with one-line errors."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise DependencyError("onnxruntime is not installed; `pip install onnxruntime` (or "
                              "`pip install edge-ssd[convert]`) to run .onnx models") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    name = source or (model if isinstance(model, str) else "model")
    try:
        return ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own, unexported exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"cannot load ONNX model {name}: {first} (is it a valid exported .onnx file?)") from None


def identify_outputs(shapes: Mapping[str, Sequence[int]], source: str | Path,
                     n_classes: int | None = None) -> tuple[str, str]:
    """Names of (scores, boxes) among two outputs: by name (``scores``/``boxes``), else by shape (boxes end in
    4, scores in the class count)."""
    names = list(shapes)
    if len(names) != 2:
        raise UserError(f"{source}: expected 2 outputs (scores, boxes), found {len(names)} ({', '.join(names)}); "
                        "convert the model with `edge-ssd convert` to get a bundle with a manifest")
    by_name = {n.split(":")[0].lower(): n for n in names}
    if "scores" in by_name and "boxes" in by_name:
        return by_name["scores"], by_name["boxes"]
    a, b = names
    sa, sb = list(shapes[a]), list(shapes[b])
    if sa[-1:] == [4] and sb[-1:] != [4]:
        return b, a
    if sb[-1:] == [4] and sa[-1:] != [4]:
        return a, b
    if n_classes == 4:  # both end in 4: 3 object classes + background; pytorch-ssd's order is scores first
        return a, b
    raise UserError(f"{source}: cannot tell scores from boxes by shape ({sa} and {sb}); export the outputs named "
                    "`scores` and `boxes`, or use a bundle (`edge-ssd convert`) whose manifest names them")
