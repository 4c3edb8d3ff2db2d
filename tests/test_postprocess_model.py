"""``convert --postprocess-model``: model_postprocess.tflite read the way Frigate and pycoral read it (LiteRT, outputs
by position, uint8 RGB in) agrees with the bundle and with the ONNX model on held-out photos. Two real conversions,
each reused by the whole module: the face model in ../shared (through the CLI, for the Edge TPU with a stand-in
compiler replaying recorded logs) and the trained test model (its shared int8 bundle from conftest, given a
post-process model)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _convert_util import FACE, FACE_LABELS, FACES, PHOTOS, REPO, VOC

from edge_ssd.convert.postprocess_check import ConsumerReader, validate_postprocess_model
from edge_ssd.convert.postprocess_model import LABELMAP_FILE, OUTPUT_NAMES, POSTPROCESS_FILE
from edge_ssd.model.bundle import load_manifest, sha256_file
from edge_ssd.model.preprocess import read_image, resize_rgb

pytestmark = pytest.mark.slow
DATA = Path(__file__).resolve().parent / "data"
HELD_OUT = sorted(p for d in (FACES, PHOTOS) for p in d.glob("*.jpg"))  # never calibration images here


def _fake_compiler(bindir: Path) -> None:
    """`edgetpu_compiler` answering with the recorded log of the model it is given."""
    bindir.mkdir()
    exe = bindir / "edgetpu_compiler"
    exe.write_text(f"""#!/bin/sh
