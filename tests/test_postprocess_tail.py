"""The tail as the TFLite_Detection_PostProcess op needs it, read from a bundle manifest of either family."""

from __future__ import annotations

import numpy as np
import pytest

from edge_ssd.convert.postprocess_model import tail_params, write_labelmap
from edge_ssd.errors import UserError
from edge_ssd.model.bundle import InputSpec, Manifest, OutputSpec, Postprocess

PRIORS = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]], np.float32)  # cx, cy, w, h


def _manifest(**pp) -> Manifest:
    return Manifest(model_sha256="0", input=InputSpec(name="in", shape=[1, 8, 8, 3]),
                    scores=OutputSpec(name="s", shape=[1, 2, 3]), boxes=OutputSpec(name="b", shape=[1, 2, 4]),
                    postprocess=Postprocess(**pp), labels=["BACKGROUND", "a", "b"])


def test_pytorch_ssd_tail():
    t = tail_params(_manifest(priors=PRIORS.tolist()))
    assert t["order"] == [1, 0, 3, 2]  # (ty, tx, th, tw) from (cx, cy, w, h)
    assert t["scales"] == pytest.approx((10, 10, 5, 5))
    assert np.array_equal(t["anchors"], PRIORS[:, [1, 0, 3, 2]])
    assert (t["score_fn"], t["background"], t["candidate_size"]) == ("softmax", 0, 200)


def test_tf_od_api_tail():
    tf_priors = PRIORS[:, [1, 0, 3, 2]]  # anchors stored as (ycenter, xcenter, h, w)
    t = tail_params(_manifest(priors=tf_priors.tolist(), score_fn="sigmoid", offset_order="cy,cx,h,w",
                              prior_layout="cy,cx,h,w", variances=[0.1, 0.1, 0.2, 0.2], background_class=None))
    assert t["order"] == [0, 1, 2, 3]  # already the op's order: no GATHER
    assert np.array_equal(t["anchors"], tf_priors)
    assert t["scales"] == pytest.approx((10, 10, 5, 5)) and t["background"] is None


def test_per_channel_variances_map_to_the_right_scales():
    t = tail_params(_manifest(priors=PRIORS.tolist(), offset_order="w,h,cx,cy", variances=[0.25, 0.5, 0.1, 0.2]))
    assert t["order"] == [3, 2, 1, 0]
    assert t["scales"] == pytest.approx((1 / 0.2, 1 / 0.1, 1 / 0.5, 1 / 0.25))  # y, x, h, w


def test_corner_bundles_are_refused():
    with pytest.raises(UserError, match="not raw offsets"):
        tail_params(_manifest(box_encoding="corners"))


def test_labelmap_drops_the_background(tmp_path):
    p = write_labelmap(tmp_path / "labelmap.txt", ["BACKGROUND", "cat", "dog"], 0)
    assert p.read_text() == "0 cat\n1 dog\n"
    assert write_labelmap(tmp_path / "l2.txt", ["cat", "dog"], None).read_text() == "0 cat\n1 dog\n"
