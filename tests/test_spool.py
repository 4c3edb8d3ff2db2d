"""The on-disk spool: order, ack-only deletion, limits, crash consistency, a real full disk (tmpfs)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from edge_ssd.publish.spool import DISK_OK_AFTER_S, Spool


def test_order_ack_and_restart(tmp_path):
    s = Spool(tmp_path)
    ids = [s.append("t/a", f"m{i}".encode()) for i in range(50)]
    assert ids == sorted(ids) and len(s) == 50
    recs = s.peek(0, 20)
    assert [r.payload for r in recs] == [f"m{i}".encode() for i in range(20)]
    for r in recs[5:]:  # acks in any order delete exactly those rows
        s.ack(r.id)
    s.ack(recs[2].id)
    assert len(s) == 50 - 16
    s.close()
    s2 = Spool(tmp_path)  # survives a restart, ids keep increasing after the table emptied
    left = [r.payload for r in s2.peek(0, 100)]
    assert left == [b"m0", b"m1", b"m3", b"m4"] + [f"m{i}".encode() for i in range(20, 50)]
    for r in s2.peek(0, 100):
        s2.ack(r.id)
    assert len(s2) == 0
    assert s2.append("t", b"x") > ids[-1]


def test_max_bytes_drops_oldest_and_counts(tmp_path, caplog):
    s = Spool(tmp_path, max_bytes=20_000)
    with caplog.at_level(logging.WARNING):
        for i in range(100):
            s.append("t", b"%04d" % i + b"x" * 500)
    kept = [int(r.payload[:4]) for r in s.peek(0, 1000)]
    assert kept == list(range(100 - len(kept), 100)) and len(kept) < 100  # newest survive, contiguous
    assert s.dropped_limit == 100 - len(kept) and s.bytes <= 20_000
    assert s.stats()["dropped"] == s.dropped_limit
    assert "spool.max_bytes" in caplog.text


def test_max_age_expires(tmp_path):
    s = Spool(tmp_path, max_age=10)
    now = time.time()
    s.append("t", b"old", ts=now - 100)
    s.append("t", b"new", ts=now)
    s._last_prune = 0
    s.append("t", b"newer", ts=now + 1)
    assert [r.payload for r in s.peek(0, 10)] == [b"new", b"newer"] and s.dropped_age == 1


WRITER = """
import sys
from edge_ssd.publish.spool import Spool
s = Spool(sys.argv[1], fsync=sys.argv[2])
i = 0
while True:
    s.append("t", b"%08d" % i + b"y" * 300)
    print(i, flush=True)
    i += 1
"""


@pytest.mark.parametrize("fsync", ["normal", "always"])
def test_sigkill_mid_write_is_consistent(tmp_path, fsync):
    p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), fsync], stdout=subprocess.PIPE, text=True)
    last = -1
    for line in p.stdout:
        last = int(line)
        if last >= 300:
            break
    p.kill()
    p.wait()
    s = Spool(tmp_path)
    got = [int(r.payload[:8]) for r in s.peek(0, 100000)]
    assert got == list(range(len(got)))  # a gap-free prefix, nothing torn
    assert len(got) >= last + 1  # every append that returned before the kill is there
    assert s._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_real_enospc_logs_once_counts_and_recovers(tiny_fs, caplog):
    s = Spool(tiny_fs / "spool", max_bytes=100 << 20, reserve_bytes=96 << 10)
    with caplog.at_level(logging.WARNING):
        results = [s.append("t", os.urandom(400)) for _ in range(3000)]
    stored = [r for r in results if r is not None]
    assert stored and None in results  # the disk filled up
    assert s.dropped_disk == results.count(None) and s.stats()["disk_full"]
    full_lines = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(full_lines) == 1 and "free space" in full_lines[0].getMessage()
    # the broker comes back: every stored message can still be acknowledged (deleted)
    for r in s.peek(0, 100000):
        s.ack(r.id)
    assert len(s) == 0
    s._last_retry = 0
    now = time.time()
    assert s.append("t", b"after", ts=now) is not None  # writing works again ...
    assert "works again" not in caplog.text  # ... but one episode ends only after DISK_OK_AFTER_S of success
    # the disk flaps (full again within the episode): still one "disk full" line
    with caplog.at_level(logging.WARNING):
        again = [s.append("t", os.urandom(400), ts=now + 1) for _ in range(3000)]
    assert None in again and len([r for r in caplog.records if "disk full" in r.getMessage()]) == 1
    for r in s.peek(0, 100000):
        s.ack(r.id)
    s._last_retry = 0
    assert s.append("t", b"later", ts=now + 10) is not None
    assert s.append("t", b"later", ts=now + 10 + DISK_OK_AFTER_S) is not None
    assert caplog.text.count("works again") == 1


def test_spool_and_file_sink_are_private_whatever_the_umask(tmp_path):
    from edge_ssd.publish.filesink import FileSink

    old = os.umask(0)
    try:
        s = Spool(tmp_path / "spool", reserve_bytes=4096)
        s.append("t", b"x")
        sink = FileSink(tmp_path / "out" / "det.jsonl", max_bytes=1024, backups=1)
        sink._rotate()  # a rotated file is created the same way
    finally:
        os.umask(old)
    assert oct((tmp_path / "spool").stat().st_mode & 0o777) == "0o700"
    files = [p for p in (tmp_path / "spool").iterdir()] + [tmp_path / "out" / "det.jsonl",
                                                           tmp_path / "out" / "det.jsonl.1"]
    assert len(files) >= 3
    for p in files:
        assert oct(p.stat().st_mode & 0o777) == "0o600", p
    # an existing loose file is tightened
    loose = tmp_path / "loose.jsonl"
    loose.write_text("")
    loose.chmod(0o666)
    FileSink(loose).close()
    assert oct(loose.stat().st_mode & 0o777) == "0o600"
