"""SSD tail families: recognised and proved numerically (zero offsets give the priors, unit offsets the variances,
random offsets the graph's own boxes), the --raw-outputs hatch, refusals that name the ops.

The TF Object Detection API stand-ins are the Ultra-Light face model re-exported with the tail tf2onnx writes for
an ssd_mobilenet (edge_ssd.nets.tfod): NHWC input with (x-127.5)/127.5 inside, (ty, tx, th, tw) codes with scale
factors 10/10/5/5, (ycenter, xcenter, h, w) anchors, sigmoid scores, boxes (ymin, xmin, ymax, xmax) or reordered,
the batch axis squeezed inside the decode. Non-square (320x240), so x and y cannot be confused silently.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_util import FACE, FACES, cli

pytest.importorskip("onnxruntime")

VARIANTS = {
    "nhwc-sliced-bg": {},
    "nchw-nobg-gather": {"layout": "NCHW", "normalise_in_graph": False, "background": False, "box_order": "gather"},
    "nhwc-bg-concat": {"slice_background": False, "box_order": "concat",
                       "output_names": ("Postprocessor/raw_box_scores_out", "raw_box_locations")},
    "nchw-norm-in-graph": {"layout": "NCHW", "box_order": "yx"},
}


@pytest.fixture(scope="module")
def face_info():
    from edge_ssd.convert.inspect import inspect_model

    return inspect_model(FACE)


@pytest.fixture(scope="module")
def tf_models(tmp_path_factory):
    from edge_ssd.nets.tfod import TfTail, export_tf_od_api_style

    d = tmp_path_factory.mktemp("tf")
    return {k: export_tf_od_api_style(FACE, d / f"{k}.onnx", TfTail(**v)) for k, v in VARIANTS.items()}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tf_od_api_variants_recognised_and_proved(tf_models, face_info, variant):
    from edge_ssd.convert.inspect import inspect_model

    info = inspect_model(tf_models[variant])
    t, v = info.tail, VARIANTS[variant]
    assert t.recognised, t.reason
    assert t.family == "tf-od-api" and t.score_fn == "sigmoid"
    assert t.coding.offset_order == "cy,cx,h,w" and t.coding.prior_layout == "cy,cx,h,w"
    # unit offsets gave 1 / scale factors; the decode of random offsets is the graph's to ~1e-7
    assert t.coding.variances == (0.1, 0.1, 0.2, 0.2)
    assert t.decode_error < 1e-5 and t.score_error < 1e-5
    # zero offsets gave the anchors: the source model's priors, as (ycenter, xcenter, h, w)
    np.testing.assert_allclose(t.priors, face_info.tail.priors[:, [1, 0, 3, 2]], atol=1e-6)
    reordered = v.get("box_order", "yx") != "yx"
    assert t.coding.box_order == ("x1,y1,x2,y2" if reordered else "y1,x1,y2,x2")
    assert info.input_layout == v.get("layout", "NHWC")
    assert t.num_priors == 4420 and t.offsets_shape == [1, 4420, 1, 4]  # the heads' Concat before the Squeeze
    assert len(t.logits_parts) == len(t.offsets_parts) == 4  # cut per head, as for pytorch-ssd
    if v.get("background", True):
        assert t.num_classes == 2
        assert (t.scores_first_column, t.background_class) == ((1, 0) if v.get("slice_background", True)
                                                               else (0, None))
    else:
        assert (t.num_classes, t.background_class, t.scores_first_column) == (1, None, 0)
    if v.get("normalise_in_graph", True):
        assert info.graph_norm and info.normalization["in_graph"]
        # folded into the bundle's input normalisation: raw pixels fed, (x - 127.5) / 127.5 applied by the table
        from edge_ssd.model.preprocess import Normalization

        body = info.body_normalization(Normalization((0.0,) * 3, (1.0,) * 3))
        assert body.mean == (127.5,) * 3 and body.std == (127.5,) * 3
    else:
        assert info.graph_norm is None


def test_cut_of_tf_variant_reproduces_the_graph(tf_models):
    """Cut at the per-head tensors (reshaped to (1, rows, K)), body from after the graph's own normalisation:
    cut body + the one decode == the source graph read by the runtime's ONNX loader, on real photos."""
    from edge_ssd.convert.cut import cut_input_name, cut_model, cut_outputs, source_postprocess
    from edge_ssd.convert.inspect import load_and_inspect
    from edge_ssd.model.box import decode, sigmoid
    from edge_ssd.model.preprocess import Normalization, preprocess, read_image
    from edge_ssd.runtime.detector import load_detector
    from edge_ssd.runtime.onnx import onnx_session

    src = tf_models["nhwc-sliced-bg"]
    model, info = load_and_inspect(src)
    t = info.tail
    cut = cut_model(model, info)
    assert [i.name for i in cut.graph.input] == [cut_input_name(info)]
    assert [int(d.dim_value) for d in cut.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 240, 320]
    assert all(len(o.type.tensor_type.shape.dim) == 3 for o in cut.graph.output) and len(cut.graph.output) == 8
    raw = Normalization((0.0,) * 3, (1.0,) * 3)  # the graph normalises itself: raw pixels in
    ref = load_detector(src, backend="onnxruntime", normalization=raw, postprocess=source_postprocess(info, 0))
    body = onnx_session(cut)
    lg, of = cut_outputs(info)
    a = np.asarray(info.graph_norm["scale"], np.float32)[None, :, None, None]
    b = np.asarray(info.graph_norm["offset"], np.float32)[None, :, None, None]
    for p in sorted(FACES.glob("*.jpg")):
        img = read_image(p)
        s_ref, b_ref = ref.decode(ref.infer(ref.preprocess(img)))
        outs = body.run(lg + of, {cut_input_name(info): preprocess(img, 320, 240, raw) * a + b})
        s = sigmoid(np.concatenate(outs[:4], axis=1)[0])
        bx = decode(np.concatenate(outs[4:], axis=1)[0], t.priors, t.coding)
        assert np.isnan(s_ref[:, 0]).all()  # the background column the graph slices off: not compared
        assert np.abs(s[:, 1:] - s_ref[:, 1:]).max() < 1e-5 and np.abs(bx - b_ref).max() < 1e-5


