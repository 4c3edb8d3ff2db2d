"""The trained test model end to end on the device side: its int8 bundle (from `edge-ssd convert`) in the
threaded pipeline on a generated video with known boxes. Video detections equal per-frame detections, and they
find the objects the generator drew."""

from __future__ import annotations

import numpy as np
import pytest
from _runtime_util import decode_video

from edge_ssd.model.box import iou_of
from edge_ssd.runtime import Pipeline, SourceConfig, load_detector

pytestmark = pytest.mark.slow


class Collect:
    def __init__(self):
        self.results = []

    def handle(self, r):
        self.results.append(r)


@pytest.fixture(scope="module")
def testmodel_bundle(test_model, test_model_int8_bundle):
    return test_model, test_model_int8_bundle


def test_int8_bundle_on_a_generated_video(testmodel_bundle, tmp_path):
    from edge_ssd.train.synth import LABELS, make_video

    tm, bundle = testmodel_bundle
    video = tmp_path / "shapes.avi"
    gts = make_video(video, n_frames=24, size=(480, 360), seed=11, fps=10.0)
    det = load_detector(bundle, score_threshold=0.5)
    assert det.labels == list(LABELS) and det.input_dtype == np.int8
    sink = Collect()
    st = Pipeline(det, [SourceConfig(str(video), name="shapes")], [sink], process_all=True).run_until_done(300)
    frames = decode_video(video)
    assert st.processed == len(frames) == 24 and st.dropped_total == 0
    # the pipeline (threads, preallocated buffers, per-head outputs concatenated) == detect() frame by frame
    for r, f in zip(sink.results, frames, strict=True):
        d = det.detect(f)
        assert np.array_equal(r.detections.class_ids, d.class_ids)
        np.testing.assert_allclose(r.detections.boxes, d.boxes, atol=1e-6)
        np.testing.assert_allclose(r.detections.scores, d.scores, atol=1e-6)
    # and they find what the generator drew: recall and precision at IoU 0.5 with the right class
    tp = fp = npos = 0
    for r, gt in zip(sink.results, gts, strict=True):
        npos += len(gt.labels)
        used = set()
        for box, cid in zip(r.detections.boxes, r.detections.class_ids, strict=True):
            ious = iou_of(gt.boxes, box[None, :]) if len(gt.labels) else np.zeros(0)
            ok = [k for k in np.argsort(-ious) if ious[k] >= 0.5 and gt.labels[k] == cid and k not in used]
            if ok:
                used.add(ok[0])
                tp += 1
            else:
                fp += 1
    assert npos > 24
    recall, precision = tp / npos, tp / max(tp + fp, 1)
    print(f"int8 test model on the video: recall {recall:.3f}, precision {precision:.3f} ({npos} objects)")
    assert recall >= 0.7 and precision >= 0.8, (recall, precision)