out=.
while [ $# -gt 0 ]; do case "$1" in -o) out=$2; shift 2 ;; -*) shift ;; *) model=$1; shift ;; esac; done
stem=$(basename "${{model%.tflite}}")
case "$stem" in model) log=model ;; *) log=postprocess ;; esac
cat "{DATA}/edgetpu_compiler_$log.log"
cp "$model" "$out/${{stem}}_edgetpu.tflite"
""")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("face")
    _fake_compiler(work / "bin")
    out = work / "face.bundle"
    env = dict(os.environ, PATH=f"{work / 'bin'}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "convert", str(FACE), "-o", str(out), "--calib", str(VOC),
                        "--calib-count", "40", "--val", str(FACES), str(PHOTOS), "--labels", str(FACE_LABELS),
                        "--quant", "per-channel", "--target", "edgetpu", "--postprocess-model", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out


def _frigate_labels(path: Path) -> dict[int, str]:
    """Frigate's ``load_labels`` (and pycoral's ``read_label_file``): ``id name`` lines, else one name per line."""
    lines = path.read_text().splitlines()
    if lines and lines[0].split(" ", maxsplit=1)[0].isdigit():
        return {int(i): n.strip() for i, n in (ln.split(" ", maxsplit=1) for ln in lines)}
    return dict(enumerate(ln.strip() for ln in lines))


def test_face_file_as_consumers_see_it(face):
    from ai_edge_litert.interpreter import Interpreter

    pp = face / POSTPROCESS_FILE
    it = Interpreter(model_path=str(pp))
    it.allocate_tensors()
    inp = it.get_input_details()[0]
    assert inp["dtype"] == np.uint8 and list(inp["shape"]) == [1, 240, 320, 3]
    scale, zp = inp["quantization"]
    assert zp == 127 and abs(scale * 128 - 1) < 1e-4  # (x - 127) / 128 of the raw pixel
    outs = it.get_output_details()
    assert [d["name"] for d in outs] == list(OUTPUT_NAMES)
    assert [list(d["shape"]) for d in outs] == [[1, 200, 4], [1, 200], [1, 200], [1]]
    assert all(d["dtype"] == np.float32 for d in outs)
    assert it.get_signature_list() == {}  # pycoral then reads by position (output 3 holds one value)
    assert _frigate_labels(face / LABELMAP_FILE) == {0: "face"}
    # Frigate's edgetpu_tfl.detect_raw, literally: up to 20 rows of [class, score, ymin, xmin, ymax, xmax]
    img = resize_rgb(read_image(FACES / "1.jpg"), 320, 240)
    it.set_tensor(inp["index"], img[None])
    it.invoke()
    boxes, classes, scores = (it.get_tensor(outs[k]["index"])[0] for k in range(3))
    count = int(it.get_tensor(outs[3]["index"])[0])
    rows = [[classes[i], scores[i], *boxes[i]] for i in range(count) if scores[i] >= 0.4][:20]
    assert len(rows) == 20  # a group photo
    r = np.asarray(rows)
    assert (r[:, 0] == 0).all() and (np.diff(r[:, 1]) <= 0).all()
    assert (r[:, 2] < r[:, 4]).all() and (r[:, 3] < r[:, 5]).all() and (r[:, 2:] > -0.05).all()


def test_face_agrees_with_bundle_and_onnx(face):
    v = validate_postprocess_model(face / POSTPROCESS_FILE, face, FACE, HELD_OUT)
    assert v["images"] == len(HELD_OUT) and v["vs_bundle"]["fp32_detections"] > 50
    assert v["vs_bundle"]["f1"] >= 0.99, v["vs_bundle"]
    assert v["vs_onnx"]["f1"] >= 0.95, v["vs_onnx"]
    assert v["ok"]


def test_face_report_manifest_and_edgetpu(face):
    rep = json.loads((face / "report.json").read_text())
    pp = rep["postprocess_model"]
    assert pp["ok"] and pp["validation"]["vs_bundle"]["f1"] >= 0.99 and pp["input_exact"]
    assert pp["op_options"]["use_regular_nms"] is True and pp["op_options"]["y_scale"] == pytest.approx(10)
    assert pp["op_options"]["h_scale"] == pytest.approx(5) and pp["op_options"]["num_classes"] == 1
    md = (face / "report.md").read_text()
    assert "post-process model vs bundle" in md and "Edge TPU (model_postprocess.tflite)" in md
    m, _ = load_manifest(face)
    assert m.fidelity["postprocess_model"]["sha256"] == sha256_file(face / POSTPROCESS_FILE)
    # the recorded compiler logs: model.tflite fully mapped; the post-process model leaves exactly the appended
    # float tail on the CPU (so the body is whole on the TPU)
    assert rep["edgetpu"]["ok"] is True and rep["edgetpu"]["log"]["ops_on_cpu"] == 0
    e = pp["edgetpu"]
    assert e["ok"] is True and e["body_ops_on_cpu"] == {} and e["log"]["ops_on_tpu"] == 57
    assert (face / "model_postprocess_edgetpu.tflite").is_file()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, test_model, test_model_int8_bundle):
    """The shared int8 bundle of the trained test model (conftest), given its post-process model."""
    from edge_ssd.convert.postprocess_model import build_postprocess_model

    pm = build_postprocess_model(test_model_int8_bundle, tmp_path_factory.mktemp("tm-pp") / POSTPROCESS_FILE)
    return test_model, test_model_int8_bundle, pm


def test_trained_model_agrees_with_bundle_and_onnx(trained):
    from edge_ssd.data.datasets import OpenImagesDataset

    tm, bundle, pm = trained
    assert pm.input_dtype == "uint8" and pm.input_exact and pm.num_classes == len(tm.labels) - 1
    ds = OpenImagesDataset(tm.dataset_dir, "test")  # held out: the bundle was calibrated on "train"
    paths = [s.image_path for s in ds.samples[:80]]
    v = validate_postprocess_model(pm.path, bundle, tm.onnx_path, paths)
    assert v["images"] == 80 and v["vs_bundle"]["fp32_detections"] > 40
    assert v["vs_bundle"]["f1"] >= 0.99, v["vs_bundle"]
    assert v["vs_onnx"]["f1"] >= 0.9, v["vs_onnx"]


def test_trained_model_classes_are_zero_based_without_background(trained):
    from edge_ssd.data.datasets import OpenImagesDataset

    tm, bundle, pm = trained
    names = _frigate_labels(pm.labelmap)
    assert list(names.values()) == list(tm.labels[1:]) and list(names) == list(range(len(tm.labels) - 1))
    ds = OpenImagesDataset(tm.dataset_dir, "test")
    reader = ConsumerReader(pm.path, list(range(1, len(tm.labels))))
    seen = set()
    for i in range(40):
        boxes, classes, scores, count = reader.raw(resize_rgb(ds.load_image(i), reader.w, reader.h))
        c = classes[:count][scores[:count] >= 0.5].astype(int)
        assert ((c >= 0) & (c < len(names))).all()
        seen |= {names[k] for k in c}
    gt = {ds.class_names[int(c)] for s in ds.samples[:40] for c in s.labels}
    assert seen and seen <= set(tm.labels[1:]) and len(seen & gt) >= 2


def test_face_op_options_read_back_from_the_file(face):
    """The custom op's flexbuffer, decoded from the written flatbuffer, holds every key detection_postprocess.cc
    reads."""
    from ai_edge_litert import schema_py_generated as s
    from flatbuffers import flexbuffers

    m = s.ModelT.InitFromObj(s.Model.GetRootAs((face / POSTPROCESS_FILE).read_bytes(), 0))
    codes = m.operatorCodes
    ops = [op for op in m.subgraphs[0].operators if codes[op.opcodeIndex].customCode]
    assert len(ops) == 1 and codes[ops[0].opcodeIndex].customCode.decode() == "TFLite_Detection_PostProcess"
    opts = flexbuffers.Loads(bytes(ops[0].customOptions))
    assert set(opts) == {"max_detections", "max_classes_per_detection", "detections_per_class", "use_regular_nms",
                         "nms_score_threshold", "nms_iou_threshold", "num_classes", "y_scale", "x_scale",
                         "h_scale", "w_scale"}
    assert (opts["y_scale"], opts["x_scale"], opts["h_scale"], opts["w_scale"]) == pytest.approx((10, 10, 5, 5))
    assert opts["use_regular_nms"] is True and opts["num_classes"] == 1 and opts["max_classes_per_detection"] == 1
    assert opts["nms_iou_threshold"] == pytest.approx(0.45) and opts["detections_per_class"] == 200
    # the anchors are the bundle's priors, (cx, cy, w, h) -> (ycenter, xcenter, h, w)
    sg = m.subgraphs[0]
    anchors = sg.tensors[ops[0].inputs[2]]
    a = np.frombuffer(bytes(m.buffers[anchors.buffer].data), np.float32).reshape(-1, 4)
    man, _ = load_manifest(face)
    assert np.array_equal(a, man.priors_array()[:, [1, 0, 3, 2]])


def _variant(face: Path, tmp: Path, **input_fields) -> Path:
    """The face bundle with other input fields in its manifest (the same model file)."""
    import shutil

    from edge_ssd.model.bundle import write_manifest

    d = tmp / "variant.bundle"
    shutil.copytree(face, d)
    m, _ = load_manifest(d)
    target = input_fields.pop("target", m.target)
    write_manifest(d, m.model_copy(update={"target": target, "input": m.input.model_copy(update=input_fields)}))
    return d


def test_per_channel_normalisation_goes_through_the_devices_table(face, tmp_path):
    """ImageNet-style statistics have no uint8 quantisation: the raw pixel goes through the device's own table
    (CAST, ADD, GATHER), so the post-process model sees exactly the bundle's int8 input."""
    from edge_ssd.convert.postprocess_model import build_postprocess_model

    d = _variant(face, tmp_path, mean=[123.7, 116.3, 103.5], std=[58.4, 57.1, 57.4], target="cpu")
    pm = build_postprocess_model(d)
    assert pm.appended_ops[:3] == ["CAST", "ADD", "GATHER"] and pm.input_exact and pm.input_dtype == "uint8"
    v = validate_postprocess_model(pm.path, d, None, HELD_OUT)
    assert v["vs_bundle"]["fp32_detections"] > 0 and v["vs_bundle"]["f1"] >= 0.99, v["vs_bundle"]
    assert v["max_score_diff_vs_bundle"] < 1e-5


