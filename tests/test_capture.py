"""Capture sources: files, folders, streams (a real MJPEG server on 127.0.0.1), picamera2 glue, latest-frame
semantics and reconnection with backoff."""

from __future__ import annotations

import random
import threading
import time

import cv2
import numpy as np
import pytest
from _runtime_util import FACES, MJPEGServer, decode_video, face_frames, write_video

from edge_ssd.capture import Backoff, Source, SourceEnded, open_source, source_kind
from edge_ssd.capture.opencv_source import CameraSource, StreamSource, VideoFileSource
from edge_ssd.capture.picamera2_source import Picamera2Source
from edge_ssd.errors import DependencyError, UserError
from edge_ssd.redact import mask


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("vid") / "faces.avi", face_frames(15), fps=10)


def drain(src, timeout=5.0):
    out = []
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        f = src.read(timeout=0.5)
        if f is None:
            if src.ended:
                break
            continue
        out.append(f)
    return out


def test_source_kinds(tmp_path, video):
    assert source_kind("0") == "camera" and source_kind("/dev/video2") == "camera"
    assert source_kind("rtsp://u:p@cam/stream") == "stream" and source_kind("http://x/y.mjpg") == "stream"
    assert source_kind("picamera2") == "picamera2" and source_kind("picamera2:1") == "picamera2"
    assert source_kind(str(FACES)) == "images" and source_kind(str(FACES / "1.jpg")) == "images"
    assert source_kind(str(video)) == "file"
    assert isinstance(open_source("3"), CameraSource)
    assert isinstance(open_source("rtsp://cam/s"), StreamSource)
    assert isinstance(open_source(str(video)), VideoFileSource)
    assert mask("rtsp://admin:secret@10.0.0.2/s") == "rtsp://admin:***@10.0.0.2/s"
    assert "secret" not in open_source("rtsp://admin:secret@10.0.0.2/s").name


def test_bad_specs_are_one_line_errors(tmp_path):
    for spec in (str(tmp_path / "missing.mp4"), str(tmp_path / "missing_dir/"), ""):
        with pytest.raises(UserError) as e:
            open_source(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="picamera2:N"):
        open_source("picamera2:x")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no images"):
        open_source(str(empty))
    with pytest.raises(UserError, match="WIDTHxHEIGHT"):
        open_source("0", size="big")


def test_missing_camera_fails_fast_with_one_line():
    src = open_source("/dev/video99", fail_fast=True)
    with pytest.raises(UserError) as e:
        src.open()
    msg = str(e.value)
    assert "/dev/video99" in msg and "ls /dev/video*" in msg and "\n" not in msg
    assert src.status == "failed"


def test_video_file_all_frames_in_order(video):
    ref = decode_video(video)
    src = open_source(str(video))
    assert not src.latest
    with src:
        frames = drain(src)
    assert len(frames) == len(ref) == 15
    assert [f.index for f in frames] == list(range(15))
    for f, r in zip(frames, ref, strict=True):
        np.testing.assert_array_equal(f.image, r)
    assert src.status == "ended" and src.file_fps == pytest.approx(10, rel=0.01)
    img, ts, idx = frames[3]  # unpacks as (frame_bgr, ts, index)
    assert idx == 3 and abs(ts - time.time()) < 60 and img.shape == (480, 640, 3)


def test_video_realtime_pacing_and_loop(video):
    src = open_source(str(video), realtime=True, loop=True)
    with src:
        t0 = time.monotonic()
        frames = [src.read(2.0) for _ in range(12)]
        dt = time.monotonic() - t0
    assert all(f is not None for f in frames)
    assert [f.index for f in frames] == list(range(12))
    # a looping file restarts: frame 0 and frame 15 would be the same picture; 12 frames at 10 FPS take >= 1.1 s
    assert dt >= 1.0
    assert not src.finite


def test_truncated_video_ends_cleanly(video, tmp_path):
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.55)])
    src = open_source(str(cut))
    with src:
        frames = drain(src)
    assert 0 < len(frames) < 15
    assert src.status == "ended"


