"""``edge-ssd detect`` end to end (subprocess): JSON format, saved output, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from _runtime_util import FACE_ONNX, FACES, face_frames, face_photos, write_video

from edge_ssd.runtime import load_detector


@pytest.fixture(scope="module")
def bundle(face_bundle):
    return face_bundle


def edge_ssd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edge_ssd", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_detect_json_on_a_folder_matches_the_detector(bundle):
    r = edge_ssd("detect", FACES, "--model", bundle, "--json", "--threshold", "0.8")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    photos = face_photos()
    assert len(lines) == len(photos)
    det = load_detector(bundle, score_threshold=0.8)
    for obj, path in zip(lines, photos, strict=True):
        assert set(obj) >= {"source", "frame", "width", "height", "objects"}
        img = cv2.imread(str(path))
        assert (obj["height"], obj["width"]) == img.shape[:2]
        assert obj["file"] == str(path)
        d = det.detect(img)
        assert len(obj["objects"]) == len(d)
        px = d.scaled(img.shape[1], img.shape[0])
        for o, b, s in zip(obj["objects"], px, d.scores, strict=True):
            assert set(o) == {"label", "class_id", "score", "box"}
            assert o["label"] == "face" and o["class_id"] == 1 and o["score"] == pytest.approx(float(s), abs=1e-4)
            np.testing.assert_allclose(o["box"], b, atol=0.06)  # pixels of the ORIGINAL frame
            assert 0 <= o["box"][0] < o["box"][2] <= obj["width"] and 0 <= o["box"][1] < o["box"][3] <= obj["height"]
    assert "inference backend: litert" in r.stderr
    assert [o["frame"] for o in lines] == list(range(len(photos)))


def test_detect_video_with_onnx_and_save(tmp_path):
    video = write_video(tmp_path / "clip.avi", face_frames(6), fps=8)
    out = tmp_path / "out"
    r = edge_ssd("detect", video, "-m", FACE_ONNX, "--json", "--save", out)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(ln) for ln in r.stdout.splitlines()]
    assert [o["frame"] for o in lines] == list(range(6))
    assert all(o["source"] == str(video) and o["width"] == 640 for o in lines)
    assert "onnxruntime" in r.stderr
    saved = out / "clip_detections.avi"
    cap = cv2.VideoCapture(str(saved))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 6 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 640


def test_detect_image_text_output_and_annotated_save(bundle, tmp_path):
    img = FACES / "3.jpg"
    r = edge_ssd("detect", img, "-m", bundle, "--save", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(str(img)) and "face" in r.stdout
    saved = cv2.imread(str(tmp_path / "3.jpg"))
    orig = cv2.imread(str(img))
    assert saved.shape == orig.shape
    assert np.abs(saved.astype(int) - orig.astype(int)).max() > 100  # boxes were drawn


@pytest.mark.parametrize("args,needle", [
    (["detect", FACES, "--model", "/nonexistent/model.bundle"], "model /nonexistent/model.bundle not found"),
    (["detect", "/nonexistent/input.jpg", "--model", FACE_ONNX], "input /nonexistent/input.jpg not found"),
    (["detect", "/dev/video99", "--model", FACE_ONNX], "cannot open camera /dev/video99"),
    (["detect", FACES, "--model", FACE_ONNX, "--threshold", "3"], "--threshold/-t: must be a number >= 0 and <= 1"),
    (["detect", FACES, "--model", FACES], "no manifest.json"),
])
def test_errors_are_one_line_exit_2(args, needle):
    r = edge_ssd(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    errs = [ln for ln in r.stderr.splitlines() if ln.startswith("edge-ssd: error:")]
    assert len(errs) == 1 and needle in errs[0], r.stderr


def test_draw_colours_are_stable_and_distinct():
    from edge_ssd.model.box import Detections
    from edge_ssd.runtime.draw import class_color, draw_detections

    assert class_color(3) == class_color(3)
    assert len({class_color(i) for i in range(21)}) == 21
    img = np.zeros((100, 200, 3), np.uint8)
    d = Detections(np.array([[0.1, 0.2, 0.5, 0.9]], np.float32), np.array([0.9], np.float32), np.array([2]))
    out = draw_detections(img, d, ["bg", "a", "b"])
    assert img.max() == 0 and out.max() > 0
    assert tuple(int(v) for v in out[90, 60]) == class_color(2)  # bottom edge (y=90) in the class colour
