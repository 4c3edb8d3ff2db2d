"""Logs that suit a device: the journal format under systemd, secrets masked in every line, and one line per
state change (a damaged video, a source that gives one frame per connection), never one per frame."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _runtime_util import face_frames, write_video

from edge_ssd.capture.base import Backoff, Source, SourceError
from edge_ssd.logs import setup_logging
from edge_ssd.redact import mask

REPO = Path(__file__).resolve().parents[1]


def _log_lines(env: dict[str, str]) -> list[str]:
    code = ("import logging; from edge_ssd.logs import setup_logging; setup_logging(); "
            "log = logging.getLogger('edge_ssd.x'); log.error('bad'); log.warning('careful'); log.info('fyi'); "
            "log.debug('hidden'); log.info('rtsp://u:pw123@cam/s')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(REPO), **env}, cwd=REPO)
    return r.stderr.splitlines()


def test_under_systemd_lines_carry_syslog_priorities_and_no_timestamp():
    lines = _log_lines({"JOURNAL_STREAM": "8:12345"})
    assert lines == ["<3>edge_ssd.x: bad", "<4>edge_ssd.x: careful", "<6>edge_ssd.x: fyi",
                     "<6>edge_ssd.x: rtsp://u:***@cam/s"]


def test_on_a_terminal_lines_have_a_timestamp_and_level():
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    lines = _log_lines({**env, "JOURNAL_STREAM": ""})
    assert len(lines) == 4 and lines[0].endswith("ERROR edge_ssd.x: bad") and lines[0][:4].isdigit()
    assert "pw123" not in "\n".join(lines)


def test_debug_and_tracebacks_are_prefixed_and_masked():
    buf = io.StringIO()
    h = setup_logging(verbose=True, stream=buf, env={"JOURNAL_STREAM": "1:1"})
    try:
        try:
            raise ValueError("cannot open http://admin:hunter2@10.0.0.9/snap.jpg")
        except ValueError:
            logging.getLogger("edge_ssd.t").exception("failed")
        logging.getLogger("edge_ssd.t").debug("dbg")
    finally:
        logging.getLogger().removeHandler(h)
        logging.getLogger().setLevel(logging.WARNING)
    out = buf.getvalue()
    assert "hunter2" not in out and "admin:***@" in out
    assert all(ln.startswith(("<3>", "<7>")) for ln in out.splitlines())
    assert "<7>edge_ssd.t: dbg" in out


@pytest.mark.parametrize("text, want", [
    ("rtsp://user:secret@host/x", "rtsp://user:***@host/x"),
    ("http://TOKEN@host/p", "http://***@host/p"),
    ("rtsp://u:p@ss@host:554/a", "rtsp://u:***@host:554/a"),
    ("http://h/a?user=a&password=xx&b=1", "http://h/a?user=a&password=***&b=1"),
    ('{"password": "x"}', '{"password": "***"}'),
    ("--password hunter2", "--password ***"),
    ("mqtt://broker:1883 ok, password set", "mqtt://broker:1883 ok, password set"),
    ("user@example.com wrote 12:30", "user@example.com wrote 12:30"),
])
def test_one_masking_function(text, want):
    assert mask(text) == want
    assert mask(mask(text)) == want  # idempotent


def test_damaged_video_logs_one_line_per_stretch(tmp_path, caplog):
    from edge_ssd.capture.opencv_source import VideoFileSource

    vid = write_video(tmp_path / "v.avi", face_frames(40, size=(160, 120)))
    data = vid.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.5)])
    src = VideoFileSource(cut, latest=False)
    with caplog.at_level(logging.INFO):
        src.open()
        frames = 0
        while src.read(1.0) is not None:
            frames += 1
        src.close()
    assert 5 < frames < 40
    per_frame = [r for r in caplog.records if "cannot be decoded" in r.getMessage()]
    assert len(per_frame) <= 1 and len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 2


class OneFramePerConnection(Source):
    """An HTTP snapshot URL / a 1-frame video served as a stream: every connection yields one frame, then ends."""

    def __init__(self, **kw):
        super().__init__("snap", **kw)
        self.connects = 0
        self._given = False

    def _connect(self):
        self.connects += 1
        self._given = False

    def _grab(self):
        if self._given:
            raise SourceError("stream ended")
        self._given = True
        return np.full((4, 4, 3), 7, np.uint8)


def test_one_frame_source_backs_off_and_is_not_republished(caplog):
    src = OneFramePerConnection(backoff=Backoff(0.05, 0.8, jitter=0.0))
    got = 0
    with caplog.at_level(logging.INFO):
        src.open()
        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            if src.read(0.1) is not None:
                got += 1
        src.close()
    assert got == 1 and src.dropped["repeat"] >= 2  # the same frame again is not a new frame
    assert src.delays == sorted(src.delays) and src.delays[-1] >= 0.4  # growing, not 0.05 forever
    assert src.connects <= 7  # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 ... (a fixed 0.05 s would be ~40)
