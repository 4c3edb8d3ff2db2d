"""Synthetic detection data: coloured shapes on textured backgrounds, in the seed's open-images layout.

:func:`make_dataset` writes what qfgaohao/pytorch-ssd's ``OpenImagesDataset`` reads::

    OUT/sub-train-annotations-bbox.csv   ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,
    OUT/sub-test-annotations-bbox.csv      IsTruncated,IsGroupOf,IsDepiction,IsInside,id,ClassName
    OUT/train/<ImageID>.jpg
    OUT/test/<ImageID>.jpg
    OUT/open-images-model-labels.txt     BACKGROUND + the class names, sorted (the order the dataset uses)

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so a dataset is a pure
function of its arguments (and the OpenCV/numpy drawing code). :func:`make_video` renders a clip of the same
shapes moving about, with the ground truth of every frame, for runtime and daemon tests.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

# class name -> (hue centre in OpenCV's 0..180 scale, hue jitter). Names are sorted, so label ids are stable.
CLASSES: dict[str, tuple[int, int]] = {
    "circle": (0, 6),  # red
    "square": (112, 8),  # blue
    "star": (28, 5),  # yellow
    "triangle": (62, 8),  # green
}
CLASS_NAMES: tuple[str, ...] = tuple(sorted(CLASSES))
LABELS: tuple[str, ...] = ("BACKGROUND", *CLASS_NAMES)
CSV_COLUMNS = ("ImageID", "Source", "LabelName", "Confidence", "XMin", "XMax", "YMin", "YMax", "IsOccluded",
               "IsTruncated", "IsGroupOf", "IsDepiction", "IsInside", "id", "ClassName")
LABELS_FILE = "open-images-model-labels.txt"
IMAGE_SIZES = ((320, 240), (300, 300), (400, 300), (240, 320), (360, 270))
_SPLIT_IDS = {"train": 1, "test": 2, "validation": 3, "video": 4}


@dataclass
class SynthConfig:
    """Knobs of the generator. ``min_scale``/``max_scale``: object side as a fraction of the image side."""

    min_scale: float = 0.08
    max_scale: float = 0.9
    max_objects: int = 4
    image_sizes: tuple[tuple[int, int], ...] = IMAGE_SIZES
    max_aspect: float = 1.7  # objects are stretched by up to this factor in width or height
    noise_sigma: tuple[float, float] = (2.0, 10.0)
    occlusion: float = 0.35  # max fraction of an object's box that later objects may cover
    jpeg_quality: int = 90


@dataclass
class SynthObject:
    name: str
    box: tuple[float, float, float, float]  # normalised corner form (x0, y0, x1, y1), clipped to the image
    occluded: bool = False
    truncated: bool = False

    @property
    def label(self) -> int:
        return LABELS.index(self.name)


@dataclass
class SynthImage:
    image: np.ndarray  # BGR uint8
    objects: list[SynthObject] = field(default_factory=list)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), _SPLIT_IDS.get(split, 9), int(index)])


def _hsv_bgr(h: float, s: float, v: float) -> tuple[int, int, int]:
    px = np.uint8([[[int(h) % 180, int(np.clip(s, 0, 255)), int(np.clip(v, 0, 255))]]])
    b, g, r = cv2.cvtColor(px, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def render_background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Textured, mostly muted background: a gradient, blurred blobs, lines and patches, and noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0 = rng.uniform(30, 220, 3).astype(np.float32)
    c1 = rng.uniform(30, 220, 3).astype(np.float32)
    ang = rng.uniform(0, 2 * math.pi)
    t = (np.cos(ang) * xx / width + np.sin(ang) * yy / height)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    # low-frequency texture
    low = rng.normal(0, 1, (max(2, height // 24), max(2, width // 24), 3)).astype(np.float32)
    img += cv2.resize(low, (width, height), interpolation=cv2.INTER_CUBIC) * rng.uniform(5, 25)
    img = np.clip(img, 0, 255).astype(np.uint8)
    # muted patches and blobs (low saturation, so they are distinguishable from the saturated objects)
    for _ in range(int(rng.integers(2, 8))):
        col = _hsv_bgr(rng.uniform(0, 180), rng.uniform(0, 90), rng.uniform(40, 230))
        if rng.random() < 0.5:
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1 = x0 + int(rng.integers(width // 10, width // 2))
            y1 = y0 + int(rng.integers(height // 10, height // 2))
            cv2.rectangle(img, (x0, y0), (x1, y1), col, -1)
        else:
            c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            ax = (int(rng.integers(width // 12, width // 3)), int(rng.integers(height // 12, height // 3)))
            cv2.ellipse(img, c, ax, float(rng.uniform(0, 180)), 0, 360, col, -1)
    img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(1.0, 4.0)))
    for _ in range(int(rng.integers(3, 15))):
        col = _hsv_bgr(rng.uniform(0, 180), rng.uniform(0, 120), rng.uniform(20, 240))
        p0 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        p1 = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.line(img, p0, p1, col, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _shape_points(name: str, cx: float, cy: float, w: float, h: float, rot: float) -> np.ndarray:
    """Polygon (K, 2) in pixels of a shape with bounding extent ``w`` x ``h`` before rotation."""
    if name == "square":
        pts = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64)
    elif name == "triangle":
        pts = np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
    elif name == "star":
        k = np.arange(10)
        r = np.where(k % 2 == 0, 1.0, 0.45)
        a = -math.pi / 2 + k * math.pi / 5
        pts = np.stack([r * np.cos(a), r * np.sin(a)], 1)
        pts[:, 1] = (pts[:, 1] - pts[:, 1].min()) / (pts[:, 1].max() - pts[:, 1].min()) * 2 - 1
    else:  # circle -> ellipse polygon
        a = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        pts = np.stack([np.cos(a), np.sin(a)], 1)
    pts = pts * np.array([w / 2, h / 2])
    c, s = math.cos(rot), math.sin(rot)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts + np.array([cx, cy])


def draw_shape(img: np.ndarray, rng: np.random.Generator, name: str, cx: float, cy: float, w: float, h: float,
               rot: float = 0.0, mask: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """Draw one shape (solid colour of its class, shading, sometimes an outline); return its pixel box."""
    hue, jit = CLASSES[name]
    colour = _hsv_bgr(hue + rng.uniform(-jit, jit), rng.uniform(170, 255), rng.uniform(150, 255))
    pts = _shape_points(name, cx, cy, w, h, rot)
    ipts = np.round(pts * 16).astype(np.int32)  # 4 fractional bits for sub-pixel accuracy
    cv2.fillPoly(img, [ipts], colour, cv2.LINE_AA, shift=4)
    if mask is not None:
        cv2.fillPoly(mask, [ipts], 255, cv2.LINE_8, shift=4)
    if rng.random() < 0.5:  # a darker inner shape gives texture without changing the outline
        inner = _shape_points(name, cx + rng.uniform(-0.05, 0.05) * w, cy + rng.uniform(-0.05, 0.05) * h,
                              w * rng.uniform(0.3, 0.6), h * rng.uniform(0.3, 0.6), rot)
        dark = tuple(int(c * rng.uniform(0.55, 0.85)) for c in colour)
        cv2.fillPoly(img, [np.round(inner * 16).astype(np.int32)], dark, cv2.LINE_AA, shift=4)
    if rng.random() < 0.3:
        cv2.polylines(img, [ipts], True, (20, 20, 20), 1, cv2.LINE_AA, shift=4)
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    return float(x0), float(y0), float(x1), float(y1)


def _sample_shape(rng: np.random.Generator, cfg: SynthConfig, width: int, height: int, max_scale: float):
    name = CLASS_NAMES[int(rng.integers(0, len(CLASS_NAMES)))]
    side = math.exp(rng.uniform(math.log(cfg.min_scale), math.log(max(max_scale, cfg.min_scale * 1.01))))
    aspect = math.exp(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect)))
    w = side * math.sqrt(aspect) * width
    h = side / math.sqrt(aspect) * height
    w, h = min(w, 0.95 * width), min(h, 0.95 * height)
    rot = 0.0 if name == "circle" else float(rng.normal(0, 0.25))
    # mostly inside; sometimes a little outside (truncated)
    margin = 0.15 if rng.random() < 0.15 else 0.0
    cx = rng.uniform(w / 2 - margin * w, width - w / 2 + margin * w)
    cy = rng.uniform(h / 2 - margin * h, height - h / 2 + margin * h)
    return name, cx, cy, w, h, rot


def render_image(rng: np.random.Generator, cfg: SynthConfig | None = None,
                 size: tuple[int, int] | None = None) -> SynthImage:
    """One synthetic image with 1..``max_objects`` shapes and its ground truth."""
    cfg = cfg or SynthConfig()
    width, height = size or cfg.image_sizes[int(rng.integers(0, len(cfg.image_sizes)))]
    img = render_background(rng, width, height)
    n = int(rng.integers(1, cfg.max_objects + 1))
    placed: list[tuple[str, np.ndarray, np.ndarray]] = []  # name, pixel box, mask
    for k in range(n):
        max_scale = cfg.max_scale if k == 0 else min(cfg.max_scale, 0.5)
        for _attempt in range(20):
            name, cx, cy, w, h, rot = _sample_shape(rng, cfg, width, height, max_scale)
            mask = np.zeros((height, width), np.uint8)
            tmp = img.copy()
            box = np.array(draw_shape(tmp, rng, name, cx, cy, w, h, rot, mask), np.float64)
            # reject if it hides too much of an earlier object, or is hidden itself by being inside one
            ok = True
            for _, _pbox, pmask in placed:
                area = float(np.count_nonzero(pmask))
                covered = float(np.count_nonzero(pmask & mask)) / max(area, 1.0)
                if covered > cfg.occlusion:
                    ok = False
                    break
            if ok:
                img = tmp
                for i, (pn, pbox, pmask) in enumerate(placed):
                    placed[i] = (pn, pbox, pmask & ~mask)
                placed.append((name, box, mask))
                break
    objs: list[SynthObject] = []
    for name, box, mask in placed:
        full = float(np.count_nonzero(mask))
        x0, y0, x1, y1 = box
        cx0, cy0 = max(x0, 0.0), max(y0, 0.0)
        cx1, cy1 = min(x1, float(width)), min(y1, float(height))
        truncated = (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1)
        if cx1 - cx0 < 4 or cy1 - cy0 < 4 or full < 16:
            continue
        nb = (cx0 / width, cy0 / height, cx1 / width, cy1 / height)
        # occluded: visible pixels well below the polygon's own area (later objects cover part of it)
        occluded = full < 0.9 * _shape_fill(name) * (x1 - x0) * (y1 - y0)
        objs.append(SynthObject(name, tuple(float(np.clip(v, 0.0, 1.0)) for v in nb),
                                occluded=bool(occluded), truncated=truncated))
    sigma = float(rng.uniform(*cfg.noise_sigma))
    noisy = img.astype(np.float32) + rng.normal(0, sigma, img.shape).astype(np.float32)
    img = np.clip(noisy, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.2)))
    return SynthImage(img, objs)


def _shape_fill(name: str) -> float:
    return {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5, "star": 0.35}.get(name, 0.5)


def _image_id(seed: int, split: str, index: int) -> str:
    return f"{_SPLIT_IDS.get(split, 9):x}{int(seed) & 0xFFFF:04x}{index:08x}"


def _label_mid(name: str) -> str:
    return f"/m/synth_{name}"


def write_split(out: Path, split: str, count: int, seed: int, cfg: SynthConfig | None = None,
                progress: bool = True) -> Path:
    """Write ``count`` images to ``out/split/`` and ``out/sub-<split>-annotations-bbox.csv``."""
    from tqdm import tqdm

    cfg = cfg or SynthConfig()
    img_dir = out / split
    img_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"sub-{split}-annotations-bbox.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i in tqdm(range(count), desc=f"synth {split}", unit="img", disable=None if progress else True, leave=False):
            rng = _rng(seed, split, i)
            s = render_image(rng, cfg)
            iid = _image_id(seed, split, i)
            ok = cv2.imwrite(str(img_dir / f"{iid}.jpg"), s.image, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            if not ok:
                raise OSError(f"cannot write {img_dir / f'{iid}.jpg'}")
            for o in s.objects:
                x0, y0, x1, y1 = o.box
                w.writerow([iid, "synthetic", _label_mid(o.name), 1, f"{x0:.6f}", f"{x1:.6f}", f"{y0:.6f}",
                            f"{y1:.6f}", int(o.occluded), int(o.truncated), 0, 0, 0, _label_mid(o.name), o.name])
    os.replace(tmp, csv_path)
    return csv_path


def write_labels_file(path: Path, labels=LABELS) -> Path:
    path.write_text("".join(f"{name}\n" for name in labels))
    return path


def make_dataset(out, train: int = 1000, test: int = 200, seed: int = 0, cfg: SynthConfig | None = None,
                 progress: bool = True, validation: int = 0) -> Path:
    """Generate a synthetic open-images dataset under ``out``; return its root."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("test", test), ("validation", validation)):
        if n > 0:
            write_split(out, split, n, seed, cfg, progress)
    write_labels_file(out / LABELS_FILE)
    return out