def test_corrupt_frame_inside_video_is_skipped(video, tmp_path):
    """Garbage in the middle of one MJPG frame: the frames around it still come out."""
    data = bytearray(video.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(starts) >= 15
    s = starts[7]
    data[s: s + 400] = bytes(random.Random(0).randrange(256) for _ in range(400))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(bytes(data))
    src = open_source(str(bad))
    with src:
        frames = drain(src)
    assert len(frames) >= 13  # at most the damaged frame is lost (some decoders conceal it instead)
    assert src.status == "ended"


def test_image_folder_skips_corrupt_files(tmp_path):
    for p in sorted(FACES.glob("*.jpg"))[:3]:
        (tmp_path / p.name).write_bytes(p.read_bytes())
    (tmp_path / "0_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(str(tmp_path))
    with src:
        frames = drain(src)
    assert len(frames) == 3
    assert src.dropped["corrupt"] == 1
    assert [f.path.rsplit("/", 1)[1] for f in frames] == [p.name for p in sorted(tmp_path.glob("[!0]*.jpg"))]
    single = open_source(str(FACES / "2.jpg"))
    with single:
        one = drain(single)
    assert len(one) == 1 and one[0].image.shape[2] == 3


class Counting(Source):
    """A live in-memory source producing numbered frames every ``period`` seconds."""

    kind = "memory"

    def __init__(self, period=0.002, **kw):
        super().__init__("counting", **kw)
        self.period = period

    def _connect(self):
        pass

    def _grab(self):
        time.sleep(self.period)
        img = np.zeros((4, 4, 3), np.uint8)
        img[0, 0, 0] = self._index % 256
        return img


def test_latest_frame_drops_stale_frames_and_counts_them():
    src = Counting(period=0.002).open()
    got = []
    for _ in range(10):
        time.sleep(0.03)  # a slow consumer
        f = src.read(1.0)
        assert f is not None
        got.append(f.index)
    src.close()
    assert got == sorted(got) and len(set(got)) == len(got)
    assert got[-1] - got[0] > 10  # it jumps ahead to the newest frame
    pending = 1 if src._slot is not None else 0
    assert src.frames == len(got) + src.dropped["stale"] + pending
    assert src.dropped["stale"] > 0


def test_max_frame_age_drops_old_frames():
    src = Counting(period=0.2, max_frame_age=0.05).open()
    time.sleep(0.35)  # the first frame is waiting, too old by now
    f = src.read(1.0)
    src.close()
    assert src.dropped["age"] >= 1
    assert f is not None and time.monotonic() - f.mono < 0.5


def test_backoff_is_exponential_capped_and_jittered():
    b = Backoff(initial=0.5, maximum=4.0, factor=2.0, jitter=0.25)
    rng = random.Random(1)
    for attempt, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (10, 4.0)]:
        ds = [b.delay(attempt, rng) for _ in range(50)]
        assert all(0.75 * base <= d <= base for d in ds)
        assert len({round(d, 6) for d in ds}) > 1  # jittered


class Flaky(Source):
    """Fails to connect ``fail`` times, then works."""

    def __init__(self, fail, **kw):
        super().__init__("flaky", **kw)
        self.fail = fail
        self.attempts = 0

    def _connect(self):
        self.attempts += 1
        if self.attempts <= self.fail:
            raise ConnectionError("down")

    def _grab(self):
        time.sleep(0.01)
        return np.zeros((2, 2, 3), np.uint8)


def test_failing_source_reconnects_with_backoff_and_does_not_spin():
    src = Flaky(4, backoff=Backoff(0.05, 0.2, jitter=0.0)).open()
    t0 = time.process_time()
    f = src.read(timeout=5.0)
    cpu = time.process_time() - t0
    src.close()
    assert f is not None
    assert src.attempts == 5 and src.errors == 4 and src.reconnects == 4
    assert src.delays == pytest.approx([0.05, 0.1, 0.2, 0.2])
    assert src.status_history[:3] == ["connecting", "reconnecting", "ok"]
    assert cpu < 0.4  # it slept, it did not spin


def test_max_failures_gives_up_and_fail_fast_raises():
    src = Flaky(100, backoff=Backoff(0.01, 0.02), max_failures=3).open()
    assert src.read(timeout=3.0) is None
    assert src.status == "failed" and src.ended and src.errors == 3
    src.close()
    with pytest.raises(UserError, match="down"):
        Flaky(1, fail_fast=True).open()


def test_stream_disappears_and_is_reconnected():
    srv = MJPEGServer(face_frames(3, size=(320, 240)), fps=30).start()
    src = open_source(srv.url, name="ipcam", backoff=Backoff(0.1, 0.4))
    try:
        src.open()
        first = src.read(5.0)
        assert first is not None and first.image.shape == (240, 320, 3)
        assert src.status == "ok"
        srv.stop()
        t_end = time.monotonic() + 10
        while src.status != "reconnecting" and time.monotonic() < t_end:
            src.read(0.2)
        assert src.status == "reconnecting"
        time.sleep(0.8)  # a few refused attempts with growing delays
        assert src.errors >= 2 and len(src.delays) >= 2
        srv.start()
        t_end = time.monotonic() + 10
        f = None
        while time.monotonic() < t_end:
            f = src.read(0.5)
            if f is not None and f.index > first.index and src.status == "ok":
                break
        assert f is not None and src.status == "ok"
        assert src.status_history[:4] == ["connecting", "ok", "reconnecting", "ok"]
        assert src.reconnects >= 1
    finally:
        src.close()
        srv.stop()
    assert src._thread is None


class FakePicamera2:
    """The Picamera2 API surface the source uses (picamera2 needs libcamera and a Pi)."""

    instances: list = []

    def __init__(self, camera_num=0):
        if camera_num > 0:
            raise IndexError("list index out of range")
        self.camera_num = camera_num
        self.calls = []
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, buffer_count, controls):
        self.calls.append(("config", main, controls))
        return {"main": main}

    def configure(self, config):
        self.config = config

    def start(self):
        self.calls.append("start")

    def capture_array(self, stream):
        w, h = self.config["main"]["size"]
        time.sleep(0.005)
        img = np.zeros((h, w, 3), np.uint8)
        img[..., 0] = 255  # libcamera RGB888 = B, G, R in memory: blue in channel 0, as OpenCV expects
        return img

    def stop(self):
        self.calls.append("stop")

    def close(self):
        self.calls.append("close")


