"""The threaded pipeline with real inference (LiteRT on a converted bundle)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from _runtime_util import FACES, MJPEGServer, decode_video, face_frames, write_video

from edge_ssd.capture import Backoff, Source, open_source
from edge_ssd.errors import UserError
from edge_ssd.runtime import Pipeline, SourceConfig, load_detector


@pytest.fixture(scope="module")
def det(face_bundle):
    return load_detector(face_bundle, score_threshold=0.6)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("vid") / "faces.avi", face_frames(16), fps=10)


class Collect:
    wants_image = False

    def __init__(self):
        self.results = []

    def handle(self, r):
        self.results.append(r)


def _same(a, b):
    assert len(a) == len(b)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-6)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    np.testing.assert_array_equal(a.class_ids, b.class_ids)


def test_video_detections_equal_per_frame_detect(det, video):
    """Every frame of the video through the pipeline == detect() on the frames decoded from the same file."""
    sink = Collect()
    st = Pipeline(det, [SourceConfig(str(video), name="vid")], [sink], process_all=True).run_until_done(120)
    frames = decode_video(video)
    assert st.processed == st.frames_in == len(frames) == 16
    assert st.dropped_total == 0 and st.sources["vid"].status == "ended"
    assert [r.frame for r in sink.results] == list(range(16))
    n = 0
    for r, f in zip(sink.results, frames, strict=True):
        assert (r.width, r.height, r.source, r.model) == (640, 480, "vid", det.name)
        _same(r.detections, det.detect(f))
        n += len(r.detections)
    assert n > 0
    assert st.inference_ms.p50 > 0 and st.latency_ms.p95 >= st.latency_ms.p50
    assert st.backend == "litert"


def test_multiple_sources_thresholds_and_label_filter(det, video):
    sink = Collect()
    p = Pipeline(det, [SourceConfig(str(FACES), name="lo", score_threshold=0.3),
                       SourceConfig(str(FACES), name="hi", score_threshold=0.95),
                       SourceConfig(str(FACES), name="none", labels=["BACKGROUND"])], [sink], process_all=True)
    st = p.run_until_done(120)
    assert st.processed == 12 and set(st.sources) == {"lo", "hi", "none"}
    by = {s: [r for r in sink.results if r.source == s] for s in ("lo", "hi", "none")}
    assert all(len(v) == 4 for v in by.values())
    for lo, hi, no in zip(by["lo"], by["hi"], by["none"], strict=True):
        assert lo.frame == hi.frame
        assert len(hi.detections) <= len(lo.detections)
        assert np.all(hi.detections.scores > 0.95) and np.all(lo.detections.scores > 0.3)
        assert len(no.detections) == 0  # only BACKGROUND kept: no faces pass
        assert getattr(lo, "path", "").endswith(".jpg")
    assert sum(len(r.detections) for r in by["lo"]) > sum(len(r.detections) for r in by["hi"])
    with pytest.raises(UserError, match="unknown label"):
        Pipeline(det, [SourceConfig(str(FACES), labels=["cat"])])
    with pytest.raises(UserError, match="unique"):
        Pipeline(det, [SourceConfig(str(FACES), name="x"), SourceConfig(str(FACES), name="x")])


class Boom:
    name = "boom"

    def __init__(self):
        self.calls = 0
        self.closed = False

    def handle(self, r):
        self.calls += 1
        if r.frame % 2 == 0:
            raise RuntimeError("sink is broken")

    def close(self):
        self.closed = True


def test_failing_sink_is_counted_not_fatal(det, video):
    boom, ok = Boom(), Collect()
    st = Pipeline(det, [str(video)], [boom, ok], process_all=True).run_until_done(120)
    assert boom.calls == 16 and len(ok.results) == 16
    assert st.sink_errors == {"boom": 8}
    assert boom.closed


def test_corrupt_inputs_do_not_stop_the_pipeline(det, video, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in sorted(FACES.glob("*.jpg")):
        (imgs / p.name).write_bytes(p.read_bytes())
    (imgs / "2b.jpg").write_bytes(b"garbage")
    cut = tmp_path / "cut.avi"
    data = video.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    sink = Collect()
    st = Pipeline(det, [SourceConfig(str(imgs), name="imgs"), SourceConfig(str(cut), name="cut")], [sink],
                  process_all=True).run_until_done(120)
    assert st.sources["imgs"].processed == 4
    assert st.dropped["corrupt"] >= 1
    assert 0 < st.sources["cut"].processed < 16
    assert st.sources["cut"].status == "ended"


class Fast(Source):
    """A live source producing the same real frame as fast as possible (faster than inference)."""

    def __init__(self, frame, **kw):
        super().__init__("fast", **kw)
        self.frame = frame

    def _connect(self):
        pass

    def _grab(self):
        time.sleep(0.001)
        return self.frame


class Slow(Collect):
    def handle(self, r):
        time.sleep(0.02)
        super().handle(r)


def test_live_mode_drops_instead_of_queueing_and_stops_cleanly(det):
    before = set(threading.enumerate())
    frame = face_frames(1)[0]
    sink = Slow()
    p = Pipeline(det, [SourceConfig(Fast(frame), name="cam")], [sink])
    p.start()
    t_start = time.monotonic()
    time.sleep(1.0)
    lp = p.last_progress
    assert lp > t_start  # every stage beat while running
    st = p.stats()
    p.stop()
    assert st.processed > 5
    assert st.dropped.get("stale", 0) + st.dropped.get("queue", 0) > 0
    # frames never pile up: latency stays bounded by a few frames, not the run time
    assert st.latency_ms.p50 < 900
    assert set(threading.enumerate()) - before == set()
    assert st.sources["cam"].status in ("ok", "ended")


def test_max_fps_caps_a_source(det):
    frame = face_frames(1)[0]
    sink = Collect()
    p = Pipeline(det, [SourceConfig(Fast(frame), name="cam", max_fps=5)], [sink])
    p.start()
    time.sleep(1.2)
    p.stop()
    st = p.stats()
    assert 2 <= st.processed <= 8
    assert st.dropped["rate"] > 20


class Stuck(Collect):
    def __init__(self):
        super().__init__()
        self.release = threading.Event()

    def handle(self, r):
        super().handle(r)
        self.release.wait(10)


def test_last_progress_stops_while_a_sink_is_stuck(det):
    frame = face_frames(1)[0]
    sink = Stuck()
    p = Pipeline(det, [SourceConfig(Fast(frame), name="cam")], [sink])
    p.start()
    t_end = time.monotonic() + 10
    while not sink.results and time.monotonic() < t_end:
        time.sleep(0.05)
    time.sleep(0.6)
    a = p.last_progress
    time.sleep(0.6)
    assert p.last_progress == a  # the sink stage is stuck, so no progress is reported
    sink.release.set()
    time.sleep(0.6)
    assert p.last_progress > a
    p.stop()


def test_stream_source_reconnects_inside_the_pipeline(det):
    srv = MJPEGServer(face_frames(3, size=(320, 240)), fps=25).start()
    sink = Collect()
    src = open_source(srv.url, name="ipcam", backoff=Backoff(0.1, 0.3))
    p = Pipeline(det, [SourceConfig(src)], [sink])
    try:
        p.start()
        t_end = time.monotonic() + 10
        while len(sink.results) < 3 and time.monotonic() < t_end:
            time.sleep(0.05)
        assert len(sink.results) >= 3
        srv.stop()
        t_end = time.monotonic() + 10
        while p.stats().sources["ipcam"].status != "reconnecting" and time.monotonic() < t_end:
            time.sleep(0.05)
        assert p.stats().sources["ipcam"].status == "reconnecting"
        lp = p.last_progress
        time.sleep(0.6)
        assert p.last_progress > lp  # a camera outage is not a stuck pipeline
        n = len(sink.results)
        srv.start()
        t_end = time.monotonic() + 10
        while len(sink.results) <= n + 2 and time.monotonic() < t_end:
            time.sleep(0.05)
        assert len(sink.results) > n + 2
        st = p.stats().sources["ipcam"]
        assert st.status == "ok" and st.reconnects >= 1 and st.errors >= 1
    finally:
        p.stop()
        srv.stop()


def test_stop_without_drain_and_idempotent(det, video):
    sink = Collect()
    p = Pipeline(det, [SourceConfig(open_source(str(video), latest=False), name="v")], [sink], process_all=True)
    p.start()
    p.stop(drain=False)
    p.stop()
    assert len(sink.results) <= 16
    assert not any(t.name.startswith("pipeline-") for t in threading.enumerate())


def test_keep_image_for_sinks_that_want_it(det):
    class Img(Collect):
        wants_image = True

    sink = Img()
    Pipeline(det, [str(FACES / "2.jpg")], [sink], process_all=True).run_until_done(60)
    r = sink.results[0]
    assert r.image is not None and r.image.shape == (r.height, r.width, 3)
    objs = r.objects()
    assert objs and all(0 <= o["box_px"][0] <= r.width for o in objs)