# --------------------------------------------------------------------------------------------------- video


@dataclass
class FrameGT:
    """Ground truth of one video frame: ``boxes`` (K, 4) normalised corner form, ``labels`` (K,) ids into
    :data:`LABELS`, ``names``."""

    boxes: np.ndarray
    labels: np.ndarray
    names: list[str]


def make_video(path, n_frames: int = 60, size: tuple[int, int] = (320, 240), seed: int = 0, fps: float = 10.0,
               n_objects: int = 3, cfg: SynthConfig | None = None) -> list[FrameGT]:
    """Render a clip of shapes moving (bouncing off the edges) over a fixed textured background.

    ``path`` ending in ``.avi`` is written as MJPG (works with headless OpenCV), ``.mp4`` as mp4v. Returns the
    ground truth of each frame. Objects do not overlap each other much (they are kept in separate lanes).
    """
    cfg = cfg or SynthConfig()
    path = Path(path)
    width, height = size
    rng = _rng(seed, "video", 0)
    bg = render_background(rng, width, height)
    fourcc = cv2.VideoWriter_fourcc(*("mp4v" if path.suffix.lower() == ".mp4" else "MJPG"))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), fourcc, float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"cannot open a video writer for {path} (try a .avi path: MJPG works with headless OpenCV)")
    objs = []
    lane_h = height / max(n_objects, 1)
    for k in range(n_objects):
        name = CLASS_NAMES[k % len(CLASS_NAMES)] if k < len(CLASS_NAMES) else CLASS_NAMES[int(rng.integers(0, 4))]
        side = rng.uniform(0.45, 0.85) * min(lane_h, width * 0.5)
        w, h = side * rng.uniform(0.85, 1.15), side * rng.uniform(0.85, 1.15)
        cx = rng.uniform(w / 2, width - w / 2)
        cy = lane_h * (k + 0.5)
        vx = rng.uniform(2, 6) * (1 if rng.random() < 0.5 else -1)
        vy = rng.uniform(-1, 1)
        objs.append([name, cx, cy, w, h, vx, vy, int(rng.integers(0, 2**31))])
    gts: list[FrameGT] = []
    try:
        for _f in range(n_frames):
            img = bg.copy()
            boxes, labels, names = [], [], []
            for o in objs:
                name, cx, cy, w, h, vx, vy, oseed = o
                # same colour every frame: a fixed per-object generator
                box = draw_shape(img, np.random.default_rng(oseed), name, cx, cy, w, h, 0.0)
                x0, y0, x1, y1 = box
                boxes.append([max(x0, 0) / width, max(y0, 0) / height, min(x1, width) / width,
                              min(y1, height) / height])
                labels.append(LABELS.index(name))
                names.append(name)
                cx, cy = cx + vx, cy + vy
                if cx - w / 2 < 0 or cx + w / 2 > width:
                    vx = -vx
                    cx = float(np.clip(cx, w / 2, width - w / 2))
                lo, hi = lane_h * objs.index(o) + h / 2, lane_h * (objs.index(o) + 1) - h / 2
                if hi <= lo or not lo <= cy <= hi:
                    vy = -vy
                    cy = float(np.clip(cy, min(lo, hi), max(lo, hi)))
                o[1:7] = [cx, cy, w, h, vx, vy]
            noisy = img.astype(np.float32) + rng.normal(0, 3.0, img.shape).astype(np.float32)
            writer.write(np.clip(noisy, 0, 255).astype(np.uint8))
            gts.append(FrameGT(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64), names))
    finally:
        writer.release()
    return gts
