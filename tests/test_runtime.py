"""Runtime: backends, detector loading (bundle / .onnx / bare .tflite), preprocessing, quantisation."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _runtime_util import FACE_LABELS, FACE_ONNX

from edge_ssd.errors import DependencyError, UserError
from edge_ssd.model.preprocess import apply_lut, input_lut, preprocess, resize_rgb
from edge_ssd.runtime.backends import TensorInfo, available_backends, dequantize, open_backend
from edge_ssd.runtime.detector import Detector, InputConfig, PostprocessConfig, load_detector


def test_backend_selection_is_announced(face_bundle, caplog):
    with caplog.at_level(logging.INFO, logger="edge_ssd"):
        det = load_detector(face_bundle)
    assert det.backend_name == "litert"
    assert any("inference backend: litert" in r.getMessage() for r in caplog.records)
    det2 = load_detector(FACE_ONNX)
    assert det2.backend_name == "onnxruntime"
    assert "onnxruntime" in det2.describe()


def test_available_backends_lists_what_is_installed():
    av = {b["name"]: b for b in available_backends()}
    assert set(av) == {"litert", "tflite_runtime", "tensorflow", "edgetpu", "onnxruntime"}
    assert av["litert"]["available"] and av["onnxruntime"]["available"]
    import importlib.util

    assert av["tflite_runtime"]["available"] == (importlib.util.find_spec("tflite_runtime") is not None)


def test_missing_runtime_names_what_to_install(face_bundle):
    import importlib.util

    if importlib.util.find_spec("tflite_runtime") is not None:
        pytest.skip("tflite_runtime is installed here")
    with pytest.raises(DependencyError, match="pip install tflite-runtime"):
        open_backend(face_bundle / "model.tflite", backend="tflite_runtime")


def test_edgetpu_delegate_failure_is_a_clear_user_error(face_bundle):
    with pytest.raises(UserError) as e:
        open_backend(face_bundle / "model.tflite", backend="edgetpu")
    msg = str(e.value)
    assert "libedgetpu1-std" in msg and "udev" in msg and "replug" in msg
    assert "\n" not in msg


def test_wrong_backend_for_file_type(face_bundle):
    with pytest.raises(UserError, match="onnxruntime runs .onnx"):
        open_backend(face_bundle / "model.tflite", backend="onnxruntime")
    with pytest.raises(UserError, match="runs on onnxruntime"):
        open_backend(FACE_ONNX, backend="litert")


def test_threads_are_passed(face_bundle):
    det = load_detector(face_bundle, threads=1)
    assert det.backend.threads == 1 and "1 threads" in det.backend.describe()


def test_bundle_matches_onnx_reference(face_bundle, photos):
    """The converted float bundle on LiteRT finds the same faces as the source ONNX on ONNX Runtime."""
    tfl = load_detector(face_bundle, score_threshold=0.7)
    ref = load_detector(FACE_ONNX, score_threshold=0.7, labels=FACE_LABELS)
    assert tfl.labels == ref.labels == ["BACKGROUND", "face"]
    assert tfl.input_size == ref.input_size == (320, 240)
    total = 0
    for img in photos:
        a, b = tfl.detect(img), ref.detect(img)
        assert len(a) == len(b)
        total += len(a)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)
        assert np.all(a.class_ids == 1)
    assert total > 0


def test_preprocess_equals_reference_into_preallocated_buffer(face_bundle, photos):
    nhwc = load_detector(face_bundle)
    nchw = load_detector(FACE_ONNX)
    buf = nhwc.new_input_buffer()
    for img in photos:
        out = nhwc.preprocess(img, out=buf)
        assert out is buf
        np.testing.assert_array_equal(buf, preprocess(img, 320, 240, layout="NHWC"))
        np.testing.assert_array_equal(nchw.preprocess(img), preprocess(img, 320, 240, layout="NCHW"))
    with pytest.raises(ValueError):
        nhwc.preprocess(np.zeros((10, 10), np.uint8))


class _InputOnly:
    """Stands in for an int8 model's backend in a preprocessing-only test (no int8 model exists yet)."""

    name = "test"

    def __init__(self, dtype, layout):
        shape = (1, 300, 300, 3) if layout == "NHWC" else (1, 3, 300, 300)
        self.input = TensorInfo("input", shape, np.dtype(dtype), 0.0078125, -1 if dtype == np.int8 else 127)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_quantised_input_lut_matches_apply_lut(photos, dtype, layout):
    be = _InputOnly(dtype, layout)
    det = Detector(be, ["BACKGROUND", "x"], InputConfig(300, 300, layout=layout), PostprocessConfig(), "s", "b")
    lut = input_lut(det.inp.norm, be.input.scale, be.input.zero_point, dtype=dtype)
    for img in photos:
        x = det.preprocess(img)
        assert x.dtype == dtype and x.shape == be.input.shape
        want = apply_lut(resize_rgb(img, 300, 300), lut)
        if layout == "NCHW":
            want = want.transpose(2, 0, 1)
        np.testing.assert_array_equal(x[0], want)