def test_picamera2_source_configures_rgb888_and_releases():
    FakePicamera2.instances.clear()
    src = Picamera2Source(0, size=(320, 240), fps=15, picamera2_cls=FakePicamera2)
    with src:
        f = src.read(2.0)
    cam = FakePicamera2.instances[0]
    assert f is not None and f.image.shape == (240, 320, 3) and f.image[0, 0, 0] == 255
    kind, main, controls = cam.calls[0]
    assert main == {"size": (320, 240), "format": "RGB888"} and controls == {"FrameRate": 15.0}
    assert cam.calls[-2:] == ["stop", "close"]
    assert src.name == "picamera2:0"


def test_picamera2_missing_camera_and_missing_package():
    src = Picamera2Source(1, picamera2_cls=FakePicamera2, fail_fast=True)
    with pytest.raises(UserError, match="no Pi camera 1"):
        src.open()
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 is installed here")
    except ImportError:
        pass
    src = open_source("picamera2", fail_fast=True)
    with pytest.raises(DependencyError) as e:
        src.open()
    assert "python3-picamera2" in str(e.value) and "--system-site-packages" in str(e.value)
    # without fail_fast, a missing package is not retried forever: the source fails
    src2 = open_source("picamera2:0", backoff=Backoff(0.01, 0.01))
    src2.open()
    assert src2.read(2.0) is None and src2.status == "failed"
    src2.close()


def test_sources_close_their_threads(video):
    before = set(threading.enumerate())
    srcs = [Counting().open(), open_source(str(video), latest=True, realtime=True).open()]
    time.sleep(0.1)
    for s in srcs:
        s.close()
    assert set(threading.enumerate()) - before == set()


def test_ended_source_in_latest_mode_returns_none(video):
    src = open_source(str(video), latest=True, realtime=False)
    with src:
        frames = drain(src, timeout=10)
    assert 1 <= len(frames) <= 15 and src.ended
    assert src.frames == len(frames) + src.dropped["stale"]


def test_source_ended_exception_in_sync_mode():
    class Three(Source):
        finite = True

        def _connect(self):
            self.n = 0

        def _grab(self):
            self.n += 1
            if self.n > 3:
                raise SourceEnded()
            return np.full((2, 2, 3), self.n, np.uint8)

    src = Three("three", latest=False)
    with src:
        got = drain(src)
    assert [int(f.image[0, 0, 0]) for f in got] == [1, 2, 3]
    assert cv2 is not None
