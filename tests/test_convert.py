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
    """The face model calibrated on real photos, validated (no --val) on a seeded quarter of them it never saw,
    with --quant auto: every attempt converted, written as a bundle and validated through the runtime."""
    from edge_ssd.convert.api import convert_model

    out = tmp_path_factory.mktemp("face") / "face.bundle"
    return convert_model(FACE, out, calib=[VOC / "JPEGImages", PHOTOS, FACES], labels=FACE_LABELS, progress=False)


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
    assert m.converter["attempt"] in [a["name"] for a in face_bundle.report["attempts"]]
    assert len(m.source["sha256"]) == 64
    # the source model is left untouched (onnx2tf rewrites its own input in place: it only ever sees a copy)
    from edge_ssd.model.bundle import sha256_file

    assert sha256_file(FACE) == m.source["sha256"]
    for f in ("report.json", "report.md", "report.png"):
        assert (face_bundle.bundle_dir / f).stat().st_size > 0
    assert len(list(face_bundle.bundle_dir.glob("onnx2tf-*.log"))) == len(face_bundle.report["attempts"])


def test_face_input_lut_reproduces_normalisation(face_bundle):
    """int8 input quantisation + the LUT give exactly (x - 127) / 128 for every pixel value."""
    from edge_ssd.model.bundle import load_manifest
    from edge_ssd.model.preprocess import PYTORCH_SSD, input_lut

    m, _ = load_manifest(face_bundle.bundle_dir)
    q = m.input.quant
    lut = input_lut(PYTORCH_SSD, q.scale, q.zero_point)
    real = (lut.astype(np.float32) - q.zero_point) * q.scale
    assert np.max(np.abs(real - (np.arange(256) - 127.0) / 128.0)) < 1e-5


def test_face_validated_on_held_out_photos(face_bundle):
    """No --val: a seeded quarter of the --calib photos is held out, never calibrated on, and says so."""
    rep = face_bundle.report
    calib = set(rep["calibration"]["paths"])
    val = set(rep["validation_images"])
    assert calib and val and not calib & val
    n = sum(1 for d in (VOC / "JPEGImages", PHOTOS, FACES) for p in d.iterdir() if p.suffix == ".jpg")
    assert len(calib) + len(val) == n and abs(len(val) - n / 4) <= 1
    assert "held out" in rep["validation_source"] and "held out" in (face_bundle.bundle_dir / "report.md").read_text()
    assert rep["calibration"]["scaling_error"] < 1e-5


def test_face_fidelity_and_attempts(face_bundle):
    rep = face_bundle.report
    # the cut float body run by the runtime (concatenation + decode) reproduces the source model
    assert rep["cut_check"]["scores_max_abs"] < 1e-4 and rep["cut_check"]["boxes_max_abs"] < 1e-4
    a = rep["validation"]["agreement"]
    assert rep["validation"]["images"] == len(rep["validation_images"]) and a["fp32_detections"] > 20
    assert a["f1"] >= 0.97, a
    assert face_bundle.ok
    # auto tried per-channel, per-tensor and percentile calibration, each measured, and kept the best F1
    rows = rep["attempts"]
    assert [r["name"] for r in rows] == ["per-channel", "per-tensor", "per-channel+p99.999"]
    assert all(r["ok"] and 0 < r["f1"] <= 1 and r["latency_ms"] > 0 for r in rows)
    kept = next(r for r in rows if r["name"] == rep["converter"]["attempt"])
    assert kept["f1"] == a["f1"] == max(r["f1"] for r in rows)
    assert json.loads((face_bundle.bundle_dir / "report.json").read_text())["validation"]["agreement"] == a


def test_validation_runs_what_the_manifest_says(face_bundle, tmp_path):
    """The validation loads the bundle with the runtime: a manifest that decodes wrongly (variances swapped)
    is seen as a disagreement, not hidden by a converter-side tail."""
    import shutil

    from edge_ssd.convert.calibrate import open_images
    from edge_ssd.convert.validate import compare, reference_outputs
    from edge_ssd.model.bundle import load_manifest, write_manifest
    from edge_ssd.runtime.detector import load_detector

    images = open_images([FACES, PHOTOS])
    ref = load_detector(FACE, backend="onnxruntime", labels=FACE_LABELS)
    reference = reference_outputs(ref, images, 0.5, progress=False)
    good = compare(reference, load_detector(face_bundle.bundle_dir), images, progress=False)
    bad_dir = tmp_path / "bad.bundle"
    shutil.copytree(face_bundle.bundle_dir, bad_dir)
    m, _ = load_manifest(bad_dir)
    swap = {"center_variance": 0.2, "size_variance": 0.1}
    if getattr(m.postprocess, "variances", None):  # per-channel variances, when the schema has them, win
        swap["variances"] = [0.2, 0.2, 0.1, 0.1]
    pp = m.postprocess.model_copy(update=swap)
    write_manifest(bad_dir, m.model_copy(update={"postprocess": pp}))
    bad = compare(reference, load_detector(bad_dir), images, progress=False)
    assert good["agreement"]["f1"] >= 0.9 and good["boxes_error"]["max_abs"] < 0.2
    assert bad["agreement"]["f1"] < 0.8 and bad["boxes_error"]["max_abs"] > good["boxes_error"]["max_abs"]
    assert bad["scores_error"] == good["scores_error"]  # scores untouched: only the box decode changed