def test_non_integer_mean_on_the_edgetpu_is_a_quantize(face, tmp_path):
    from edge_ssd.convert.postprocess_model import build_postprocess_model

    d = _variant(face, tmp_path, mean=[127.5] * 3, std=[127.5] * 3, target="edgetpu")
    pm = build_postprocess_model(d)
    assert pm.appended_ops[0] == "QUANTIZE" and not pm.input_exact and pm.input_zero_point == 128
    assert "approximates mean 127.5" in pm.input_note


def test_face_buffers_are_16_byte_aligned(face):
    """TFLite's schema asks for 16-byte aligned buffers (``force_align: 16``), which the Python flatbuffers
    generator ignores; the post-process model writes them aligned."""
    from ai_edge_litert import schema_py_generated as s

    m = s.Model.GetRootAs((face / POSTPROCESS_FILE).read_bytes(), 0)
    starts = [m.Buffers(i)._tab.Vector(m.Buffers(i)._tab.Offset(4)) for i in range(m.BuffersLength())
              if m.Buffers(i).DataLength()]
    assert len(starts) > 50 and all(p % 16 == 0 for p in starts)


@pytest.fixture(scope="module")
def tf_family(tmp_path_factory, test_model):
    """The trained test model re-exported with a TF Object Detection API tail (edge_ssd.nets.tfod: sigmoid with a
    background column, offsets ty, tx, th, tw, anchors ycenter, xcenter, h, w, (x - 127.5) / 127.5 in the graph),
    converted with --postprocess-model."""
    from edge_ssd.convert.api import convert_model
    from edge_ssd.nets.tfod import TfTail, export_tf_od_api_style

    work = tmp_path_factory.mktemp("tf")
    src = export_tf_od_api_style(test_model.onnx_path, work / "ssd_tf.onnx", TfTail())
    r = convert_model(src, work / "tf.bundle", calib=[test_model.dataset_dir], calib_split="train", calib_count=100,
                      val=[test_model.dataset_dir], val_split="test", quant="per-channel", progress=False,
                      postprocess_model=True)
    return r


def test_tf_family_postprocess_model(tf_family):
    r = tf_family
    m, _ = load_manifest(r.bundle_dir)
    tail = (m.postprocess.score_fn, m.postprocess.offset_order, m.postprocess.prior_layout)
    assert tail == ("sigmoid", "cy,cx,h,w", "cy,cx,h,w")
    pp = r.report["postprocess_model"]
    assert "GATHER" not in pp["appended_ops"][3:]  # offsets already in the op's order: no reordering
    assert pp["appended_ops"][:3] == ["CAST", "ADD", "GATHER"] and pp["input_exact"]  # 127.5: the device's table
    assert pp["appended_ops"][-1] == "TFLite_Detection_PostProcess" and "LOGISTIC" in pp["appended_ops"]
    v = pp["validation"]
    assert v["vs_bundle"]["fp32_detections"] > 40 and v["vs_bundle"]["f1"] >= 0.99, v["vs_bundle"]
    assert v["vs_onnx"]["f1"] >= v["bundle_vs_onnx"]["f1"] - 0.01, v
    assert pp["ok"]
