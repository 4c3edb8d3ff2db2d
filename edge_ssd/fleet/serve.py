"""A small HTTP file server for ``push-bundle --serve``: GET/HEAD of the files in one folder, with
``Range: bytes=N-`` so that an interrupted device download resumes (``edge_ssd.nets.fetch``)."""

from __future__ import annotations

import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

log = logging.getLogger("edge_ssd.serve")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: BundleServer.HTTP

    def log_message(self, fmt, *args):
        log.debug("%s %s", self.client_address[0], fmt % args)

    def _file(self) -> Path | None:
        name = unquote(self.path.split("?", 1)[0]).lstrip("/")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@-]*", name):
            return None
        p = self.server.root / name
        return p if p.is_file() else None

    def _empty(self, code: int, headers: dict | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_HEAD(self):
        self._serve(body=False)

    def do_GET(self):
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        p = self._file()
        if p is None:
            self._empty(404)
            return
        size = p.stat().st_size
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", (self.headers.get("Range") or "").strip())
        if m:
            start = int(m.group(1))
            if start >= size:
                self._empty(416, {"Content-Range": f"bytes */{size}"})
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/x-tar")
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self.server.requests.append((p.name, start))
        if not body:
            return
        rate = self.server.rate
        chunk = 1 << 16 if not rate else max(1024, min(1 << 16, int(rate / 10)))
        with open(p, "rb") as f:
            f.seek(start)
            try:
                while data := f.read(chunk):
                    self.wfile.write(data)
                    if rate:
                        time.sleep(len(data) / rate)
            except (BrokenPipeError, ConnectionResetError):
                pass


class BundleServer:
    """Serve the files of ``root`` on ``host:port`` (port 0: a free one) from a background thread; ``rate``
    caps each download at that many bytes/s (a site's slow uplink)."""

    class HTTP(ThreadingHTTPServer):
        daemon_threads = True

        def __init__(self, addr, root: Path, rate: float | None):
            super().__init__(addr, _Handler)
            self.root = root
            self.rate = rate
            self.requests: list[tuple[str, int]] = []  # (file, first byte) per request

    def __init__(self, root: str | Path, host: str = "0.0.0.0", port: int = 0, rate: float | None = None):
        self.httpd = BundleServer.HTTP((host, port), Path(root), rate)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="bundle-http", daemon=True)

    @property
    def requests(self) -> list[tuple[str, int]]:
        return self.httpd.requests

    def start(self) -> BundleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)
