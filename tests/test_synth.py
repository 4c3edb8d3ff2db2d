"""Synthetic dataset generator and video renderer."""

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_ssd.data.datasets import OpenImagesDataset, read_labels
from edge_ssd.train.synth import CSV_COLUMNS, LABELS, SynthConfig, make_dataset, make_video

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    make_dataset(out, train=12, test=5, seed=7, progress=False)
    return out


def test_layout_and_columns(tiny):
    for split, n in (("train", 12), ("test", 5)):
        with open(tiny / f"sub-{split}-annotations-bbox.csv", newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        assert tuple(header) == CSV_COLUMNS
        ids = {r[0] for r in rows}
        assert len(ids) == n  # every image has at least one object
        for r in rows:
            d = dict(zip(header, r, strict=True))
            x0, x1, y0, y1 = (float(d[k]) for k in ("XMin", "XMax", "YMin", "YMax"))
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert d["ClassName"] in LABELS[1:] and d["id"] == d["LabelName"]
            assert (tiny / split / f"{d['ImageID']}.jpg").is_file()
    assert read_labels(tiny / "open-images-model-labels.txt") == list(LABELS)


def test_the_projects_reader_loads_it(tiny):
    ds = OpenImagesDataset(tiny, "train")
    assert len(ds) == 12 and ds.class_names == list(LABELS)
    img = ds.load_image(0)
    assert img.ndim == 3 and img.shape[2] == 3


def test_deterministic_given_the_seed(tmp_path, tiny):
    make_dataset(tmp_path / "a", train=12, test=0, seed=7, progress=False)
    make_dataset(tmp_path / "b", train=12, test=0, seed=8, progress=False)
    csv_a = (tmp_path / "a" / "sub-train-annotations-bbox.csv").read_bytes()
    assert csv_a == (tiny / "sub-train-annotations-bbox.csv").read_bytes()
    for p in sorted((tiny / "train").glob("*.jpg")):
        assert (tmp_path / "a" / "train" / p.name).read_bytes() == p.read_bytes()
    assert (tmp_path / "b" / "sub-train-annotations-bbox.csv").read_bytes() != csv_a


def test_boxes_cover_the_saturated_object_pixels(tmp_path):
    # without noise/occlusion, each box should hold its object's saturated pixels and be tight around them
    cfg = SynthConfig(noise_sigma=(0.0, 0.0), max_objects=1, min_scale=0.2, max_scale=0.6)
    make_dataset(tmp_path, train=8, test=0, seed=3, cfg=cfg, progress=False)
    ds = OpenImagesDataset(tmp_path, "train")
    for i in range(len(ds)):
        s = ds[i]
        img = ds.load_image(i)
        h, w = img.shape[:2]
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        x0, y0, x1, y1 = s.boxes[0] * [w, h, w, h]
        inside = hsv[int(y0) + 1:int(y1) - 1, int(x0) + 1:int(x1) - 1]
        assert inside.size
        # the object's colour is saturated; the box interior holds plenty of such pixels
        assert np.mean(inside[..., 1] > 150) > 0.2


def test_scales_span_small_to_large(tmp_path):
    make_dataset(tmp_path, train=80, test=0, seed=1, progress=False)
    ds = OpenImagesDataset(tmp_path, "train")
    sides = np.concatenate([np.sqrt((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])) for s in ds])
    assert sides.min() < 0.12 and sides.max() > 0.6
    labels = np.concatenate([s.labels for s in ds])
    assert set(labels.tolist()) == set(range(1, len(LABELS)))


def test_video_frames_and_ground_truth(tmp_path):
    path = tmp_path / "clip.avi"
    gts = make_video(path, n_frames=12, size=(320, 240), seed=5)
    assert len(gts) == 12
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    assert len(frames) == 12 and frames[0].shape == (240, 320, 3)
    assert not np.array_equal(gts[0].boxes, gts[-1].boxes)  # things move
    for f, gt in zip(frames, gts, strict=True):
        hsv = cv2.cvtColor(f, cv2.COLOR_BGR2HSV)
        for b in gt.boxes:
            x0, y0, x1, y1 = (b * [320, 240, 320, 240]).astype(int)
            assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 240
            assert np.mean(hsv[y0:y1, x0:x1, 1] > 150) > 0.2
    assert make_video(tmp_path / "again.avi", 12, (320, 240), 5)[7].boxes.tolist() == gts[7].boxes.tolist()


def test_synth_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "synth", str(tmp_path / "d"), "--train", "3", "--test", "2",
                        "--seed", "1"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "d" / "train").glob("*.jpg"))) == 3
    assert len(list((tmp_path / "d" / "test").glob("*.jpg"))) == 2
    r = subprocess.run([sys.executable, "-m", "edge_ssd", "synth", str(tmp_path / "e"), "--min-scale", "2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
