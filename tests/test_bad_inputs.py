"""The bad-input corpus: every command and every kind of input, given something wrong, must answer with a
non-zero exit code (or 0 with a warning where the run is still useful), one clear line naming the problem, no
traceback and no secret. One row per case: (id, argv, expected exit code, expected message fragment).

Rows run in-process through ``edge_ssd.cli.main`` (fast: no interpreter start per row). Placeholders in argv,
``{name}``, are files made once per module by the ``world`` fixture. A new entry point gets rows here."""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import pytest
from _runtime_util import FACE_ONNX, face_frames, face_photos, make_face_bundle, write_video

from edge_ssd.cli import main

SECRET = "s3cretPW"


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    rc: int
    fragment: str  # expected (case-insensitive) in stderr + stdout
    kind: str  # the input kind the row covers
    hide: tuple[str, ...] = ()  # modules made unimportable for this row (a device without the extra)
    env: dict = field(default_factory=dict)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _w(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


GOOD_CONFIG = """device: cam1
model:
  bundle: {bundle}
sources:
  - name: a
    url: {images}
"""


def _bundle_variant(base: Path, dest: Path, edit) -> Path:
    import json
    import shutil

    shutil.copytree(base, dest)
    m = json.loads((dest / "manifest.json").read_text())
    text = edit(m, dest)
    (dest / "manifest.json").write_text(text if isinstance(text, str) else json.dumps(m))
    return dest


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    t = tmp_path_factory.mktemp("bad")
    w: dict[str, Path | str] = {"tmp": t, "face_onnx": FACE_ONNX, "port": str(closed_port()), "secret": SECRET}
    bundle = make_face_bundle(t / "face")
    w["bundle"] = bundle
    good_jpg = cv2.imencode(".jpg", cv2.imread(str(face_photos()[0])))[1].tobytes()
    w["images"] = _w(t / "images" / "a.jpg", good_jpg).parent
    w["zero_jpg"] = _w(t / "zero.jpg", b"")
    w["trunc_jpg"] = _w(t / "trunc.jpg", good_jpg[: len(good_jpg) // 2])
    w["text_jpg"] = _w(t / "text.jpg", "this is not an image\n")
    w["png_as_jpg"] = _w(t / "garbage.png", os.urandom(2048))
    w["bad_dir"] = _w(t / "undecodable" / "a.jpg", b"").parent
    _w(t / "undecodable" / "b.png", b"not a png")
    _w(t / "undecodable" / "c.jpg", good_jpg[:300])
    (t / "empty_dir").mkdir()
    w["empty_dir"] = t / "empty_dir"
    w["txt_only_dir"] = _w(t / "txt_only" / "notes.txt", "hello").parent
    w["model_dir"] = _w(t / "not_a_bundle" / "README", "x").parent
    w["txt_model"] = _w(t / "model.txt", "x")
    w["garbage_onnx"] = _w(t / "garbage.onnx", os.urandom(4096))
    w["zero_onnx"] = _w(t / "zero.onnx", b"")
    w["garbage_tflite"] = _w(t / "garbage.tflite", os.urandom(4096))
    w["zero_tflite"] = _w(t / "zero.tflite", b"")
    w["b_notjson"] = _bundle_variant(bundle, t / "b_notjson", lambda m, d: '{"format": "edge-ssd-bundle", ')

    def edit(**kv):
        def f(m, d):
            for k, v in kv.items():
                if v is _DEL:
                    m.pop(k, None)
                else:
                    m[k] = v
        return f

    w["b_format"] = _bundle_variant(bundle, t / "b_format", edit(format="something-else"))
    w["b_version"] = _bundle_variant(bundle, t / "b_version", edit(version=99))
    w["b_nomodel"] = _bundle_variant(bundle, t / "b_nomodel", lambda m, d: (d / "model.tflite").unlink())
    w["b_sha"] = _bundle_variant(bundle, t / "b_sha", edit(model_sha256="0" * 64))
    w["b_labels_empty"] = _bundle_variant(bundle, t / "b_labels_empty", edit(labels=[]))
    w["b_labels_short"] = _bundle_variant(bundle, t / "b_labels_short", edit(labels=["only-one"]))
    w["b_missing"] = _bundle_variant(bundle, t / "b_missing", edit(input=_DEL, scores=_DEL))
    w["b_badtype"] = _bundle_variant(bundle, t / "b_badtype", lambda m, d: m["input"].update(shape="abc"))
    w["b_modelfile_dir"] = _bundle_variant(bundle, t / "b_modelfile_dir", edit(model_file="../.."))
    w["labels_empty"] = _w(t / "labels_empty.txt", "\n\n")
    w["labels_bin"] = _w(t / "labels_bin.txt", b"\xff\xfe\x00bad")
    w["labels5"] = _w(t / "labels5.txt", "BACKGROUND\na\nb\nc\nd\n")
    frames = face_frames(30, size=(160, 120))
    vid = write_video(t / "clip.avi", frames)
    w["video"] = vid
    data = vid.read_bytes()
    w["trunc_video"] = _w(t / "trunc.avi", data[: int(len(data) * 0.6)])
    w["zero_video"] = _w(t / "zero.mp4", b"")
    w["text_video"] = _w(t / "text.avi", "not a video\n" * 100)
    w["a_file"] = _w(t / "a_file", "x")
    # configs
    good = GOOD_CONFIG.format(bundle=bundle, images=w["images"])
    w["cfg_good"] = _w(t / "cfg" / "good.yaml", good)
    w["cfg_latin1"] = _w(t / "cfg" / "latin1.yaml",
                         good.replace("device: cam1", "device: cam1 # caf\xe9").encode("latin-1"))
    w["cfg_dup"] = _w(t / "cfg" / "dup.yaml", good + "device: cam2\n")
    w["cfg_dup_nested"] = _w(t / "cfg" / "dup_nested.yaml",
                             good.replace("  bundle:", "  threads: 2\n  threads: 3\n  bundle:"))
    w["cfg_url0"] = _w(t / "cfg" / "url0.yaml", good.replace(f"url: {w['images']}", "url: 0"))
    w["cfg_yaml"] = _w(t / "cfg" / "syntax.yaml", good + "  - name: [unclosed\n")
    w["cfg_list"] = _w(t / "cfg" / "list.yaml", "- a\n- b\n")
    w["cfg_empty"] = _w(t / "cfg" / "empty.yaml", "")
    w["cfg_unknown"] = _w(t / "cfg" / "unknown.yaml", good + "colour: blue\n")
    mq = good + f"mqtt:\n  host: 127.0.0.1\n  port: {w['port']}\n"
    w["cfg_port"] = _w(t / "cfg" / "port.yaml", mq.replace(f"port: {w['port']}", "port: 70000"))
    w["cfg_port_str"] = _w(t / "cfg" / "port_str.yaml", mq.replace(f"port: {w['port']}", "port: abc"))
    w["cfg_pwfile_missing"] = _w(t / "cfg" / "pwfile.yaml", mq + "  username: u\n  password_file: nope.txt\n")
    w["cfg_pw_nouser"] = _w(t / "cfg" / "pw_nouser.yaml", mq + f"  password: {SECRET}\n")
    w["cfg_pw_inline"] = _w(t / "cfg" / "pw_inline.yaml", mq + f"  username: u\n  password: {SECRET}\n")
    w["cfg_tls"] = _w(t / "cfg" / "tls.yaml", mq + "  tls:\n    ca: /nonexistent/ca.crt\n")
    w["cfg_dupsrc"] = _w(t / "cfg" / "dupsrc.yaml", good + f"  - name: a\n    url: {w['images']}\n")
    w["cfg_nosrc"] = _w(t / "cfg" / "nosrc.yaml", good.split("sources:")[0] + "sources: []\n")
    w["cfg_devname"] = _w(t / "cfg" / "devname.yaml", good.replace("device: cam1", "device: my camera"))
    w["cfg_score"] = _w(t / "cfg" / "score.yaml", good + "    score_threshold: 2\n")
    w["cfg_threads"] = _w(t / "cfg" / "threads.yaml", good.replace("  bundle:", "  threads: 0\n  bundle:"))
    w["cfg_backend"] = _w(t / "cfg" / "backend.yaml", good.replace("  bundle:", "  backend: gpu\n  bundle:"))
    w["cfg_png"] = _w(t / "cfg" / "picture.yaml", good_jpg)
    w["cfg_nomodel"] = _w(t / "cfg" / "nomodel.yaml", GOOD_CONFIG.format(bundle=t / "missing.bundle",
                                                                         images=w["images"]))
    w["cfg_spool_file"] = _w(t / "cfg" / "spool_file.yaml", mq + f"spool:\n  dir: {w['a_file']}\n")
    corrupt = t / "spool_corrupt"
    _w(corrupt / "spool.sqlite3", os.urandom(8192))
    w["cfg_spool_corrupt"] = _w(t / "cfg" / "spool_corrupt.yaml", mq + f"spool:\n  dir: {corrupt}\n")
    w["cfg_spool_proc"] = _w(t / "cfg" / "spool_proc.yaml", mq + "spool:\n  dir: /proc/edge-ssd-spool\n")
    w["cfg_spool_small"] = _w(t / "cfg" / "spool_small.yaml", mq + "spool:\n  max_bytes: 10\n")
    w["cfg_sink_dir"] = _w(t / "cfg" / "sink_dir.yaml", good + f"sinks:\n  file:\n    path: {t / 'empty_dir'}\n")
    w["cfg_sink_full"] = _w(t / "cfg" / "sink_full.yaml", good + "sinks:\n  file:\n    path: /dev/full\n")
    pw = _w(t / "cfg" / "mqtt-password", SECRET + "\n")
    pw.chmod(0o644)
    w["cfg_pw_readable"] = _w(t / "cfg" / "pw_readable.yaml", mq + f"  username: u\n  password_file: {pw}\n")
    w["pwfile"] = pw
    # datasets
    w["voc_empty"] = _w(t / "voc_empty" / "ImageSets" / "Main" / "test.txt", "").parents[2]
    voc = t / "voc_badxml"
    _w(voc / "ImageSets" / "Main" / "test.txt", "img1\n")
    _w(voc / "Annotations" / "img1.xml", "<annotation><object><name>face</name><bndbox>")
    _w(voc / "JPEGImages" / "img1.jpg", good_jpg)
    w["voc_badxml"] = voc
    # checkpoints
    w["ckpt_garbage"] = _w(t / "garbage.pth", os.urandom(1000))
    w["ckpt_zero"] = _w(t / "zero.pth", b"")
    w["ckpt_text"] = _w(t / "text.pth", "not a checkpoint")
    w["labels_ok"] = _w(t / "labels_ok.txt", "BACKGROUND\nface\n")
    return {k: str(v) for k, v in w.items()}


_DEL = object()

C = Case
CASES: list[Case] = [
    # ---- detect: models
    C("detect-model-missing", ("detect", "{images}", "--model", "{tmp}/nope.bundle"), 2, "not found", "model"),
    C("detect-model-dir", ("detect", "{images}", "--model", "{model_dir}"), 2, "no manifest.json", "model"),
    C("detect-model-txt", ("detect", "{images}", "--model", "{txt_model}"), 2, "unknown model type", "model"),
    C("detect-model-garbage-onnx", ("detect", "{images}", "--model", "{garbage_onnx}"), 2, "garbage.onnx", "model"),
    C("detect-model-zero-onnx", ("detect", "{images}", "--model", "{zero_onnx}"), 2, "zero.onnx", "model"),
    C("detect-model-garbage-tflite", ("detect", "{images}", "--model", "{garbage_tflite}"), 2, "garbage.tflite",
      "model"),
    C("detect-model-zero-tflite", ("detect", "{images}", "--model", "{zero_tflite}"), 2, "zero.tflite", "model"),
    C("detect-labels-missing", ("detect", "{images}", "--model", "{face_onnx}", "--labels", "{tmp}/nope.txt"), 2,
      "nope.txt", "model"),
    C("detect-labels-dir", ("detect", "{images}", "--model", "{face_onnx}", "--labels", "{empty_dir}"), 2,
      "directory", "model"),
    C("detect-labels-empty", ("detect", "{images}", "--model", "{face_onnx}", "--labels", "{labels_empty}"), 2,
      "labels", "model"),
    C("detect-labels-binary", ("detect", "{images}", "--model", "{face_onnx}", "--labels", "{labels_bin}"), 2,
      "labels", "model"),
    C("detect-labels-count", ("detect", "{images}", "--model", "{face_onnx}", "--labels", "{labels5}"), 2,
      "labels", "model"),
    # ---- detect: bundles
    C("bundle-not-json", ("detect", "{images}", "--model", "{b_notjson}"), 2, "not valid JSON", "bundle"),
    C("bundle-format", ("detect", "{images}", "--model", "{b_format}"), 2, "not an edge-ssd bundle", "bundle"),
    C("bundle-version", ("detect", "{images}", "--model", "{b_version}"), 2, "upgrade edge-ssd", "bundle"),
    C("bundle-no-model", ("detect", "{images}", "--model", "{b_nomodel}"), 2, "missing from the bundle", "bundle"),
    C("bundle-sha", ("detect", "{images}", "--model", "{b_sha}"), 2, "sha256 does not match", "bundle"),
    C("bundle-labels-empty", ("detect", "{images}", "--model", "{b_labels_empty}"), 2, "labels", "bundle"),
    C("bundle-labels-short", ("detect", "{images}", "--model", "{b_labels_short}"), 2, "labels", "bundle"),
    C("bundle-missing-sections", ("detect", "{images}", "--model", "{b_missing}"), 2, "input, scores", "bundle"),
    C("bundle-bad-type", ("detect", "{images}", "--model", "{b_badtype}"), 2, "input.shape", "bundle"),
    C("bundle-model-file-dir", ("detect", "{images}", "--model", "{b_modelfile_dir}"), 2, "model file", "bundle"),
    C("doctor-bundle-sha", ("doctor", "--model", "{b_sha}", "--config", "{cfg_good}"), 1, "sha256", "bundle"),
    C("bench-bundle-missing", ("bench", "--model", "{b_nomodel}", "--frames", "1", "--no-rss"), 2, "missing",
      "bundle"),
    # ---- detect: images
    C("image-missing", ("detect", "{tmp}/nope.jpg", "--model", "{face_onnx}"), 2, "not found", "image"),
    C("image-zero-bytes", ("detect", "{zero_jpg}", "--model", "{face_onnx}"), 2, "nothing could be decoded", "image"),
    C("image-truncated", ("detect", "{trunc_jpg}", "--model", "{face_onnx}"), 2, "nothing could be decoded", "image"),
    C("image-text", ("detect", "{text_jpg}", "--model", "{face_onnx}"), 2, "nothing could be decoded", "image"),
    C("image-random-png", ("detect", "{png_as_jpg}", "--model", "{face_onnx}"), 2, "nothing could be decoded",
      "image"),
    C("image-dir-undecodable", ("detect", "{bad_dir}", "--model", "{face_onnx}"), 2, "nothing could be decoded",
      "image"),
    C("image-dir-empty", ("detect", "{empty_dir}", "--model", "{face_onnx}"), 2, "no images found", "image"),
    C("image-dir-no-images", ("detect", "{txt_only_dir}", "--model", "{face_onnx}"), 2, "no images found", "image"),
    C("image-threshold-high", ("detect", "{images}", "--model", "{face_onnx}", "--threshold", "1.5"), 2,
      "--threshold", "image"),
    C("image-threshold-neg", ("detect", "{images}", "--model", "{face_onnx}", "--threshold", "-1"), 2, "--threshold",
      "image"),
    C("image-threshold-nan", ("detect", "{images}", "--model", "{face_onnx}", "--threshold", "nan"), 2,
      "--threshold", "image"),
    C("image-threads-zero", ("detect", "{images}", "--model", "{face_onnx}", "--threads", "0"), 2, "--threads",
      "image"),
    C("image-threads-neg", ("detect", "{images}", "--model", "{face_onnx}", "--threads", "-3"), 2, "--threads",
      "image"),
    C("image-threads-text", ("detect", "{images}", "--model", "{face_onnx}", "--threads", "two"), 2, "--threads",
      "image"),
    C("image-max-frames-zero", ("detect", "{images}", "--model", "{face_onnx}", "--max-frames", "0"), 2,
      "--max-frames", "image"),
    C("image-backend-bogus", ("detect", "{images}", "--model", "{face_onnx}", "--backend", "gpu"), 2,
      "invalid choice", "image"),
    C("image-save-is-file", ("detect", "{images}", "--model", "{face_onnx}", "--save", "{a_file}"), 2, "a_file",
      "image"),
    C("image-save-unwritable", ("detect", "{images}", "--model", "{face_onnx}", "--save", "/proc/edge-ssd-x"), 2,
      "/proc/edge-ssd-x", "image"),
    C("image-empty-input", ("detect", "", "--model", "{face_onnx}"), 2, "empty source", "image"),
    C("image-no-model-arg", ("detect", "{images}"), 2, "--model", "image"),
    # ---- detect: videos
    C("video-zero-bytes", ("detect", "{zero_video}", "--model", "{face_onnx}"), 2, "cannot open as a video",
      "video"),
    C("video-text", ("detect", "{text_video}", "--model", "{face_onnx}"), 2, "cannot open as a video", "video"),
    C("video-truncated", ("detect", "{trunc_video}", "--model", "{face_onnx}", "--json"), 0,
      "could not be decoded", "video"),
    C("video-missing", ("detect", "{tmp}/nope.mp4", "--model", "{face_onnx}"), 2, "not found", "video"),
    C("video-save-full-disk", ("detect", "{video}", "--model", "{face_onnx}", "--save", "/dev/full"), 2,
      "/dev/full", "disk"),
    C("camera-index", ("detect", "9", "--model", "{face_onnx}", "--max-frames", "1"), 2, "/dev/video9", "video"),
    C("camera-path", ("detect", "/dev/video99", "--model", "{face_onnx}", "--max-frames", "1"), 2, "/dev/video99",
      "video"),
    C("picamera2-bad-index", ("detect", "picamera2:x", "--model", "{face_onnx}"), 2, "picamera2:N", "video"),
    C("picamera2-missing", ("detect", "picamera2", "--model", "{face_onnx}"), 3, "python3-picamera2", "video",
      hide=("picamera2",)),
    # ---- URLs
    C("url-rtsp-secret", ("detect", "rtsp://admin:" + SECRET + "@127.0.0.1:{port}/live", "--model", "{face_onnx}",
                          "--json", "--max-frames", "1"), 2, "rtsp://admin:***@127.0.0.1", "url"),
    C("url-http-closed", ("detect", "http://127.0.0.1:{port}/video.mjpg", "--model", "{face_onnx}", "--max-frames",
                          "1"), 2, "http://127.0.0.1", "url"),
    C("url-http-token", ("detect", "http://" + SECRET + "@127.0.0.1:{port}/v.mjpg", "--model", "{face_onnx}",
                         "--max-frames", "1"), 2, "http://***@127.0.0.1", "url"),
    C("url-query-password", ("detect", "http://127.0.0.1:{port}/v.mjpg?user=a&password=" + SECRET, "--model",
                             "{face_onnx}", "--max-frames", "1"), 2, "password=***", "url"),
    C("url-unknown-scheme", ("detect", "ftp://host/x.mp4", "--model", "{face_onnx}"), 2, "not found", "url"),
    C("url-fetch-model-closed", ("fetch-model", "mb1-ssd-voc", "--cache", "{tmp}/models", "--url",
                                 "http://127.0.0.1:{port}/w.pth", "--retries", "0", "--no-verify"), 2,
      "127.0.0.1", "url", hide=("torch",)),
    C("url-fetch-model-secret", ("fetch-model", "mb1-ssd-voc", "--cache", "{tmp}/models", "--url",
                                 "http://u:" + SECRET + "@127.0.0.1:{port}/w.pth", "--retries", "0", "--no-verify"),
      2, "u:***@", "url"),
    C("url-fetch-model-bad-scheme", ("fetch-model", "mb1-ssd-voc", "--cache", "{tmp}/models", "--url",
                                     "gopher://x/w.pth", "--retries", "0"), 2, "gopher", "url"),
    # ---- configs: config check
    C("config-missing", ("config", "check", "{tmp}/nope.yaml"), 2, "cannot read config", "config"),
    C("config-latin1", ("config", "check", "{cfg_latin1}"), 2, "not UTF-8", "config"),
    C("config-binary", ("config", "check", "{cfg_png}"), 2, "not UTF-8", "config"),
    C("config-duplicate-key", ("config", "check", "{cfg_dup}"), 2, "duplicate key", "config"),
    C("config-duplicate-nested", ("config", "check", "{cfg_dup_nested}"), 2, "model.threads: duplicate key",
      "config"),
    C("config-url-0-unquoted", ("config", "check", "{cfg_url0}"), 2, 'quote it, e.g. "0"', "config"),
    C("config-yaml-syntax", ("config", "check", "{cfg_yaml}"), 2, "YAML syntax", "config"),
    C("config-top-list", ("config", "check", "{cfg_list}"), 2, "expected a mapping", "config"),
    C("config-empty", ("config", "check", "{cfg_empty}"), 2, "required key is missing", "config"),
    C("config-unknown-key", ("config", "check", "{cfg_unknown}"), 2, "unknown key", "config"),
    C("config-port-range", ("config", "check", "{cfg_port}"), 2, "mqtt.port", "config"),
    C("config-port-text", ("config", "check", "{cfg_port_str}"), 2, "mqtt.port", "config"),
    C("config-password-file-missing", ("config", "check", "{cfg_pwfile_missing}"), 2, "mqtt.password_file", "config"),
    C("config-password-no-user", ("config", "check", "{cfg_pw_nouser}"), 2, "no username", "config"),
    C("config-password-inline", ("config", "check", "{cfg_pw_inline}"), 0, "password_file", "config"),
    C("config-tls-ca-missing", ("config", "check", "{cfg_tls}"), 2, "mqtt.tls.ca", "config"),
    C("config-duplicate-source", ("config", "check", "{cfg_dupsrc}"), 2, "duplicate source name", "config"),
    C("config-no-sources", ("config", "check", "{cfg_nosrc}"), 2, "sources", "config"),
    C("config-device-name", ("config", "check", "{cfg_devname}"), 2, "device", "config"),
    C("config-score-range", ("config", "check", "{cfg_score}"), 2, "score_threshold", "config"),
    C("config-threads-zero", ("config", "check", "{cfg_threads}"), 2, "model.threads", "config"),
    C("config-backend", ("config", "check", "{cfg_backend}"), 2, "model.backend", "config"),
    C("config-is-dir", ("config", "check", "{empty_dir}"), 2, "cannot read config", "config"),
    C("config-no-file-arg", ("config", "check"), 2, "file", "config"),
    C("config-no-action", ("config",), 2, "config check", "config"),
    # ---- run (the daemon) with bad configs
    C("run-config-missing", ("run", "--config", "{tmp}/nope.yaml"), 2, "cannot read config", "config"),
    C("run-config-latin1", ("run", "--config", "{cfg_latin1}"), 2, "not UTF-8", "config"),
    C("run-config-dup", ("run", "--config", "{cfg_dup}"), 2, "duplicate key", "config"),
    C("run-model-missing", ("run", "--config", "{cfg_nomodel}"), 2, "not found", "model"),
    C("run-spool-is-file", ("run", "--config", "{cfg_spool_file}"), 2, "spool", "spool"),
    C("run-spool-corrupt-db", ("run", "--config", "{cfg_spool_corrupt}"), 2, "move it away", "spool"),
    C("run-spool-cannot-create", ("run", "--config", "{cfg_spool_proc}"), 2, "/proc/edge-ssd-spool", "spool"),
    C("config-spool-max-bytes", ("config", "check", "{cfg_spool_small}"), 2, "spool.max_bytes", "spool"),
    C("doctor-spool-cannot-create", ("doctor", "--config", "{cfg_spool_proc}", "--timeout", "0.5"), 1,
      "virtual file system", "spool"),
    C("run-file-sink-is-dir", ("run", "--config", "{cfg_sink_dir}"), 2, "sinks.file.path", "disk"),
    C("run-file-sink-full-disk", ("run", "--config", "{cfg_sink_full}"), 0, "No space left on device", "disk"),
    # ---- watch (broker)
    C("watch-port-zero", ("watch", "--port", "0"), 2, "--port", "broker"),
    C("watch-port-big", ("watch", "--port", "99999"), 2, "--port", "broker"),
    C("watch-closed-port", ("watch", "--port", "{port}", "--timeout", "2"), 2, "cannot connect", "broker"),
    C("watch-bad-host", ("watch", "--host", "no-such-host.invalid", "--timeout", "2"), 2, "cannot connect", "broker"),
    C("watch-password-file-missing", ("watch", "--username", "u", "--password-file", "{tmp}/nope"), 2,
      "--password-file", "broker"),
    C("watch-password-no-user", ("watch", "--password-file", "{pwfile}", "--port", "{port}"), 2, "--username",
      "broker"),
    C("watch-empty-host", ("watch", "--host", "", "--timeout", "1"), 2, "--host", "broker"),
    C("watch-timeout-neg", ("watch", "--timeout", "-1"), 2, "--timeout", "broker"),
    C("watch-once-zero", ("watch", "--once", "0"), 2, "--once", "broker"),
    C("watch-cli-password-secret", ("watch", "--username", "u", "--password", SECRET, "--port", "{port}",
                                    "--timeout", "1"), 2, "--password-file", "broker"),
    # ---- doctor
    C("doctor-config-missing", ("doctor", "--config", "{tmp}/nope.yaml", "--timeout", "0.5"), 1, "nope.yaml",
      "config"),
    C("doctor-model-missing", ("doctor", "--model", "{tmp}/nope.bundle", "--config", "{cfg_good}"), 1, "nope.bundle",
      "model"),
    C("doctor-password-file-readable", ("doctor", "--config", "{cfg_pw_readable}", "--timeout", "0.5"), 1,
      "readable by every user", "config"),
    C("doctor-password-inline", ("doctor", "--config", "{cfg_pw_inline}", "--timeout", "0.5"), 1,
      "mqtt.password_file", "config"),
    C("doctor-timeout-zero", ("doctor", "--timeout", "0"), 2, "--timeout", "broker"),
    C("doctor-broker-closed", ("doctor", "--config", "{cfg_pw_inline}", "--timeout", "0.5"), 1, "127.0.0.1",
      "broker"),
    C("doctor-spool-is-file", ("doctor", "--config", "{cfg_spool_file}", "--timeout", "0.5"), 1, "spool", "spool"),
    # ---- fetch-model / export (checkpoints)
    C("fetch-model-bad-name", ("fetch-model", "yolo"), 2, "invalid choice", "checkpoint"),
    C("fetch-model-bad-sha", ("fetch-model", "mb1-ssd-voc", "--sha256", "xyz", "--cache", "{tmp}/models"), 2,
      "--sha256", "checkpoint"),
    C("fetch-model-retries-neg", ("fetch-model", "mb1-ssd-voc", "--retries", "-1"), 2, "--retries", "checkpoint"),
    C("fetch-model-timeout-zero", ("fetch-model", "mb1-ssd-voc", "--timeout", "0"), 2, "--timeout", "checkpoint"),
    C("fetch-model-cache-is-file", ("fetch-model", "mb1-ssd-voc", "--cache", "{a_file}", "--retries", "0"), 2,
      "a_file", "disk"),
    C("export-no-weights", ("export", "--labels", "{labels_ok}", "-o", "{tmp}/o.onnx"), 2, "--weights",
      "checkpoint"),
    C("export-weights-missing", ("export", "--weights", "{tmp}/nope.pth", "--labels", "{labels_ok}", "-o",
                                 "{tmp}/o.onnx"), 2, "nope.pth", "checkpoint"),
    C("export-weights-garbage", ("export", "--weights", "{ckpt_garbage}", "--labels", "{labels_ok}", "-o",
                                 "{tmp}/o.onnx"), 2, "garbage.pth", "checkpoint"),
    C("export-weights-zero", ("export", "--weights", "{ckpt_zero}", "--labels", "{labels_ok}", "-o",
                              "{tmp}/o.onnx"), 2, "zero.pth", "checkpoint"),
    C("export-weights-text", ("export", "--weights", "{ckpt_text}", "--labels", "{labels_ok}", "-o",
                              "{tmp}/o.onnx"), 2, "text.pth", "checkpoint"),
    C("export-labels-missing", ("export", "--random-init", "--arch", "mb1-ssd", "--labels", "{tmp}/nope.txt", "-o",
                                "{tmp}/o.onnx"), 2, "nope.txt", "checkpoint"),
    C("export-labels-empty", ("export", "--random-init", "--arch", "mb1-ssd", "--labels", "{labels_empty}", "-o",
                              "{tmp}/o.onnx"), 2, "labels", "checkpoint"),
    C("export-no-torch", ("export", "--random-init", "--arch", "mb1-ssd", "--labels", "{labels_ok}", "-o",
                          "{tmp}/o.onnx"), 3, "edge-ssd[train]", "checkpoint", hide=("torch",)),
    C("export-opset", ("export", "--random-init", "--labels", "{labels_ok}", "-o", "x.onnx", "--opset", "9"), 2,
      "--opset", "checkpoint"),
    C("export-atol-neg", ("export", "--random-init", "--labels", "{labels_ok}", "-o", "x.onnx", "--atol", "-1"), 2,
      "--atol", "checkpoint"),
    # ---- bench
    C("bench-model-missing", ("bench", "--model", "{tmp}/nope.tflite"), 2, "not found", "model"),
    C("bench-frames-zero", ("bench", "--model", "{bundle}", "--frames", "0"), 2, "--frames", "model"),
    C("bench-threads-bad", ("bench", "--model", "{bundle}", "--threads", "0,x"), 2, "--threads", "model"),
    C("bench-threads-zero", ("bench", "--model", "{bundle}", "--threads", "0"), 2, "--threads", "model"),
    C("bench-plot-no-matplotlib", ("bench", "--model", "{bundle}", "--plot", "{tmp}/p.png", "--frames", "1"), 3,
      "matplotlib", "model", hide=("matplotlib",)),
    C("bench-image-missing", ("bench", "--model", "{bundle}", "--image", "{tmp}/nope.jpg", "--frames", "1"), 2,
      "nope.jpg", "image"),
    C("bench-image-truncated", ("bench", "--model", "{bundle}", "--image", "{trunc_jpg}", "--frames", "1"), 2,
      "trunc.jpg", "image"),
    # ---- eval / inspect (datasets, models)
    C("eval-model-missing", ("eval", "{tmp}/nope.onnx", "{tmp}/nope_ds"), 2, "nope", "model"),
    C("eval-dataset-missing", ("eval", "{face_onnx}", "{tmp}/nope_ds"), 2, "nope_ds", "dataset"),
    C("eval-dataset-empty", ("eval", "{face_onnx}", "{voc_empty}"), 2, "voc_empty", "dataset"),
    C("eval-dataset-bad-xml", ("eval", "{face_onnx}", "{voc_badxml}"), 2, "img1.xml", "dataset"),
    C("eval-dataset-file", ("eval", "{face_onnx}", "{a_file}"), 2, "a_file", "dataset"),
    C("eval-iou-range", ("eval", "{face_onnx}", "{voc_badxml}", "--iou", "2"), 2, "--iou", "dataset"),
    C("inspect-missing", ("inspect", "{tmp}/nope.onnx"), 2, "nope.onnx", "model"),
    C("inspect-garbage", ("inspect", "{garbage_onnx}"), 2, "garbage.onnx", "model"),
    C("inspect-tflite", ("inspect", "{garbage_tflite}"), 2, "not a readable ONNX model", "model"),
    C("inspect-dir", ("inspect", "{model_dir}"), 2, "directory", "model"),
    C("inspect-shape", ("inspect", "{face_onnx}", "--input-shape", "1,3,x"), 2, "--input-shape", "model"),
    # ---- convert (models, datasets)
    C("convert-model-missing", ("convert", "{tmp}/nope.onnx", "--calib", "{images}", "-o", "{tmp}/c1"), 2,
      "nope.onnx", "model"),
    C("convert-model-dir", ("convert", "{model_dir}", "--calib", "{images}", "-o", "{tmp}/c2"), 2, "not_a_bundle",
      "model"),
    C("convert-model-garbage", ("convert", "{garbage_onnx}", "--calib", "{images}", "-o", "{tmp}/c3"), 2,
      "garbage.onnx", "model"),
    C("convert-calib-missing", ("convert", "{face_onnx}", "--calib", "{tmp}/nope_ds", "-o", "{tmp}/c4"), 2,
      "nope_ds", "dataset"),
    C("convert-calib-empty", ("convert", "{face_onnx}", "--calib", "{empty_dir}", "-o", "{tmp}/c5"), 2,
      "empty_dir", "dataset"),
    C("convert-calib-undecodable", ("convert", "{face_onnx}", "--calib", "{bad_dir}", "-o", "{tmp}/c6"), 2,
      "undecodable", "dataset"),
    C("convert-no-calib", ("convert", "{face_onnx}"), 2, "--calib", "dataset"),
    # ---- train / synth / demo (datasets, disk)
    C("train-dataset-missing", ("train", "--datasets", "{tmp}/nope_ds", "--max-steps", "1"), 2, "nope_ds", "dataset"),
    C("train-dataset-empty", ("train", "--dataset-type", "voc", "--datasets", "{voc_empty}", "--max-steps", "1"), 2,
      "voc_empty", "dataset"),
    C("train-batch-zero", ("train", "--batch-size", "0"), 2, "--batch-size", "dataset"),
    C("train-threads-zero", ("train", "--threads", "0"), 2, "--threads", "dataset"),
    C("synth-count-neg", ("synth", "{tmp}/s", "--train", "-1"), 2, "--train", "dataset"),
    C("synth-scale", ("synth", "{tmp}/s", "--max-scale", "3"), 2, "--max-scale", "dataset"),
    C("synth-out-is-file", ("synth", "{a_file}", "--train", "1", "--test", "0"), 2, "a_file", "disk"),
    C("synth-video-full-disk", ("synth", "{tmp}/s2", "--train", "1", "--test", "0", "--video", "/dev/full",
                                "--frames", "2"), 2, "/dev/full", "disk"),
    C("testmodel-write-alone", ("testmodel", "--write"), 2, "--rebuild", "checkpoint"),
    C("testmodel-cache-is-file", ("testmodel", "--cache-dir", "{a_file}"), 2, "a_file", "disk"),
    C("demo-out-is-file", ("demo", "--out", "{a_file}"), 2, "a_file", "disk"),
    C("demo-frames-zero", ("demo", "--frames", "0"), 2, "--frames", "video"),
    # ---- fleet: keygen / sign-bundle / push-bundle / ha (bundles, URLs, broker, config)
    C("keygen-unwritable", ("keygen", "/proc/edge-ssd-keys"), 2, "/proc/edge-ssd-keys", "disk"),
    C("keygen-dir-is-file", ("keygen", "{a_file}"), 2, "a_file", "disk"),
    C("sign-bundle-missing", ("sign-bundle", "{tmp}/nope.bundle", "--key", "{a_file}"), 2, "nope.bundle", "bundle"),
    C("sign-bundle-not-a-key", ("sign-bundle", "{bundle}", "--key", "{a_file}"), 2, "not a PEM private key",
      "bundle"),
    C("sign-bundle-check-not-a-key", ("sign-bundle", "{bundle}", "--check", "{a_file}"), 2, "not a PEM public key",
      "bundle"),
    C("sign-bundle-not-a-bundle", ("sign-bundle", "{model_dir}", "--key", "{a_file}"), 2, "manifest.json",
      "bundle"),
    C("push-bundle-missing", ("push-bundle", "{tmp}/nope.bundle", "--url", "http://127.0.0.1:{port}/"), 2,
      "not found", "bundle"),
    C("push-bundle-url-closed", ("push-bundle", "{bundle}", "--url", "http://127.0.0.1:{port}/", "--out",
                                 "{tmp}/push", "--port", "{port}", "--timeout", "1"), 2, "--url does not serve",
      "url"),
    C("push-bundle-url-secret", ("push-bundle", "{bundle}", "--url", "http://u:" + SECRET + "@127.0.0.1:{port}/",
                                 "--out", "{tmp}/push2", "--port", "{port}", "--timeout", "1"), 2, "u:***@", "url"),
    C("push-bundle-no-mode", ("push-bundle", "{bundle}"), 2, "--serve", "bundle"),
    C("ha-no-action", ("ha",), 2, "ha remove", "broker"),
    C("ha-remove-config-missing", ("ha", "remove", "--config", "{tmp}/nope.yaml"), 2, "nope.yaml", "config"),
    C("ha-remove-no-mqtt", ("ha", "remove", "--config", "{cfg_good}", "--timeout", "1"), 1, "mqtt", "config"),
    C("ha-remove-broker-closed", ("ha", "remove", "--config", "{cfg_pw_inline}", "--timeout", "1"), 1,
      "127.0.0.1", "broker"),
    # ---- the CLI itself
    C("cli-unknown-command", ("frobnicate",), 2, "invalid choice", "cli"),
    C("cli-unknown-option", ("detect", "{images}", "--model", "{face_onnx}", "--colour"), 2, "unrecognized", "cli"),
]


def _fill(arg: str, world: dict[str, str]) -> str:
    return arg.format(**world) if "{" in arg else arg


def run_cli(argv: list[str], capsys, monkeypatch, hide=(), env=None) -> tuple[int, str]:
    for mod in hide:
        for name in [m for m in sys.modules if m == mod or m.startswith(mod + ".")]:
            monkeypatch.delitem(sys.modules, name)
        monkeypatch.setitem(sys.modules, mod, None)  # `import mod` raises ImportError
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse
        rc = e.code if isinstance(e.code, int) else 2
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_corpus_is_big_and_covers_every_command_and_input_kind():
    from edge_ssd.cli import build_parser

    assert len(CASES) >= 100 and len({c.id for c in CASES}) == len(CASES)
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands <= {c.argv[0] for c in CASES}
    assert {"model", "bundle", "image", "video", "url", "config", "dataset", "checkpoint", "spool", "broker",
            "disk"} <= {c.kind for c in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, world, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    argv = [_fill(a, world) for a in case.argv]
    rc, out = run_cli(argv, capsys, monkeypatch, case.hide, case.env)
    assert rc == case.rc, f"exit {rc}, wanted {case.rc}:\n{out}"
    assert case.fragment.lower() in out.lower(), f"{case.fragment!r} not in:\n{out}"
    assert "Traceback" not in out and SECRET not in out, out
    errors = [ln for ln in out.splitlines() if ln.startswith("edge-ssd: error:")]
    assert len(errors) <= 1, out


@pytest.fixture
def read_only_dir(tmp_path):
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_read_only_spool_is_called_read_only_not_full(read_only_dir):
    """A spool on a read-only file system (a root that is still read-only, an SD card gone read-only): the
    daemon and doctor say so, instead of "cannot be opened, move it away" / "only 0 MB free, apt-get clean"."""
    from edge_ssd.doctor import FAIL, check_space
    from edge_ssd.errors import UserError
    from edge_ssd.publish.spool import Spool

    with pytest.raises(UserError, match="read-only file system"):
        Spool(read_only_dir)
    with pytest.raises(UserError, match="read-only file system"):
        Spool(read_only_dir / "spool")
    c = check_space(read_only_dir / "spool")
    assert c.status == FAIL and "read-only" in c.message and "apt-get clean" not in c.fix


def test_truncated_video_logs_one_line_per_damaged_stretch(world, capsys, monkeypatch):
    rc, out = run_cli(["detect", world["trunc_video"], "--model", world["face_onnx"], "--json"], capsys,
                      monkeypatch)
    assert rc == 0
    assert out.count("cannot be decoded") <= 1 and out.count("looks truncated") <= 1
    frames = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert 5 < len(frames) < 30
