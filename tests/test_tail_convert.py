"""TF Object Detection API style SSDs through `edge-ssd convert` (real onnx2tf, real LiteRT): the bundle the
device loads decodes the family's tail exactly, and its detections agree with ONNX Runtime on the source ONNX.

The source is the trained test model re-exported with a TF OD API / tf2onnx tail (edge_ssd.nets.tfod), measured
on the test model's held-out test split (never calibrated on).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from _convert_util import cli

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow

VARIANTS = {
    # NHWC input, (x - 127.5) / 127.5 inside the graph, background column sliced off the scores, ymin-first boxes
    "nhwc-sliced-bg": ({}, []),
    # NCHW input normalised outside (given with --mean/--std), no background column, boxes reordered by a Gather
    "nchw-nobg-gather": ({"layout": "NCHW", "normalise_in_graph": False, "background": False, "box_order": "gather"},
                         ["--mean", "127.5", "--std", "127.5"]),
}
HELD_OUT = 60


def _f1(ref, got, iou_thr: float = 0.5) -> tuple[float, int]:
    """Same-class greedy matching of ``got`` to ``ref`` at IoU >= 0.5: (F1, matched)."""
    from edge_ssd.model.box import iou_of

    used, matched = set(), 0
    for i in range(len(got)):
        ious = iou_of(got.boxes[i][None], ref.boxes) if len(ref) else np.zeros(0)
        cands = [(v, j) for j, v in enumerate(ious) if j not in used and ref.class_ids[j] == got.class_ids[i]]
        v, j = max(cands, default=(0.0, -1))
        if v >= iou_thr:
            used.add(j)
            matched += 1
    p = matched / len(got) if len(got) else 1.0
    r = matched / len(ref) if len(ref) else 1.0
    return (2 * p * r / (p + r) if p + r else 0.0), matched


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tf_family_bundle_decodes_like_the_source(tmp_path, variant):
    from edge_ssd.convert.calibrate import open_images
    from edge_ssd.convert.inspect import load_and_inspect
    from edge_ssd.model.box import Detections, hard_nms, to_xyxy
    from edge_ssd.model.preprocess import Normalization, preprocess
    from edge_ssd.nets.tfod import TfTail, export_tf_od_api_style
    from edge_ssd.runtime.detector import load_detector
    from edge_ssd.runtime.onnx import onnx_session
    from edge_ssd.train.testmodel import get_test_model

    tail, extra = VARIANTS[variant]
    tm = get_test_model()
    src = export_tf_od_api_style(tm.onnx_path, tmp_path / "ssd_tf.onnx", TfTail(**tail))
    out = tmp_path / "ssd_tf.bundle"
    r = cli("convert", src, "--calib", tm.dataset_dir, "--calib-split", "train", "--calib-count", "100",
            "--val", tm.dataset_dir, "--val-split", "test", "--quant", "per-channel", "--no-progress", "-o", out,
            *extra)
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((out / "manifest.json").read_text())
    pp = m["postprocess"]
    assert (pp["score_fn"], pp["offset_order"], pp["prior_layout"]) == ("sigmoid", "cy,cx,h,w", "cy,cx,h,w")
    assert (pp["center_variance"], pp["size_variance"], pp["variances"]) == (0.1, 0.2, None)  # 1 / (10, 10, 5, 5)
    assert pp["box_order"] == ("x1,y1,x2,y2" if tail.get("box_order") == "gather" else "y1,x1,y2,x2")
    assert pp["background_class"] == (0 if tail.get("background", True) else None)
    assert len(m["scores"]["parts"]) == len(m["boxes"]["parts"]) == 6  # cut per head, each its own int8 scale

    # the device's loader and decode against plain ONNX Runtime on the source ONNX, on held-out images
    det = load_detector(out)
    model, info = load_and_inspect(src)
    t = info.tail
    sess = onnx_session(model)
    feed = Normalization((0.0,) * 3, (1.0,) * 3) if info.graph_norm else Normalization((127.5,) * 3, (127.5,) * 3)
    h, w = info.input_hw()
    test = open_images([tm.dataset_dir], split="test").subset(HELD_OUT)
    f1s, n_ref = [], 0
    for k in range(len(test)):
        img = test.load(k)
        x = preprocess(img, w, h, feed, layout=info.input_layout)
        outs = sess.run([t.scores_output, t.boxes_output], {info.input.name: x})
        s, b = (v.reshape(t.num_priors, -1) for v in outs)
        ref = hard_nms(s, to_xyxy(b, pp["box_order"]), 0.45, 0.5, background=None)  # the graph's own outputs
        ref = Detections(ref.boxes, ref.scores, ref.class_ids + t.scores_first_column)  # the graph's own columns
        got = det.detect(img)
        f1s.append(_f1(ref, got)[0])
        n_ref += len(ref)
    assert n_ref >= HELD_OUT  # the synthetic images hold 1-3 objects each: the model finds them
    assert float(np.mean(f1s)) >= 0.9, f1s


def test_raw_outputs_hatch_converts_what_the_search_refuses(tmp_path):
    """A tail the structural search does not follow (an extra Mul after the Sigmoid) is refused; named with
    --raw-outputs it is proved, cut per head and converted, and the device decodes it like the source."""
    import onnx
    from _convert_util import FACE, FACES, PHOTOS, VOC
    from onnx import helper, numpy_helper

    from edge_ssd.nets.tfod import TfTail, export_tf_od_api_style

    src = export_tf_od_api_style(FACE, tmp_path / "tf.onnx", TfTail())
    m = onnx.load(str(src))
    prod = next(n for n in m.graph.node if "scores" in n.output)
    prod.output[0] = "scores_pre"
    m.graph.initializer.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    m.graph.node.append(helper.make_node("Mul", ["scores_pre", "one"], ["scores"]))
    onnx.save(m, str(tmp_path / "mul.onnx"))
    args = ["convert", tmp_path / "mul.onnx", "--calib", VOC, "--calib-count", "40", "--val", FACES, PHOTOS,
            "--quant", "per-channel", "--no-progress", "--force"]
    r = cli(*args, "-o", tmp_path / "refused.bundle")
    assert r.returncode == 2 and "--raw-outputs" in r.stderr and "Mul" in r.stderr
    r = cli(*args, "-o", tmp_path / "ok.bundle", "--raw-outputs", "concat_1:0,concat:0")
    assert r.returncode == 0, r.stderr[-2000:]
    man = json.loads((tmp_path / "ok.bundle" / "manifest.json").read_text())
    assert man["postprocess"]["offset_order"] == "cy,cx,h,w" and len(man["boxes"]["parts"]) == 4
    assert man["fidelity"]["f1"] >= 0.9