def test_min_agreement_exit_4_and_labels_never_guessed(tmp_path):
    """Exit 4 keeps the artefacts. Without --labels (and a labels file beside the model named after another
    model), the ONNX model and its bundle both name the classes class1..., with a warning."""
    from edge_ssd.model.bundle import load_manifest
    from edge_ssd.runtime.detector import load_detector

    r = cli("convert", FACE, "--calib", VOC, "--calib-count", "12", "--val", FACES, "--quant", "per-tensor",
            "--min-agreement", "1.01", "-o", tmp_path / "b", "--no-progress")
    assert r.returncode == 4, r.stderr
    assert "min-agreement" in r.stderr.strip().splitlines()[-1]
    assert (tmp_path / "b" / "model.tflite").is_file() and (tmp_path / "b" / "manifest.json").is_file()
    assert "no labels" in r.stderr and "--labels" in r.stderr
    m, _ = load_manifest(tmp_path / "b")
    assert m.labels == ["BACKGROUND", "class1"] == load_detector(FACE).labels
    assert len(json.loads((tmp_path / "b" / "report.json").read_text())["attempts"]) == 1


def test_hold_out_is_seeded_disjoint_and_refuses_too_few():
    from edge_ssd.convert.calibrate import hold_out, open_images
    from edge_ssd.errors import UserError

    imgs = open_images([VOC / "JPEGImages"])
    c1, v1 = hold_out(imgs)
    c2, v2 = hold_out(imgs)
    assert c1.refs == c2.refs and v1.refs == v2.refs  # seeded
    assert not c1.ids() & v1.ids() and len(c1) + len(v1) == len(imgs) == 60 and len(v1) == 15
    assert c1.refs != imgs.refs[:45]  # a random draw, not the first 45
    small = imgs.pick(range(12))
    with pytest.raises(UserError, match="--force"):
        hold_out(small)
    c, v = hold_out(small, force=True)
    assert len(c) == 9 and len(v) == 3


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
    for i in range(16):  # enough to hold out a quarter for validation and still calibrate on 12
        (bad / f"{i}.jpg").write_bytes(b"not a jpeg" * i)
    r = cli("convert", FACE, "--calib", bad, "--labels", FACE_LABELS, "-o", tmp_path / "o", "--no-progress")
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
                      progress=False, min_agreement=0.0, quant="per-tensor")
    assert r.report["cut_check"]["scores_max_abs"] < 1e-4 and r.report["cut_check"]["boxes_max_abs"] < 1e-4
    assert r.report["source"]["input"] == [1, 3, 300, 300]
    from edge_ssd.model.bundle import load_manifest

    m, _ = load_manifest(r.bundle_dir)
    assert m.priors_array().shape == (3000, 4) and m.labels == labels
    assert m.source["priors_match_mobilenet_ssd_spec"] is True


@pytest.mark.slow
def test_face_on_unseen_photos_with_percentile_calibration(tmp_path):
    """Calibrated on the VOC sample only, validated on the face and demo photos (190 faces, none calibrated on):
    the kept recipe of `--quant auto` on this split (per-channel, percentile 99.999) reaches F1 >= 0.97."""
    from edge_ssd.convert.api import convert_model

    r = convert_model(FACE, tmp_path / "face.bundle", calib=[VOC / "JPEGImages"], val=[FACES, PHOTOS],
                      labels=FACE_LABELS, quant="per-channel", calibration="percentile", progress=False)
    a = r.report["validation"]["agreement"]
    assert r.report["validation_source"] == "held-out --val" and a["fp32_detections"] > 100
    assert r.report["converter"]["calibration"] == "percentile" and r.report["converter"]["activation_percentile"]
    assert a["f1"] >= 0.97, a


@pytest.mark.slow
def test_trained_test_model_map_drop(test_model, test_model_int8_bundle):
    """The trained test model calibrated on its train split, validated on its test split (ground truth) through
    the device path: AP drop <= 1 point and F1 >= 0.97, the attempt kept by AP; labels from its metadata."""
    from edge_ssd.model.bundle import load_manifest

    tm, bundle_dir = test_model, test_model_int8_bundle
    report = json.loads((bundle_dir / "report.json").read_text())
    maps = report["validation"]["map"]
    assert maps, "the held-out split has ground truth, so mAP must be reported"
    m = next(iter(maps.values()))
    assert m["fp32_map_voc07"] > 0.5
    assert m["delta_points_voc07"] <= 1.0, m
    assert report["validation"]["agreement"]["f1"] >= 0.97, report["validation"]["agreement"]
    assert report["validation_source"] == "held-out --val"
    rows = [a for a in report["attempts"] if a["ok"]]
    assert len(rows) == 3 and all("int8_map_voc07" in a for a in rows)
    within = [a for a in rows if 100 * (a["fp32_map_voc07"] - a["int8_map_voc07"]) <= 1.0]
    assert within and report["converter"]["attempt"] == max(within, key=lambda a: a["f1"])["name"]
    # cut before the heads' Concat: one int8 output per SSD head (6 + 6 for the mb1-ssd layout), each with its
    # own scale; the device concatenates them
    man, _ = load_manifest(bundle_dir)
    assert man.labels == list(tm.labels)
    assert len(man.scores.parts) == 6 and len(man.boxes.parts) == 6
    assert sum(p.shape[1] for p in man.scores.parts) == 3000
    assert len({p.quant.scale for p in man.scores.parts}) > 1


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