def test_dequantize_uses_tensor_params():
    info = TensorInfo("scores", (1, 4), np.dtype(np.int8), 0.5, -3)
    x = np.array([[-3, -1, 0, 10]], np.int8)
    np.testing.assert_allclose(dequantize(x, info), [[0.0, 1.0, 1.5, 6.5]])
    f = TensorInfo("boxes", (1, 4), np.dtype(np.float32))
    y = np.ones((1, 4), np.float32)
    assert dequantize(y, f) is y


def test_bare_tflite_with_labels_file(face_bundle, photos, tmp_path, caplog):
    bare = tmp_path / "face.tflite"
    bare.write_bytes((face_bundle / "model.tflite").read_bytes())
    with pytest.raises(UserError, match="--labels"):
        load_detector(bare, labels_required=True)
    with caplog.at_level(logging.WARNING, logger="edge_ssd"):
        det = load_detector(bare, labels=FACE_LABELS, score_threshold=0.7)
    assert any("bare .tflite" in r.getMessage() for r in caplog.records)
    ref = load_detector(face_bundle, score_threshold=0.7)
    for img in photos:
        np.testing.assert_allclose(det.detect(img).boxes, ref.detect(img).boxes, atol=1e-6)
    # another model's labels in the same folder are never taken: class1 with a one-line warning
    (tmp_path / "voc-model-labels.txt").write_text("BACKGROUND\ndog\n")
    (tmp_path / "labels.txt").write_text("BACKGROUND\ncat\n")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_ssd"):
        det = load_detector(bare)
    assert det.labels == ["BACKGROUND", "class1"] and det.labels_source == "placeholder"
    assert any("no labels" in r.getMessage() and "--labels" in r.getMessage() for r in caplog.records)
    # a labels file named after the model is found: <stem>-labels.txt before <stem>.txt
    (tmp_path / "face.txt").write_text("BACKGROUND\nhead\n")
    assert load_detector(bare).labels == ["BACKGROUND", "head"]
    (tmp_path / "face-labels.txt").write_text("face\n")  # without BACKGROUND: it is added
    assert load_detector(bare).labels == ["BACKGROUND", "face"]


def test_onnx_labels_from_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    m = onnx.load(str(FACE_ONNX))
    p = m.metadata_props.add()
    p.key, p.value = "edge_ssd.labels", '["BACKGROUND", "gesicht"]'
    out = tmp_path / "meta.onnx"
    onnx.save(m, str(out))
    assert load_detector(out).labels == ["BACKGROUND", "gesicht"]
    (tmp_path / "meta-labels.txt").write_text("a\nb\nc\n")  # metadata wins over a file named after the model
    assert load_detector(out).labels == ["BACKGROUND", "gesicht"]
    with pytest.raises(UserError, match="2 classes but 3 labels"):
        load_detector(out, labels=tmp_path / "meta-labels.txt")


def test_bundle_errors_are_one_line(face_bundle, tmp_path):
    import shutil

    bad = tmp_path / "bad.bundle"
    shutil.copytree(face_bundle, bad)
    with open(bad / "model.tflite", "ab") as f:
        f.write(b"x")
    with pytest.raises(UserError, match="sha256") as e:
        load_detector(bad)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_detector(tmp_path / "nope.bundle")
    with pytest.raises(UserError, match="no manifest"):
        load_detector(tmp_path)


def test_threshold_override_and_split_stages(face_bundle, photos):
    det = load_detector(face_bundle, score_threshold=0.3)
    raw = det.infer(det.preprocess(photos[0]))
    assert set(raw) >= {"scores", "boxes"} and raw["scores"].dtype == np.float32
    lo = det.postprocess(raw)
    hi = det.postprocess(raw, score_threshold=0.9)
    assert len(hi) < len(lo) and np.all(hi.scores > 0.9) and np.all(lo.scores > 0.3)
    assert np.all(np.diff(lo.scores) <= 0)


@pytest.fixture(scope="module")
def int8_bundle(face_int8_bundle):
    return face_int8_bundle


def test_int8_bundle_quantised_io_and_agreement(int8_bundle, photos):
    """A real int8 bundle (convert_model): int8 input via the LUT, int8 logits/offsets dequantised from the
    tensors' own parameters, softmax + prior decoding on the host; agrees with the float ONNX model."""
    from edge_ssd.model.box import iou_of

    q = load_detector(int8_bundle, score_threshold=0.7)
    assert q.input_dtype == np.int8 and q.backend.input.quantized
    assert q.post.score_fn == "softmax" and q.post.box_encoding == "offsets" and q.post.priors.shape == (4420, 4)
    info = q.backend.input
    lut = input_lut(q.inp.norm, info.scale, info.zero_point, dtype=np.int8)
    ref = load_detector(FACE_ONNX, score_threshold=0.7)
    matched = total = 0
    for img in photos:
        x = q.preprocess(img)
        np.testing.assert_array_equal(x[0], apply_lut(resize_rgb(img, 320, 240), lut))
        raw = q.infer(x)
        assert all(v.dtype == np.float32 for v in raw.values())
        a, b = q.detect(img), ref.detect(img)
        total += len(b)
        if len(a) and len(b):
            matched += int((iou_of(b.boxes[:, None, :], a.boxes[None, :, :]).max(axis=1) > 0.5).sum())
    assert total > 0 and matched / total > 0.85
