"""The resident-memory levers of runtime/memory.py, in a real subprocess (their effect is per process)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _paths import REPO

PROBE = r"""
import json, cv2, numpy as np
from edge_ssd.runtime.memory import release_library_pages, trim_heap

def file_kb():
    return int(next(l for l in open("/proc/self/status") if l.startswith("RssFile:")).split()[1])

img = (np.arange(480 * 640 * 3) % 251).astype(np.uint8).reshape(480, 640, 3)
before_out = cv2.imencode(".jpg", cv2.resize(img, (300, 300)))[1].tobytes()
before = file_kb()
released = release_library_pages()
after = file_kb()
again = cv2.imencode(".jpg", cv2.resize(img, (300, 300)))[1].tobytes()  # code faults back in, same result
print(json.dumps({"released": released, "before": before, "after": after, "same": again == before_out,
                  "trimmed": trim_heap()}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc and madvise")
def test_release_library_pages_drops_file_pages_and_the_libraries_still_work():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["released"] > 10 * 2**20 and r["same"]
    assert r["after"] < r["before"] - 10 * 1024  # at least 10 MB of file-backed pages left RSS


def test_keep_library_pages_turns_it_off():
    code = "from edge_ssd.runtime.memory import release_library_pages; print(release_library_pages())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO), "EDGE_SSD_KEEP_LIBRARY_PAGES": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
