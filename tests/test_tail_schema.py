"""The manifest's tail description (bundle.Postprocess): defaults are pytorch-ssd's, version-1 manifests load,
orders are validated, per-channel variances come out in offset order."""

from __future__ import annotations

import json

import pytest

from edge_ssd.model.bundle import Manifest, Postprocess, load_manifest, sha256_file


def _manifest(tmp_path, post: dict, version: int = 1):
    (tmp_path / "model.tflite").write_bytes(b"not a model, only hashed")
    m = {"format": "edge-ssd-bundle", "version": version, "model_file": "model.tflite",
         "model_sha256": sha256_file(tmp_path / "model.tflite"),
         "input": {"name": "input", "shape": [1, 8, 8, 3]},
         "scores": {"name": "s", "shape": [1, 2, 3]}, "boxes": {"name": "b", "shape": [1, 2, 4]},
         "postprocess": post, "labels": ["BACKGROUND", "a", "b"]}
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    return tmp_path


def test_version1_manifest_loads_with_pytorch_ssd_defaults(tmp_path):
    # a manifest written before the orders existed: only the two scalar variances
    d = _manifest(tmp_path, {"score_fn": "softmax", "box_encoding": "offsets", "center_variance": 0.1,
                             "size_variance": 0.25, "priors": [[0.5, 0.5, 0.2, 0.2]] * 2})
    m, _ = load_manifest(d)
    p = m.postprocess
    assert (p.offset_order, p.prior_layout, p.box_order) == ("cx,cy,w,h", "cx,cy,w,h", "x1,y1,x2,y2")
    assert p.variances is None and p.variances_in_offset_order() == [0.1, 0.1, 0.25, 0.25]
    assert p.background_class == 0


def test_tf_description_round_trips(tmp_path):
    post = {"score_fn": "sigmoid", "offset_order": "cy, cx, h, w", "variances": [0.1, 0.1, 0.2, 0.2],
            "prior_layout": "cy,cx,h,w", "box_order": "y1,x1,y2,x2", "background_class": None,
            "priors": [[0.5, 0.4, 0.2, 0.1]] * 2}
    m, _ = load_manifest(_manifest(tmp_path, post, version=2))
    again = Manifest.model_validate_json(m.model_dump_json())
    assert again.postprocess.offset_order == "cy,cx,h,w"  # spaces normalised
    assert again.postprocess.background_class is None and again.postprocess.box_order == "y1,x1,y2,x2"
    # without per-channel variances the scalars are spread in offset order
    p = Postprocess(offset_order="cy,cx,h,w", center_variance=1.0)
    assert p.variances_in_offset_order() == [1.0, 1.0, 0.2, 0.2]


@pytest.mark.parametrize("field,value", [("offset_order", "cx,cy,w,w"), ("box_order", "x1,y1,x2"),
                                         ("prior_layout", "ty,tx,th,tw")])
def test_bad_orders_refused_in_one_line(tmp_path, field, value):
    from edge_ssd.model.bundle import BundleError

    d = _manifest(tmp_path, {field: value, "priors": [[0.5, 0.5, 0.2, 0.2]] * 2}, version=2)
    with pytest.raises(BundleError) as e:
        load_manifest(d)
    assert "invalid manifest" in str(e.value) and "\n" not in str(e.value)
