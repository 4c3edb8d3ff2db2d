"""fetch-model: resumable cached downloads, tested against a real local HTTP server with Range support."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_ssd.errors import UserError
from edge_ssd.nets.fetch import MODELS, cache_dir, download, fetch_model

REPO = Path(__file__).resolve().parents[1]
EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"
VOC = (
    "BACKGROUND aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    cut: dict[str, list[int]] = field(default_factory=dict)  # path -> bytes to send on successive requests
    ranges: bool = True  # honour Range requests
    extra_length: int = 0  # announce this many bytes more than are sent
    requests: list[tuple[str, str | None]] = field(default_factory=list)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        st: ServerState = self.server.state
        st.requests.append((self.path, self.headers.get("Range")))
        data = st.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and st.ranges:
            m = re.fullmatch(r"bytes=(\d+)-", rng.strip())
            assert m, rng
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body) + st.extra_length))
        self.send_header("Accept-Ranges", "bytes" if st.ranges else "none")
        self.end_headers()
        cuts = st.cut.get(self.path)
        if cuts:
            n = cuts.pop(0)
            self.wfile.write(body[:n])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)
        if st.extra_length:
            self.close_connection = True


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _payload(n: int = 300_000, seed: int = 0) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (n // 32) + b"tail"


def test_plain_download_and_cache_reuse(server, tmp_path):
    data = _payload()
    server.state.files["/w.pth"] = data
    dest = tmp_path / "c" / "w.pth"
    assert download(server.url + "/w.pth", dest, progress=False) == dest
    assert dest.read_bytes() == data
    assert not (tmp_path / "c" / "w.pth.part").exists()
    assert download(server.url + "/w.pth", dest, expected_size=len(data), progress=False) == dest
    assert len(server.state.requests) == 1  # second call served from the cache


def test_resume_within_one_run(server, tmp_path):
    data = _payload()
    server.state.files["/w.pth"] = data
    server.state.cut["/w.pth"] = [100_000, 50_000]
    dest = tmp_path / "w.pth"
    download(server.url + "/w.pth", dest, retries=3, backoff=0, progress=False)
    assert dest.read_bytes() == data
    assert [r for _, r in server.state.requests] == [None, "bytes=100000-", "bytes=150000-"]


def test_resume_in_a_later_run(server, tmp_path):
    data = _payload()
    sha = hashlib.sha256(data).hexdigest()
    server.state.files["/w.pth"] = data
    server.state.cut["/w.pth"] = [123_456]
    dest = tmp_path / "w.pth"
    with pytest.raises(UserError) as e:
        download(server.url + "/w.pth", dest, retries=0, progress=False, sha256=sha)
    msg = str(e.value)
    assert "\n" not in msg and "123456 bytes kept" in msg and "run again to resume" in msg
    part = tmp_path / "w.pth.part"
    assert part.stat().st_size == 123_456 and not dest.exists()
    download(server.url + "/w.pth", dest, retries=0, progress=False, sha256=sha)
    assert dest.read_bytes() == data and not part.exists()
    assert server.state.requests[-1] == ("/w.pth", "bytes=123456-")


def test_complete_part_file_is_finished_with_416(server, tmp_path):
    data = _payload(5000)
    server.state.files["/w.pth"] = data
    (tmp_path / "w.pth.part").write_bytes(data)
    download(server.url + "/w.pth", tmp_path / "w.pth", progress=False)
    assert (tmp_path / "w.pth").read_bytes() == data
    assert server.state.requests == [("/w.pth", f"bytes={len(data)}-")]


def test_server_without_range_support_restarts_cleanly(server, tmp_path):
    data = _payload()
    server.state.files["/w.pth"] = data
    server.state.ranges = False
    server.state.cut["/w.pth"] = [70_000]
    dest = tmp_path / "w.pth"
    download(server.url + "/w.pth", dest, retries=2, backoff=0, progress=False)
    assert dest.read_bytes() == data  # the 200 reply overwrote the partial file instead of appending


def test_size_mismatch(server, tmp_path):
    data = _payload(10_000)
    server.state.files["/w.pth"] = data
    with pytest.raises(UserError, match=rf"is {len(data)} bytes but w.pth should be {len(data) + 7}"):
        download(server.url + "/w.pth", tmp_path / "w.pth", expected_size=len(data) + 7, progress=False)
    assert not (tmp_path / "w.pth").exists()
    # a server announcing more than it sends: a one-line error, the partial file kept, nothing final written
    server.state.extra_length = 10
    with pytest.raises(UserError, match=rf"closed at {len(data)} of {len(data) + 10} bytes"):
        download(server.url + "/w.pth", tmp_path / "w.pth", retries=0, progress=False)
    assert not (tmp_path / "w.pth").exists()
    assert (tmp_path / "w.pth.part").stat().st_size == len(data)


def test_cached_file_with_wrong_size_is_replaced(server, tmp_path):
    data = _payload(10_000)
    server.state.files["/w.pth"] = data
    dest = tmp_path / "w.pth"
    dest.write_bytes(b"old junk")
    download(server.url + "/w.pth", dest, expected_size=len(data), progress=False)
    assert dest.read_bytes() == data


def test_sha256_mismatch(server, tmp_path):
    server.state.files["/w.pth"] = _payload(10_000)
    with pytest.raises(UserError, match="sha256"):
        download(server.url + "/w.pth", tmp_path / "w.pth", sha256="0" * 64, progress=False)
    assert list(tmp_path.iterdir()) == []  # the bad download is not kept


def test_http_404_and_refused_connection(server, tmp_path):
    with pytest.raises(UserError, match="HTTP 404") as e:
        download(server.url + "/missing.pth", tmp_path / "x.pth", progress=False)
    assert "\n" not in str(e.value) and len(server.state.requests) == 1  # not retried
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(UserError, match=r"cannot download .*after 2 attempts.*--url") as e:
        download(f"http://127.0.0.1:{port}/w.pth", tmp_path / "x.pth", retries=1, backoff=0, progress=False)
    assert "\n" not in str(e.value)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_SSD_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env" / "models"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("EDGE_SSD_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "edge-ssd" / "models"


def test_known_models_point_at_the_authors_files():
    assert MODELS["mb1-ssd-voc"].url.endswith("models-hao/mobilenet-v1-ssd-mp-0_675.pth")
    assert MODELS["mb2-ssd-lite-voc"].url.endswith("models-hao/mb2-ssd-lite-mp-0_686.pth")
    assert all(m.labels_url.endswith("models-hao/voc-model-labels.txt") for m in MODELS.values())


# ---------------------------------------------------------------------------------------- fetch_model / CLI


@pytest.fixture(scope="module")
def checkpoints() -> dict[str, bytes]:
    import torch

    from edge_ssd.nets import create_net

    torch.manual_seed(0)
    out = {}
    for arch in ("mb2-ssd-lite", "mb1-ssd-lite"):
        buf = io.BytesIO()
        torch.save(create_net(arch, 21).state_dict(), buf)
        out[arch] = buf.getvalue()
    return out


def test_fetch_model_with_mirror(server, tmp_path, checkpoints):
    server.state.files["/mb2.pth"] = checkpoints["mb2-ssd-lite"]
    server.state.files["/labels.txt"] = ("\n".join(VOC) + "\n").encode()
    server.state.cut["/mb2.pth"] = [1_000_000]
    f = fetch_model("mb2-ssd-lite-voc", cache=tmp_path, url=server.url + "/mb2.pth",
                    labels_url=server.url + "/labels.txt", progress=False)  # fmt: skip
    assert f.arch == "mb2-ssd-lite" and f.num_classes == 21
    assert f.weights == tmp_path / "mb2-ssd-lite-voc" / "mb2.pth"
    assert f.weights.read_bytes() == checkpoints["mb2-ssd-lite"]
    assert f.labels.read_text().split() == VOC
    assert ("/mb2.pth", "bytes=1000000-") in server.state.requests


def test_fetch_model_rejects_wrong_checkpoint(server, tmp_path, checkpoints):
    server.state.files["/x.pth"] = checkpoints["mb1-ssd-lite"]
    server.state.files["/labels.txt"] = ("\n".join(VOC) + "\n").encode()
    with pytest.raises(UserError, match=r"not a usable mb2-ssd-lite checkpoint.*--arch mb1-ssd-lite"):
        fetch_model("mb2-ssd-lite-voc", cache=tmp_path, url=server.url + "/x.pth",
                    labels_url=server.url + "/labels.txt", progress=False)  # fmt: skip
    server.state.files["/labels.txt"] = b"BACKGROUND\nperson\n"
    with pytest.raises(UserError, match="lists 2 classes, expected 21"):
        fetch_model("mb1-ssd-voc", cache=tmp_path / "b", url=server.url + "/x.pth",
                    labels_url=server.url + "/labels.txt", progress=False, verify=False)  # fmt: skip


def test_cli_fetch_model(server, tmp_path, checkpoints):
    server.state.files["/mb2.pth"] = checkpoints["mb2-ssd-lite"]
    server.state.files["/labels.txt"] = ("\n".join(VOC) + "\n").encode()
    env = dict(os.environ, EDGE_SSD_CACHE=str(tmp_path / "cache"))
    cmd = [str(EDGE_SSD), "fetch-model", "mb2-ssd-lite-voc", "--url", server.url + "/mb2.pth",
           "--labels-url", server.url + "/labels.txt"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    weights = tmp_path / "cache" / "models" / "mb2-ssd-lite-voc" / "mb2.pth"
    assert f"weights: {weights}" in r.stdout and "--arch mb2-ssd-lite" in r.stdout
    assert weights.read_bytes() == checkpoints["mb2-ssd-lite"]
    # network failure: one line, exit 2, no traceback
    r = subprocess.run([*cmd[:3], "--url", server.url + "/gone.pth", "--no-verify", "--cache", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "HTTP 404" in lines[0], r.stderr
