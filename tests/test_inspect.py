"""edge-ssd inspect: tail recognition, priors/variances from the graph, bad input (the cut check through the
runtime is in test_convert.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_util import FACE, FACES, cli, dynamic_face, tiny_classifier

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def face():
    from edge_ssd.convert.inspect import load_and_inspect

    return load_and_inspect(FACE)


def test_face_tail_priors_variances(face):
    _, info = face
    t = info.tail
    assert info.opset == 9
    assert info.input.name == "input" and info.input.shape == [1, 3, 240, 320]
    assert t.recognised, t.reason
    assert (t.scores_output, t.boxes_output) == ("scores", "boxes")
    assert t.score_fn == "softmax"
    assert t.num_priors == 4420 and t.priors.shape == (4420, 4) and t.num_classes == 2
    assert t.center_variance == pytest.approx(0.1) and t.size_variance == pytest.approx(0.2)
    assert t.decode_error < 1e-5 and t.score_error < 1e-5
    # 320x240 face priors are not the seed's 300x300 MobileNet-SSD layout
    assert t.priors_match_spec is False
    assert np.all(t.priors[:, 2:] > 0) and np.all(t.priors <= 1.0 + 1e-6)


def test_seed_layout_priors_match_spec():
    from edge_ssd.convert.inspect import compare_priors_to_spec
    from edge_ssd.model.priors import generate_priors

    assert compare_priors_to_spec(generate_priors(), 300, 300) == 0.0


def test_cli_json_and_human():
    r = cli("inspect", FACE, "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["tail"]["recognised"] and d["tail"]["num_priors"] == 4420
    assert d["tail"]["offsets_tensor"] and d["tail"]["logits_tensor"]
    r = cli("inspect", FACE)
    assert r.returncode == 0 and "recognised SSD post-processing" in r.stdout


@pytest.mark.parametrize("kind", ["classifier", "truncated", "dynamic", "missing"])
def test_bad_models_one_line_exit_2(tmp_path, kind):
    if kind == "classifier":
        p = tiny_classifier(tmp_path / "cls.onnx")
        r = cli("inspect", p)
        assert r.returncode == 0 and "NOT recognised" in r.stdout  # inspect reports; convert refuses
        r = cli("convert", p, "--calib", FACES, "-o", tmp_path / "o.bundle")
    elif kind == "truncated":
        p = tmp_path / "trunc.onnx"
        p.write_bytes(FACE.read_bytes()[:5000])
        r = cli("inspect", p)
    elif kind == "dynamic":
        p = dynamic_face(tmp_path / "dyn.onnx")
        r = cli("inspect", p)
        assert "--input-shape" in r.stderr
        ok = cli("inspect", p, "--input-shape", "1,3,240,320", "--json")
        assert ok.returncode == 0 and json.loads(ok.stdout)["tail"]["num_priors"] == 4420
    else:
        r = cli("inspect", tmp_path / "nope.onnx")
    assert r.returncode == 2, (r.stdout, r.stderr)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edge-ssd: error:") and "Traceback" not in r.stderr
