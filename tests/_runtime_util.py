"""Helpers for the runtime/capture/pipeline/detect tests: real models, real photos, real videos."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
from _paths import FACE_LABELS, FACE_ONNX, FACES, ONNX2TF, PHOTOS, REPO, SHARED  # noqa: F401 (re-exported)


def face_photos() -> list[Path]:
    return sorted(p for p in FACES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def make_face_bundle(out_dir: Path) -> Path:
    """A float32 bundle of the ultralight face model: onnx2tf run directly (until `convert_model` is used),
    plus a manifest for a model whose outputs are probabilities and corner boxes."""
    from edge_ssd.model.bundle import InputSpec, Manifest, OutputSpec, Postprocess, sha256_file, write_manifest

    work = out_dir / "onnx2tf"
    if not ONNX2TF.exists():
        raise RuntimeError(f"{ONNX2TF} missing: run scripts/setup.sh")
    # onnx2tf writes its onnxsim-simplified model back over its input: never point it at ../shared
    work.mkdir(parents=True, exist_ok=True)
    src = work / FACE_ONNX.name
    shutil.copyfile(FACE_ONNX, src)
    subprocess.run([str(ONNX2TF), "-i", str(src), "-o", str(work)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    bundle = out_dir / "face.bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    model = bundle / "model.tflite"
    shutil.copyfile(work / "version-slim-320_float32.tflite", model)
    labels = [ln.strip() for ln in FACE_LABELS.read_text().splitlines() if ln.strip()]
    m = Manifest(
        model_sha256=sha256_file(model),
        target="float",
        input=InputSpec(name="input", shape=[1, 240, 320, 3], layout="NHWC", dtype="float32"),
        scores=OutputSpec(name="scores", shape=[1, 4420, 2]),
        boxes=OutputSpec(name="boxes", shape=[1, 4420, 4]),
        postprocess=Postprocess(score_fn="none", box_encoding="corners", score_threshold=0.7),
        labels=labels,
        source={"file": FACE_ONNX.name, "sha256": sha256_file(FACE_ONNX)},
        converter={"tool": "onnx2tf (direct, test fixture)"},
    )
    write_manifest(bundle, m)
    return bundle


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPG .avi of ``frames`` (all resized to the first frame's size)."""
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened(), "cv2.VideoWriter cannot write MJPG here"
    for f in frames:
        vw.write(cv2.resize(f, (w, h)) if f.shape[:2] != (h, w) else f)
    vw.release()
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


def face_frames(n: int = 12, size=(640, 480)) -> list[np.ndarray]:
    """``n`` frames from the face photos, each shifted a little so consecutive frames differ."""
    photos = [cv2.imread(str(p)) for p in face_photos()]
    w, h = size
    out = []
    for i in range(n):
        img = cv2.resize(photos[i % len(photos)], (w, h))
        dx = (i * 7) % 40 - 20
        m = np.float32([[1, 0, dx], [0, 1, 0]])
        out.append(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REFLECT))
    return out


class MJPEGServer:
    """A tiny multipart/x-mixed-replace MJPEG server on 127.0.0.1 (a stand-in for an IP camera) that can be
    stopped and restarted on the same port."""

    def __init__(self, frames: list[np.ndarray], fps: float = 20.0, port: int = 0):
        self.jpegs = [cv2.imencode(".jpg", f)[1].tobytes() for f in frames]
        self.fps = fps
        self.port = port
        self._server = None
        self._thread = None
        self.served = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MJPEGServer:
        import http.server
        import threading
        import time

        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while not owner._stopping.is_set():
                        jpg = owner.jpegs[i % len(owner.jpegs)]
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n")
                        self.wfile.write(f"Content-Length: {len(jpg)}\r\n\r\n".encode())
                        self.wfile.write(jpg + b"\r\n")
                        owner.served += 1
                        i += 1
                        time.sleep(1.0 / owner.fps)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._stopping = threading.Event()
        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._stopping.set()
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5)
            self._server = None


def make_face_int8_bundle(out_dir: Path) -> Path:
    """An int8 bundle of the face model made by the project's converter (tail cut, host-side decode)."""
    from edge_ssd.convert.api import convert_model

    res = convert_model(FACE_ONNX, out_dir / "face_int8.bundle", calib=FACES, labels=FACE_LABELS, force=True,
                        progress=False)
    return Path(res.bundle_dir)
