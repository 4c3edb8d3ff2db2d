"""ONNX export: pytorch-ssd's scores/boxes contract at opsets 10 and 13, checked with onnx + onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from edge_ssd.errors import UserError
from edge_ssd.model.box import decode_boxes, softmax
from edge_ssd.model.preprocess import preprocess, read_image
from edge_ssd.model.priors import generate_priors
from edge_ssd.nets import create_net
from edge_ssd.nets.export import export_onnx, read_labels, read_metadata

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
PHOTOS = SHARED / "data" / "photos"
EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"
LABELS = ["BACKGROUND", "person", "car", "dog"]


def _labels_file(tmp_path, names=LABELS) -> Path:
    p = tmp_path / "labels.txt"
    p.write_text("\n".join(names) + "\n")
    return p


def _session(path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _constants(model: onnx.ModelProto) -> list[np.ndarray]:
    out = [numpy_helper.to_array(t) for t in model.graph.initializer]
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out.append(numpy_helper.to_array(a.t))
    return out


@pytest.mark.parametrize("arch,width,opset", [("mb1-ssd-lite", 0.25, 10), ("mb2-ssd-lite", 0.35, 13),
                                              ("mb1-ssd", 0.25, 13)])  # fmt: skip
def test_export_matches_torch(tmp_path, arch, width, opset):
    torch.manual_seed(0)
    net = create_net(arch, len(LABELS), width_mult=width, is_test=True).eval()
    img = read_image(PHOTOS / "dog.jpg")
    out = tmp_path / "model.onnx"
    rep = export_onnx(net, LABELS, out, opset=opset, check_image=img, check_image_name="dog.jpg")
    assert out.is_file() and rep.path == out
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left
    onnx.checker.check_model(str(out), full_check=True)
    model = onnx.load(str(out))
    assert model.opset_import[0].version == opset
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["scores", "boxes"]
    ops = {n.op_type for n in model.graph.node}
    assert {"Softmax", "Exp", "Slice", "Mul", "Add", "Concat"} <= ops
    # the priors are constants in the graph (what the converter reads back out)
    priors = generate_priors()
    consts = [c.reshape(-1, 2) for c in _constants(model) if c.size == priors.shape[0] * 2]
    assert any(np.allclose(c, priors[:, :2]) for c in consts)
    assert any(np.allclose(c, priors[:, 2:]) for c in consts)

    # independent comparison on two other real photos
    sess = _session(out)
    shapes = {i.name: i.shape for i in sess.get_inputs()}
    assert shapes == {"input": [1, 3, 300, 300]}
    for name in ("horses.jpg", "person.jpg"):
        x = preprocess(read_image(PHOTOS / name), 300, 300)
        scores, boxes = sess.run(["scores", "boxes"], {"input": x})
        with torch.no_grad():
            ts, tb = net(torch.from_numpy(x))
            net.raw = True
            raw_conf, raw_loc = net(torch.from_numpy(x))
            net.raw = False
        assert scores.shape == (1, 3000, len(LABELS)) and boxes.shape == (1, 3000, 4)
        assert np.abs(scores - ts.numpy()).max() < 1e-4
        assert np.abs(boxes - tb.numpy()).max() < 1e-4 * max(1.0, np.abs(tb.numpy()).max())
        # and equal to the numpy tail applied to the raw network outputs
        np.testing.assert_allclose(scores[0], softmax(raw_conf.numpy()[0]), atol=1e-5)
        np.testing.assert_allclose(boxes[0], decode_boxes(raw_loc.numpy()[0], priors), rtol=1e-4, atol=1e-4)
    assert rep.max_abs_err_scores < 1e-4

    meta = read_metadata(out)
    assert json.loads(meta["edge_ssd.labels"]) == LABELS
    assert meta["edge_ssd.arch"] == arch and float(meta["edge_ssd.width_mult"]) == width
    assert int(meta["edge_ssd.num_classes"]) == len(LABELS)
    assert net.is_test and not net.raw  # export restored the module's state


def test_export_refuses_label_mismatch_and_leaves_nothing(tmp_path):
    net = create_net("mb1-ssd-lite", 3, width_mult=0.25, is_test=True)
    with pytest.raises(UserError, match="4 labels for a 3-class network"):
        export_onnx(net, LABELS, tmp_path / "m.onnx")
    with pytest.raises(UserError, match="--opset"):
        export_onnx(net, LABELS[:3], tmp_path / "m.onnx", opset=9)
    with pytest.raises(UserError, match="does not exist"):
        export_onnx(net, LABELS[:3], tmp_path / "nope" / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_export_tolerance_failure_keeps_old_file(tmp_path):
    # an impossible (negative) tolerance makes the comparison fail: the existing output must stay untouched
    out = tmp_path / "m.onnx"
    out.write_bytes(b"previous")
    net = create_net("mb1-ssd-lite", 3, width_mult=0.25, is_test=True)
    with pytest.raises(UserError, match="ONNX Runtime differs from PyTorch"):
        export_onnx(net, LABELS[:3], out, atol=-1.0)
    assert out.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_read_labels(tmp_path):
    assert read_labels(_labels_file(tmp_path)) == LABELS
    p = tmp_path / "l.txt"
    for text, match in [
        ("", "empty"),
        ("person\ncar\n", "BACKGROUND"),
        ("BACKGROUND\n\ncar\n", "empty line 2"),
        ("BACKGROUND\ncar\ncar\n", "repeats 'car'"),
        ("BACKGROUND\n", "only BACKGROUND"),
    ]:
        p.write_text(text)
        with pytest.raises(UserError, match=match):
            read_labels(p)
    p.write_bytes(b"BACKGROUND\n\xff\xfe\n")
    with pytest.raises(UserError, match="UTF-8"):
        read_labels(p)
    with pytest.raises(UserError, match="not found"):
        read_labels(tmp_path / "missing.txt")
    p.write_text("BACKGROUND\r\nperson\r\n\r\n")  # CRLF and trailing blank lines are fine
    assert read_labels(p) == ["BACKGROUND", "person"]


# ------------------------------------------------------------------------------------------------ the CLI


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_SSD), *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def _assert_one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("edge-ssd: error: ")
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(3)
    path = d / "mb2-half.pth"
    torch.save(create_net("mb2-ssd-lite", len(LABELS), width_mult=0.5).state_dict(), path)
    return path


def test_cli_export_guesses_arch_and_width(tmp_path, small_ckpt):
    labels = _labels_file(tmp_path)
    out = tmp_path / "m.onnx"
    r = _cli("export", "--weights", small_ckpt, "--labels", labels, "-o", out, "--opset", "10",
             "--check-image", PHOTOS / "kite.jpg")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "mb2-ssd-lite" in r.stdout and "width 0.5" in r.stdout
    meta = read_metadata(out)
    assert meta["edge_ssd.arch"] == "mb2-ssd-lite" and meta["edge_ssd.width_mult"] == "0.5"
    assert len(meta["edge_ssd.weights_sha256"]) == 64
    # the file really holds the checkpoint's weights: compare with a fresh load in this process
    from edge_ssd.nets import load_weights

    net = load_weights(create_net("mb2-ssd-lite", len(LABELS), 0.5, is_test=True).eval(), small_ckpt)
    x = preprocess(read_image(PHOTOS / "giraffe.jpg"), 300, 300)
    scores, _ = _session(out).run(None, {"input": x})
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[0].numpy()
    assert np.abs(scores - ref).max() < 1e-4


def test_cli_missing_labels_file(tmp_path, small_ckpt):
    r = _cli("export", "--weights", small_ckpt, "--labels", tmp_path / "nope.txt", "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "labels file", "nope.txt", "not found")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_labels_count_does_not_match_weights(tmp_path, small_ckpt):
    labels = _labels_file(tmp_path, ["BACKGROUND", "person"])
    r = _cli("export", "--weights", small_ckpt, "--labels", labels, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "classification_headers.0", "4 lines")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_wrong_arch_and_bad_files(tmp_path, small_ckpt):
    labels = _labels_file(tmp_path)
    r = _cli("export", "--arch", "mb1-ssd", "--weights", small_ckpt, "--labels", labels, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "--arch mb2-ssd-lite", "base_net.")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(small_ckpt.read_bytes()[:5000])
    r = _cli("export", "--weights", cut, "--labels", labels, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "cut.pth", "truncated")
    r = _cli("export", "--labels", labels, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "--weights", "--random-init")
    r = _cli("export", "--random-init", "--labels", labels, "-o", tmp_path / "m.onnx")
    _assert_one_line_error(r, "--arch")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_random_init_explicit(tmp_path):
    labels = _labels_file(tmp_path)
    out = tmp_path / "r.onnx"
    r = _cli("export", "--random-init", "--arch", "mb1-ssd-lite", "--width-mult", "0.25", "--labels", labels,
             "-o", out)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert read_metadata(out)["edge_ssd.weights"] == "random-init"


def test_help_is_fast_import():
    # the command modules must not import torch/onnx at registration time
    code = "import sys, edge_ssd.cli as c; c.build_parser(); print('torch' in sys.modules, 'onnx' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]
