"""edge-ssd convert with the real onnx2tf (convert/.venv) and real LiteRT: bundles, fidelity, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_util import FACE, FACE_LABELS, FACES, PHOTOS, REPO, VOC, cli

pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")
if not (REPO / "convert" / ".venv" / "bin" / "onnx2tf").exists():
    pytest.skip("convert/.venv missing: run scripts/setup.sh", allow_module_level=True)


@pytest.fixture(scope="module")
def face_bundle(tmp_path_factory):
    from edge_ssd.convert.api import convert_model

    out = tmp_path_factory.mktemp("face") / "face.bundle"
    return convert_model(FACE, out, calib=[VOC / "JPEGImages", PHOTOS, FACES], val=[FACES, PHOTOS],
                         labels=FACE_LABELS, progress=False)


def test_face_bundle_manifest(face_bundle):
    from edge_ssd.model.bundle import load_manifest

    m, model_path = load_manifest(face_bundle.bundle_dir)
    assert model_path.name == "model.tflite"
    assert m.input.shape == [1, 240, 320, 3] and m.input.dtype == "int8" and m.input.quant is not None
    assert m.scores.shape == [1, 4420, 2] and m.boxes.shape == [1, 4420, 4]
    assert m.postprocess.score_fn == "softmax" and m.postprocess.box_encoding == "offsets"
    assert m.priors_array().shape == (4420, 4)
    assert m.labels == ["BACKGROUND", "face"]
    assert m.converter["backend"] == "flatbuffer_direct" and m.converter["quant_type"] in ("per-channel", "per-tensor")
    assert len(m.source["sha256"]) == 64
    # the source model is left untouched (onnx2tf rewrites its own input in place: it only ever sees a copy)
    from edge_ssd.model.bundle import sha256_file

    assert sha256_file(FACE) == m.source["sha256"]
    for f in ("report.json", "report.md", "report.png"):
        assert (face_bundle.bundle_dir / f).stat().st_size > 0
    assert list(face_bundle.bundle_dir.glob("onnx2tf-*.log"))


def test_face_input_lut_reproduces_normalisation(face_bundle):
    """int8 input quantisation + the LUT give exactly (x - 127) / 128 for every pixel value."""
    from edge_ssd.model.bundle import load_manifest
    from edge_ssd.model.preprocess import PYTORCH_SSD, input_lut

    m, _ = load_manifest(face_bundle.bundle_dir)
    q = m.input.quant
    lut = input_lut(PYTORCH_SSD, q.scale, q.zero_point)
    real = (lut.astype(np.float32) - q.zero_point) * q.scale
    assert np.max(np.abs(real - (np.arange(256) - 127.0) / 128.0)) < 1e-5


def test_face_fidelity(face_bundle):
    rep = face_bundle.report
    assert rep["cut_check"]["scores_max_abs"] < 1e-4 and rep["cut_check"]["boxes_max_abs"] < 1e-4
    assert rep["calibration"]["scaling_error"] < 1e-5
    a = rep["validation"]["agreement"]
    assert rep["validation"]["images"] == 10 and a["fp32_detections"] > 20
    assert a["f1"] >= 0.95, a
    assert face_bundle.ok
    assert json.loads((face_bundle.bundle_dir / "report.json").read_text())["validation"]["agreement"] == a


def test_min_agreement_exit_4(tmp_path):
    r = cli("convert", FACE, "--calib", VOC, "--calib-count", "12", "--val", FACES, "--labels", FACE_LABELS,
            "--quant", "per-tensor", "--min-agreement", "1.01", "-o", tmp_path / "b", "--no-progress")
    assert r.returncode == 4, r.stderr
    assert "min-agreement" in r.stderr.strip().splitlines()[-1]
    assert (tmp_path / "b" / "model.tflite").is_file() and (tmp_path / "b" / "manifest.json").is_file()


def test_edgetpu_target_without_compiler(tmp_path):
    from edge_ssd.convert.api import convert_model

    r = convert_model(FACE, tmp_path / "tpu", calib=[VOC], calib_count=12, val=[FACES], labels=FACE_LABELS,
                      target="edgetpu", quant="per-tensor", progress=False, min_agreement=0.0)
    tpu = r.report["edgetpu"]
    assert r.report["input_dtype"] == "int8" and r.report["output_dtype"] == "int8"
    assert tpu["unsupported_ops"] == [], tpu
    if tpu["compiler"] is None:
        assert "edgetpu_compiler" in tpu["note"] and "x86" in tpu["note"]


def test_unreadable_calibration_folder(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(12):
        (bad / f"{i}.jpg").write_bytes(b"not a jpeg" * i)
    r = cli("convert", FACE, "--calib", bad, "-o", tmp_path / "o", "--no-progress")
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "could be decoded" in err[0] and "Traceback" not in r.stderr


def test_too_few_calibration_images(tmp_path):
    r = cli("convert", FACE, "--calib", FACES, "-o", tmp_path / "o", "--no-progress")
    assert r.returncode == 2 and "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_mb2_ssd_lite_converts_and_cut_is_exact(tmp_path):
    torch = pytest.importorskip("torch")
    from edge_ssd.convert.api import convert_model
    from edge_ssd.nets import create_net
    from edge_ssd.nets.export import export_onnx

    torch.manual_seed(0)
    net = create_net("mb2-ssd-lite", 21, is_test=True).eval()
    labels = ["BACKGROUND"] + [f"c{i}" for i in range(1, 21)]
    onnx_path = tmp_path / "mb2.onnx"
    export_onnx(net, labels, onnx_path)
    r = convert_model(onnx_path, tmp_path / "mb2.bundle", calib=[VOC], calib_count=16, val=[PHOTOS],
                      progress=False, min_agreement=0.0)
    assert r.report["cut_check"]["scores_max_abs"] < 1e-4 and r.report["cut_check"]["boxes_max_abs"] < 1e-4
    assert r.report["source"]["input"] == [1, 3, 300, 300]
    from edge_ssd.model.bundle import load_manifest

    m, _ = load_manifest(r.bundle_dir)
    assert m.priors_array().shape == (3000, 4) and m.labels == labels
    assert m.source["priors_match_mobilenet_ssd_spec"] is True


@pytest.mark.slow
def test_trained_test_model_map_drop(test_model, test_model_int8_bundle):
    tm, bundle_dir = test_model, test_model_int8_bundle
    maps = json.loads((bundle_dir / "report.json").read_text())["validation"]["map"]
    assert maps, "the held-out split has ground truth, so mAP must be reported"
    m = next(iter(maps.values()))
    assert m["fp32_map_voc07"] > 0.1
    assert m["delta_points_voc07"] <= 1.0, m
    # cut before the heads' Concat: one int8 output per SSD head (6 + 6 for the mb1-ssd layout), each with its
    # own scale; the device concatenates them
    from edge_ssd.model.bundle import load_manifest
    from edge_ssd.runtime.detector import load_detector

    man, _ = load_manifest(bundle_dir)
    assert len(man.scores.parts) == 6 and len(man.boxes.parts) == 6
    assert sum(p.shape[1] for p in man.scores.parts) == 3000
    assert len({p.quant.scale for p in man.scores.parts}) > 1
    # the device runtime (parts concatenated on the host) agrees with the ONNX model on held-out images
    from edge_ssd.data.datasets import OpenImagesDataset

    ds = OpenImagesDataset(tm.dataset_dir, "test")
    q8, fp = load_detector(bundle_dir, score_threshold=0.5), load_detector(tm.onnx_path, score_threshold=0.5)
    agree = total = 0
    for i in range(20):
        img = ds.load_image(i)
        a, b = q8.detect(img), fp.detect(img)
        total += len(b)
        agree += sum(1 for k in range(len(b)) if len(a) and (a.class_ids == b.class_ids[k]).any())
    assert total > 0 and agree >= 0.9 * total


def test_tf_converter_backend_missing_is_one_line(tmp_path):
    if (REPO / "convert" / ".venv-tf" / "bin" / "onnx2tf").exists():
        pytest.skip("convert/.venv-tf exists here")
    import os

    env = dict(os.environ, EDGE_SSD_ONNX2TF_TF=str(tmp_path / "nowhere" / "onnx2tf"))
    import subprocess

    r = subprocess.run([str(REPO / ".venv" / "bin" / "edge-ssd"), "convert", str(FACE), "--calib", str(FACES),
                        "--backend", "tf_converter", "-o", str(tmp_path / "b")], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 3, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "tf_converter" in lines[0] and "--with-tf" in lines[0]
    assert not (tmp_path / "b").exists()  # refused before any work