def test_inspect_cli_shows_the_tf_layout(tf_models):
    r = cli("inspect", tf_models["nhwc-bg-concat"], "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["tail"]
    assert d["recognised"] and d["coding"]["offset_order"] == "cy,cx,h,w"
    r = cli("inspect", tf_models["nhwc-sliced-bg"])
    assert r.returncode == 0 and "tf-od-api layout" in r.stdout and "scale factors [10.0, 10.0, 5.0, 5.0]" in r.stdout


def _edit(src, dst, edit):
    import onnx

    m = onnx.load(str(src))
    edit(m)
    onnx.save(m, str(dst))
    return dst


def _insert_after_output(m, out: str, op: str, consts: list[np.ndarray]):
    """out = op(old producer of out, consts...)."""
    from onnx import helper, numpy_helper

    prod = next(n for n in m.graph.node if out in n.output)
    prod.output[list(prod.output).index(out)] = out + "_pre"
    names = []
    for k, c in enumerate(consts):
        names.append(f"{out}_c{k}")
        m.graph.initializer.append(numpy_helper.from_array(c, names[-1]))
    m.graph.node.append(helper.make_node(op, [out + "_pre", *names], [out]))


def test_unknown_op_refused_with_op_list_then_hatch_proves_it(tf_models, tmp_path):
    """A Mul between the Sigmoid and the scores output: not found structurally (never guessed) -> the refusal
    lists the ops after the last convolution and names the hatch; --raw-outputs at the raw tensors proves it."""
    from edge_ssd.convert.inspect import inspect_model

    p = _edit(tf_models["nhwc-sliced-bg"], tmp_path / "mul.onnx",
              lambda m: _insert_after_output(m, "scores", "Mul", [np.array(1.0, np.float32)]))
    t = inspect_model(p).tail
    assert not t.recognised
    assert "Sigmoid" in t.reason and "Mul" in t.reason and "--raw-outputs" in t.reason
    r = cli("convert", p, "--calib", FACES, "-o", tmp_path / "o.bundle")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "ops between the last convolution" in err[0]
    t = inspect_model(p, raw_outputs=("concat_1:0", "concat:0")).tail
    assert t.recognised, t.reason
    assert t.raw_outputs_given and t.score_fn == "sigmoid" and t.coding.offset_order == "cy,cx,h,w"
    r = cli("inspect", p, "--raw-outputs", "concat_1:0,concat:0")
    assert r.returncode == 0 and "--raw-outputs" in r.stdout


def test_unsupported_op_in_decode_refused_even_through_the_hatch(tf_models, tmp_path):
    """Boxes clipped to the image inside the tail: not a decode over constants, refused both ways."""
    from edge_ssd.convert.inspect import inspect_model

    p = _edit(tf_models["nchw-nobg-gather"], tmp_path / "clip.onnx",
              lambda m: _insert_after_output(m, "boxes", "Clip", [np.array(0.0, np.float32),
                                                                  np.array(1.0, np.float32)]))
    t = inspect_model(p).tail
    assert not t.recognised and "Clip" in t.reason
    t = inspect_model(p, raw_outputs=("concat_1:0", "concat:0")).tail
    assert not t.recognised and "not an SSD decode" in t.reason and "Clip" in t.reason


def test_hatch_names_a_missing_tensor_one_line(tf_models):
    r = cli("inspect", tf_models["nhwc-sliced-bg"], "--raw-outputs", "nope:0,concat:0")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "'nope:0'" in err[0]
    r = cli("inspect", tf_models["nhwc-sliced-bg"], "--raw-outputs", "onlyone")
    assert r.returncode == 2 and "SCORES,BOXES" in r.stderr


def test_pytorch_ssd_families_keep_their_description(face_info):
    t = face_info.tail
    assert t.family == "pytorch-ssd" and t.coding.offset_order == "cx,cy,w,h" and t.coding.box_order == "x1,y1,x2,y2"
    assert t.coding.variances == (0.1, 0.1, 0.2, 0.2) and t.background_class == 0 and t.scores_first_column == 0
    assert face_info.graph_norm is None and face_info.body_input == face_info.input.name


def test_manifest_description_one_source_of_truth(tf_models):
    """The bundle's Postprocess: orders as proved; per-channel variances only when the two scalars cannot say it."""
    from dataclasses import replace

    from edge_ssd.convert.cut import tail_postprocess
    from edge_ssd.convert.inspect import inspect_model

    info = inspect_model(tf_models["nhwc-sliced-bg"])
    pp = tail_postprocess(info, 0.5)
    assert (pp.offset_order, pp.prior_layout, pp.box_order) == ("cy,cx,h,w", "cy,cx,h,w", "y1,x1,y2,x2")
    assert pp.variances is None and pp.variances_in_offset_order() == [0.1, 0.1, 0.2, 0.2]
    assert pp.background_class == 0 and pp.score_fn == "sigmoid" and len(pp.priors) == 4420
    info.tail.coding = replace(info.tail.coding, variances=(1 / 8, 0.1, 0.25, 0.2))  # scale factors 8, 10, 4, 5
    assert tail_postprocess(info, 0.5).variances_in_offset_order() == [0.125, 0.1, 0.25, 0.2]


def test_kept_background_column_named_by_the_labels(tf_models, tmp_path):
    """Sigmoid over every column (the graph keeps TF's background column): a label map without its background
    (one name fewer than columns) or a BACKGROUND first line makes column 0 the background; else all are classes."""
    from edge_ssd.convert.api import _labels, _labels_background
    from edge_ssd.convert.inspect import load_and_inspect

    model, info = load_and_inspect(tf_models["nhwc-bg-concat"])
    assert info.tail.background_class is None and info.tail.num_classes == 2
    (tmp_path / "map.txt").write_text("face\n")
    lab = _labels(tmp_path / "map.txt", tf_models["nhwc-bg-concat"], info, model)
    assert lab.names == ["BACKGROUND", "face"] and _labels_background(info, lab.names) == 0
    (tmp_path / "two.txt").write_text("sky\nface\n")
    lab = _labels(tmp_path / "two.txt", tf_models["nhwc-bg-concat"], info, model)
    assert lab.names == ["sky", "face"] and _labels_background(info, lab.names) is None


@pytest.mark.parametrize("variant", ["nhwc-sliced-bg", "nchw-nobg-gather"])
def test_runtime_reads_a_tf_onnx_as_its_proved_tail(tf_models, variant):
    """`detect`/`eval` on a third-party ONNX: the runtime's loader reads the outputs as the proved tail lays them
    out (sliced background, ymin-first or reordered boxes, the graph's own normalisation), not as pytorch-ssd's."""
    from _convert_util import FACE_LABELS

    from edge_ssd.convert.validate import match
    from edge_ssd.model.box import Detections
    from edge_ssd.model.preprocess import read_image
    from edge_ssd.runtime.detector import load_detector

    src = load_detector(FACE, labels=FACE_LABELS)
    bg = VARIANTS[variant].get("background", True)
    tf = load_detector(tf_models[variant], labels=FACE_LABELS if bg else ["face"])
    assert tf.labels == (["BACKGROUND", "face"] if bg else ["face"])
    for p in sorted(FACES.glob("*.jpg")):
        img = read_image(p)
        a, b = src.detect(img, 0.7), tf.detect(img, 0.7)
        # the same net, so the same boxes (the scores differ a little: sigmoid(face - background) vs softmax);
        # (the pytorch-ssd reading gets neither the ymin-first boxes nor the raw-pixel feed of the first variant)
        b_as_a = Detections(b.boxes, b.scores, np.ones_like(b.class_ids))
        pairs = match(a, b_as_a, 0.9)
        assert len(a) > 0 and len(pairs) >= 0.95 * max(len(a), len(b))
        assert set(b.class_ids.tolist()) == {1 if bg else 0}
