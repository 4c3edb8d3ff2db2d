"""VOC mAP: known-by-construction cases on the real VOC sample, a cross-check against COCO tooling, and the
ONNX / CLI path end to end on a tiny ONNX model built here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_ssd.data import Sample, VOCDataset
from edge_ssd.errors import UserError
from edge_ssd.eval import evaluate, evaluate_detections, load_predictor
from edge_ssd.eval.voc import ap_101, ap_auc, ap_voc07, class_ap, precision_recall
from edge_ssd.model.box import Detections

SHARED = Path(__file__).resolve().parents[2] / "shared"
VOC = SHARED / "data" / "voc-sample"
FACE = SHARED / "models" / "ultralight-face"
needs_voc = pytest.mark.skipif(not VOC.is_dir(), reason="shared VOC sample missing")


@pytest.fixture(scope="module")
def voc():
    return VOCDataset(VOC)


def _gt_dets(ds, skip_class: int | None = None) -> dict[str, Detections]:
    out = {}
    for s in ds:
        m = s.labels != skip_class if skip_class is not None else np.ones(len(s), bool)
        out[s.image_id] = Detections(s.boxes[m].copy(), np.ones(int(m.sum()), np.float32), s.labels[m].copy())
    return out


def _iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Mini:
    """A dataset made of hand-written samples (same interface as the readers)."""

    def __init__(self, samples, names=("BACKGROUND", "a", "b")):
        self.samples, self.class_names = samples, list(names)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _sample(image_id, boxes, labels, difficult=None):
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    return Sample(image_id, Path(f"{image_id}.jpg"), b, np.asarray(labels, np.int64),
                  np.asarray(difficult if difficult is not None else [False] * len(b), bool), 100, 100)


# ------------------------------------------------------------------------------- known by construction
@needs_voc
def test_perfect_detections_score_one(voc):
    r = evaluate_detections(_gt_dets(voc), voc)
    assert r["map_voc07"] == pytest.approx(1.0) and r["map_auc"] == pytest.approx(1.0)
    present = {n for n, v in r["per_class"].items() if v["npos"] > 0}
    assert r["num_classes"] == len(present) == 20 and r["num_images"] == 60
    n_difficult = sum(int(s.difficult.sum()) for s in voc)
    assert r["num_gt"] == voc.num_boxes - n_difficult
    assert sum(v["fp"] for v in r["per_class"].values()) == 0


@needs_voc
def test_shifted_detections_score_zero(voc):
    dets = {}
    for s in voc:
        b = s.boxes.copy()
        w = b[:, 2] - b[:, 0]
        b[:, [0, 2]] += np.where(b[:, 0] > 0.5, -1.0, 1.0)[:, None] * w[:, None] * 1.01
        for k in range(len(b)):  # make sure no shifted box lands on another box of its class
            if max((_iou(b[k], g) for g, c in zip(s.boxes, s.labels, strict=True) if c == s.labels[k]),
                   default=0) >= 0.5:
                b[k] = [0, 0, 1e-3, 1e-3]
        dets[s.image_id] = Detections(b, np.ones(len(b), np.float32), s.labels.copy())
    r = evaluate_detections(dets, voc)
    assert r["map_voc07"] == 0.0 and r["map_auc"] == 0.0
    assert sum(v["tp"] for v in r["per_class"].values()) == 0


@needs_voc
def test_one_class_removed_drops_map_by_one_over_classes(voc):
    cow = voc.class_names.index("cow")
    r = evaluate_detections(_gt_dets(voc, skip_class=cow), voc)
    present = sum(1 for v in r["per_class"].values() if v["npos"] > 0)
    assert r["per_class"]["cow"]["ap_auc"] == 0.0 and r["per_class"]["cow"]["ap_voc07"] == 0.0
    assert r["map_auc"] == pytest.approx(1.0 - 1.0 / present, abs=1e-12)
    assert r["map_voc07"] == pytest.approx(1.0 - 1.0 / present, abs=1e-12)


@needs_voc
def test_limit_and_sequence_input(voc):
    dets = list(_gt_dets(voc).values())[:5]
    r = evaluate_detections(dets, voc)
    assert r["num_images"] == 5 and r["map_auc"] == pytest.approx(1.0)
    assert r["num_gt"] == sum(int((~voc[i].difficult).sum()) for i in range(5))
    assert evaluate_detections(_gt_dets(voc), voc, limit=5)["num_gt"] == r["num_gt"]


def test_duplicates_are_false_positives_with_hand_computed_ap():
    ds = _Mini([_sample("i", [[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]], [1, 1])])
    d = Detections(np.array([[0.1, 0.1, 0.4, 0.4], [0.11, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]], np.float32),
                   np.array([0.9, 0.8, 0.7], np.float32), np.array([1, 1, 1]))
    r = evaluate_detections({"i": d}, ds)["per_class"]["a"]
    assert (r["tp"], r["fp"], r["npos"]) == (2, 1, 2)
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1
    assert r["ap_auc"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert r["ap_voc07"] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_difficult_matches_are_ignored():
    gt = [[0.1, 0.1, 0.4, 0.4], [0.6, 0.6, 0.9, 0.9]]  # the second box is difficult
    ds = _Mini([_sample("i", gt, [1, 1], [False, True])])
    on_difficult = np.array([[0.6, 0.6, 0.9, 0.9]], np.float32)
    only = evaluate_detections({"i": Detections(on_difficult, np.array([0.9], np.float32), np.array([1]))}, ds)
    a = only["per_class"]["a"]
    assert (a["npos"], a["tp"], a["fp"], a["ap_auc"], a["ap_voc07"]) == (1, 0, 0, 0.0, 0.0)
    # a higher-scored hit on the difficult box ahead of the real hit changes nothing: AP stays 1
    boxes = np.array([[0.6, 0.6, 0.9, 0.9], [0.1, 0.1, 0.4, 0.4]], np.float32)
    both = evaluate_detections({"i": Detections(boxes, np.array([0.9, 0.5], np.float32), np.array([1, 1]))}, ds)
    a = both["per_class"]["a"]
    assert (a["npos"], a["tp"], a["fp"], a["ap_auc"]) == (1, 1, 0, 1.0) and a["ap_voc07"] == pytest.approx(1.0)
    # the same detections with the box not difficult: the second hit is a TP too, npos 2
    ds2 = _Mini([_sample("i", gt, [1, 1], [False, False])])
    a = evaluate_detections({"i": Detections(boxes, np.array([0.9, 0.5], np.float32), np.array([1, 1]))},
                            ds2)["per_class"]["a"]
    assert (a["npos"], a["tp"], a["fp"]) == (2, 2, 0)


@needs_voc
def test_difficult_only_detections_do_not_count(voc):
    dets = {}
    for s in voc:  # perfect on non-difficult boxes, plus high-score hits on difficult ones
        sc = np.where(s.difficult, 1.0, 0.5).astype(np.float32)
        dets[s.image_id] = Detections(s.boxes.copy(), sc, s.labels.copy())
    r = evaluate_detections(dets, voc)
    assert r["map_auc"] == pytest.approx(1.0)
    assert sum(v["fp"] for v in r["per_class"].values()) == 0


def test_class_mapping_by_model_labels():
    ds = _Mini([_sample("i", [[0.1, 0.1, 0.4, 0.4]], [2])])
    d = Detections(np.array([[0.1, 0.1, 0.4, 0.4]], np.float32), np.array([0.9], np.float32), np.array([1]))
    r = evaluate_detections({"i": d}, ds, model_labels=["BACKGROUND", "b"])
    assert r["per_class"]["b"]["ap_auc"] == 1.0 and r["map_auc"] == 1.0
    with pytest.raises(UserError, match="share no class"):
        evaluate_detections({"i": d}, ds, model_labels=["BACKGROUND", "zebra"])


@needs_voc
def test_map_over_the_classes_the_model_knows(voc):
    """A person-only model is scored on person alone, not averaged with 19 zeros; the rest is listed."""
    person = voc.class_names.index("person")
    dets = {}
    for s in voc:
        m = s.labels == person
        dets[s.image_id] = Detections(s.boxes[m].copy(), np.ones(int(m.sum()), np.float32), np.ones(int(m.sum()),
                                                                                                     np.int64))
    r = evaluate_detections(dets, voc, model_labels=["BACKGROUND", "person"])
    assert r["map_auc"] == pytest.approx(1.0) and r["num_classes"] == 1 and list(r["per_class"]) == ["person"]
    assert "person" not in r["classes_model_lacks"] and len(r["classes_model_lacks"]) == 19
    assert r["num_gt"] == r["per_class"]["person"]["npos"] > 0


def test_ap_formulas_on_hand_curves():
    rec, prec = precision_recall(np.array([1, 0, 1, 0.0]), np.array([0, 1, 0, 1.0]), 4)
    np.testing.assert_allclose(rec, [0.25, 0.25, 0.5, 0.5])
    np.testing.assert_allclose(prec, [1, 0.5, 2 / 3, 0.5])
    assert ap_auc(rec, prec) == pytest.approx(0.25 * 1 + 0.25 * 2 / 3)
    assert ap_voc07(rec, prec) == pytest.approx((3 * 1 + 3 * 2 / 3) / 11)
    assert ap_101(rec, prec) == pytest.approx((26 * 1 + 25 * 2 / 3) / 101)
    assert class_ap([], {"x": (np.zeros((0, 4)), np.zeros(0, bool))})["ap_auc"] is None


# ------------------------------------------------------------------------ cross-check against COCO tools
def _noisy_predictions(ds, seed=0):
    """Jittered hits, misses and false positives; no detection overlaps two same-class boxes at IoU >= 0.5
    (the one case where VOC's and COCO's matching rules differ)."""
    rng = np.random.default_rng(seed)
    preds = {}
    for s in ds:
        keep = ~s.difficult
        gb, gl = s.boxes[keep], s.labels[keep]
        boxes, labels = [], []
        for b, c in zip(gb, gl, strict=True):
            for _ in range(rng.integers(0, 3)):  # 0, 1 or 2 (a duplicate) hits per box
                wh = np.r_[b[2] - b[0], b[3] - b[1], b[2] - b[0], b[3] - b[1]]
                boxes.append(np.clip(b + rng.normal(0, 0.12, 4) * wh, 0, 1))
                labels.append(c)
        for _ in range(rng.integers(0, 4)):  # false positives of random classes
            x, y = rng.uniform(0, 0.7, 2)
            boxes.append([x, y, x + rng.uniform(0.05, 0.3), y + rng.uniform(0.05, 0.3)])
            labels.append(rng.integers(1, len(ds.class_names)))
        ok = []
        for b, c in zip(boxes, labels, strict=True):
            hits = sum(_iou(b, g) >= 0.5 for g, gc in zip(gb, gl, strict=True) if gc == c)
            good = b[2] > b[0] and b[3] > b[1]
            ok.append(hits <= 1 and good)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)[ok]
        labels = np.asarray(labels, np.int64)[ok]
        preds[s.image_id] = Detections(boxes, rng.uniform(0.01, 1, len(labels)).astype(np.float32), labels)
    return preds


def _coco_ap50_per_class(ds, preds, flavour):
    if flavour == "pycocotools":
        COCO = pytest.importorskip("pycocotools.coco").COCO
        COCOeval = pytest.importorskip("pycocotools.cocoeval").COCOeval
    else:
        fce = pytest.importorskip("faster_coco_eval")
        COCO, COCOeval = fce.COCO, fce.COCOeval_faster
    images, anns, dets = [], [], []
    for i, s in enumerate(ds):
        images.append({"id": i, "width": s.width, "height": s.height, "file_name": s.image_path.name})
        scale = np.array([s.width, s.height, s.width, s.height], np.float64)
        for b, c, d in zip(s.boxes, s.labels, s.difficult, strict=True):
            if d:
                continue
            x1, y1, x2, y2 = (b.astype(np.float64) * scale).tolist()
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)})
        p = preds[s.image_id]
        for b, sc, c in zip(p.boxes, p.scores, p.class_ids, strict=True):
            x1, y1, x2, y2 = (b.astype(np.float64) * scale).tolist()
            dets.append({"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "score": float(sc)})
    cats = [{"id": c, "name": n} for c, n in enumerate(ds.class_names) if c > 0]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns, "categories": cats}
    gt.createIndex()
    dt = gt.loadRes(dets)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.maxDets = [1, 10, 1000]
    ev.evaluate()
    ev.accumulate()
    prec = ev.eval["precision"]  # T x R x K x A x M; T[0] is IoU 0.5, A[0] all areas, M[-1] 1000 dets
    out = {}
    for k, cid in enumerate(ev.params.catIds):
        p = prec[0, :, k, 0, -1]
        out[ds.class_names[cid]] = float(np.mean(p)) if (p > -1).any() else None
    return out


@needs_voc
@pytest.mark.parametrize("flavour", ["pycocotools", "faster-coco-eval"])
@pytest.mark.parametrize("seed", [0, 1])
def test_ap101_agrees_with_coco_tools(voc, flavour, seed):
    preds = _noisy_predictions(voc, seed)
    ours = evaluate_detections(preds, voc)
    theirs = _coco_ap50_per_class(voc, preds, flavour)
    compared = 0
    for name, v in ours["per_class"].items():
        if v["npos"] == 0:
            continue
        assert theirs[name] is not None
        assert v["ap_101"] == pytest.approx(theirs[name], abs=1e-9), name
        compared += 1
    assert compared == 20
    # the noise makes a real curve: neither trivial 0 nor 1
    assert 0.05 < ours["map_101"] < 0.95
    assert ours["map_101"] == pytest.approx(np.mean([v for v in theirs.values() if v is not None]), abs=1e-9)


# ---------------------------------------------------------------------------------------- ONNX + CLI
def _fixed_output_onnx(path: Path, boxes: np.ndarray, labels: np.ndarray, scores_v: np.ndarray,
                       names: list[str] | None, size=(300, 300), num_priors=50, num_classes=21) -> Path:
    """An SSD-shaped ONNX model (input 1x3xHxW; outputs scores 1xNxC softmaxed, boxes 1xNx4) whose outputs are
    constants (plus 0 x the mean of the input, so the input is really consumed)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s = np.zeros((1, num_priors, num_classes), np.float32)
    s[0, :, 0] = 1.0
    b = np.tile(np.array([[0.0, 0.0, 0.01, 0.01]], np.float32), (num_priors, 1))[None]
    for k in range(len(labels)):
        s[0, k, 0] = 1.0 - scores_v[k]
        s[0, k, labels[k]] = scores_v[k]
        b[0, k] = boxes[k]
    w, h = size
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["s_const", "z"], ["scores"]),
        helper.make_node("Add", ["b_const", "z"], ["boxes"]),
    ]
    inits = [numpy_helper.from_array(s, "s_const"), numpy_helper.from_array(b, "b_const"),
             numpy_helper.from_array(np.zeros((), np.float32), "zero")]
    graph = helper.make_graph(
        nodes, "fixed", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, num_priors, num_classes]),
         helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, num_priors, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    if names is not None:
        helper.set_model_props(model, {"edge_ssd.labels": json.dumps(names)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@needs_voc
def test_onnx_predictor_on_first_image(voc, tmp_path):
    s = voc[0]
    model = _fixed_output_onnx(tmp_path / "m.onnx", s.boxes, s.labels, np.full(len(s), 0.9), list(voc.class_names))
    pred = load_predictor(model)
    assert pred.labels == voc.class_names and pred.info["width"] == 300
    r = evaluate(pred, voc, limit=1, model_labels=pred.labels, progress=False)
    assert r["num_images"] == 1 and r["map_auc"] == pytest.approx(1.0) and r["ms_per_image"] > 0


@needs_voc
def test_cli_end_to_end_on_onnx(voc, tmp_path):
    s0 = voc[0]
    # the model always answers with the first image's boxes plus one wrong-class box: AP known on 2 images
    boxes = np.concatenate([s0.boxes, [[0.5, 0.5, 0.6, 0.6]]]).astype(np.float32)
    labels = np.concatenate([s0.labels, [voc.class_names.index("dog")]])
    (tmp_path / "models").mkdir()
    model = _fixed_output_onnx(tmp_path / "models" / "m.onnx", boxes, labels, np.linspace(0.9, 0.5, len(labels)),
                               None)
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(voc.class_names) + "\n")
    out = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "edge_ssd", "eval", str(model), str(VOC), "--limit", "2", "--labels",
           str(labels_file), "--json", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(out.read_text())
    expected = evaluate_detections(
        [Detections(boxes, np.linspace(0.9, 0.5, len(labels)).astype(np.float32), labels)] * 2, voc)
    assert rep["map_auc"] == pytest.approx(expected["map_auc"]) and rep["num_images"] == 2
    assert 0 < rep["map_auc"] < 1
    assert "mAP@0.5 VOC07 11-point" in p.stdout
    # no labels anywhere -> one-line error
    p = subprocess.run(cmd[:6] + ["--limit", "1"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("edge-ssd: error:") and "--labels" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@needs_voc
def test_cli_bad_inputs_are_one_line_errors(tmp_path, voc):
    def run(*a):
        p = subprocess.run([sys.executable, "-m", "edge_ssd", "eval", *map(str, a)], capture_output=True,
                           text=True, timeout=300)
        assert p.returncode == 2, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("edge-ssd: error:"), p.stderr
        return p.stderr

    bad = tmp_path / "voc"
    (bad / "Annotations").mkdir(parents=True)
    (bad / "JPEGImages").mkdir()
    (bad / "Annotations" / "x.xml").write_text("<annotation><size>")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    assert "malformed XML" in run(garbage, bad)
    assert "cannot load ONNX model" in run(garbage, VOC)
    models = tmp_path / "models"
    models.mkdir()
    model = _fixed_output_onnx(models / "m.onnx", voc[0].boxes, voc[0].labels, np.full(len(voc[0]), 0.9), None)
    assert "cannot read labels file" in run(model, VOC, "--labels", tmp_path / "none.txt")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_bytes((VOC / "JPEGImages" / f"{voc[0].image_id}.jpg").read_bytes())
    assert "no ground-truth boxes" in run(model, imgs)
    assert "--iou" in run(model, VOC, "--iou", "1.5")


def _voc_xml(path: Path, image: str, w: int, h: int, objects) -> None:
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
                   f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, (x1, y1, x2, y2) in objects)
    path.write_text(f"<annotation><filename>{image}</filename><size><width>{w}</width><height>{h}</height>"
                    f"</size>{objs}</annotation>")


@needs_voc
def test_cli_voc_folder_with_a_class_outside_voc_and_labels(tmp_path, voc):
    """A VOC folder whose boxes are 'face' (not one of VOC's 20) and 'person', a face model with --labels:
    mAP over face (the class both know), person listed as a class the model lacks."""
    import shutil

    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    s0 = voc[0]
    shutil.copy(s0.image_path, root / "JPEGImages" / "a.jpg")
    w, h = s0.width, s0.height
    face_px, person_px = (11, 21, 111, 141), (151, 31, 251, 201)
    _voc_xml(root / "Annotations" / "a.xml", "a.jpg", w, h, [("face", face_px), ("person", person_px)])
    box = np.array([[(face_px[0] - 1) / w, (face_px[1] - 1) / h, (face_px[2] - 1) / w, (face_px[3] - 1) / h]],
                   np.float32)
    (tmp_path / "models").mkdir()
    model = _fixed_output_onnx(tmp_path / "models" / "face.onnx", box, np.array([1]), np.array([0.9]), None,
                               num_classes=2)
    labels = tmp_path / "face-model-labels.txt"
    labels.write_text("BACKGROUND\nface\n")
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "edge_ssd", "eval", str(model), str(root), "--labels", str(labels),
                        "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rep = json.loads(out.read_text())
    assert rep["num_classes"] == 1 and rep["map_auc"] == pytest.approx(1.0)
    assert rep["classes_model_lacks"] == ["person"] and "not in the model" in p.stdout


@needs_voc
def test_corrupt_image_in_dataset_stops_eval(tmp_path, voc):
    import shutil

    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    s = voc[0]
    shutil.copy(VOC / "Annotations" / f"{s.image_id}.xml", root / "Annotations")
    (root / "JPEGImages" / f"{s.image_id}.jpg").write_bytes(b"\x00" * 100)
    ds = VOCDataset(root)
    with pytest.raises(UserError, match=rf"cannot decode image .*{s.image_id}\.jpg"):
        evaluate(lambda img: Detections.empty(), ds, progress=False)


@pytest.mark.skipif(not FACE.is_dir() or not (SHARED / "data" / "faces").is_dir(), reason="face model missing")
def test_face_model_smoke():
    from edge_ssd.data import ImageFolder

    # the labels file beside it is named after another model (voc-model-labels.txt): never taken
    assert load_predictor(FACE / "version-slim-320.onnx").labels == ["BACKGROUND", "class1"]
    pred = load_predictor(FACE / "version-slim-320.onnx", labels=FACE / "voc-model-labels.txt")
    assert pred.labels == ["BACKGROUND", "face"] and (pred.info["width"], pred.info["height"]) == (320, 240)
    faces = ImageFolder(SHARED / "data" / "faces")
    found = 0
    for i in range(len(faces)):
        d = pred(faces.load_image(i))
        assert np.all(np.diff(d.scores) <= 0) and np.all(d.scores > 0.01)
        assert set(d.class_ids.tolist()) <= {1}
        found += int((d.scores > 0.7).sum())
    assert found >= len(faces)  # every photo shows at least one face


@pytest.mark.slow
@pytest.mark.skipif(not FACE.is_dir() or not (SHARED / "data" / "faces").is_dir(), reason="face model missing")
def test_bundle_via_runtime_agrees_with_onnx(face_bundle):
    """The runtime path (edge_ssd.runtime.load_detector on a float TFLite bundle) scored against the ONNX
    model's own confident detections as ground truth: a faithful conversion scores mAP close to 1."""
    from edge_ssd.data import ImageFolder

    bundle = face_bundle
    onnx_pred = load_predictor(FACE / "version-slim-320.onnx", labels=FACE / "voc-model-labels.txt")
    tfl_pred = load_predictor(bundle)
    assert tfl_pred.labels == ["BACKGROUND", "face"]
    faces = ImageFolder(SHARED / "data" / "faces", class_names=["BACKGROUND", "face"])
    for i, s in enumerate(faces):  # pseudo ground truth: the ONNX model's detections above 0.7
        d = onnx_pred(faces.load_image(i))
        keep = d.scores > 0.7
        s.boxes, s.labels, s.difficult = d.boxes[keep], d.class_ids[keep], np.zeros(int(keep.sum()), bool)
    assert faces.num_boxes >= len(faces)
    r = evaluate(tfl_pred, faces, model_labels=tfl_pred.labels, progress=False)
    assert r["map_auc"] > 0.95 and r["per_class"]["face"]["npos"] == faces.num_boxes


def test_resolve_labels_order_and_no_guessing(tmp_path, caplog):
    """One function for every command: explicit, metadata, manifest, <stem>-labels.txt, <stem>.txt, else
    class1... with one warning line; never another model's labels file."""
    import logging

    from edge_ssd.model.labels import LABELS_KEY, resolve_labels

    model = tmp_path / "det.onnx"
    (tmp_path / "labels.txt").write_text("BACKGROUND\ndog\n")
    (tmp_path / "other-labels.txt").write_text("BACKGROUND\ncat\n")
    with caplog.at_level(logging.WARNING, logger="edge_ssd"):
        r = resolve_labels(model, 3)
    assert r.names == ["BACKGROUND", "class1", "class2"] and r.source == "placeholder"
    assert len([x for x in caplog.records if "no labels" in x.getMessage()]) == 1
    (tmp_path / "det.txt").write_text("BACKGROUND\nb\nc\n")
    assert resolve_labels(model, 3).names == ["BACKGROUND", "b", "c"]
    (tmp_path / "det-labels.txt").write_text("x\ny\n")  # preferred; BACKGROUND added for a 3-class model
    r = resolve_labels(model, 3)
    assert r.names == ["BACKGROUND", "x", "y"] and r.source == "beside"
    assert resolve_labels(model, 3, manifest=["BACKGROUND", "m1", "m2"]).source == "manifest"
    meta = {LABELS_KEY: json.dumps(["BACKGROUND", "k1", "k2"])}
    assert resolve_labels(model, 3, metadata=meta, manifest=["BACKGROUND", "m1", "m2"]).names[1] == "k1"
    assert resolve_labels(model, 3, explicit=tmp_path / "det.txt", metadata=meta).names[1] == "b"
    with pytest.raises(UserError, match="3 classes but 4 labels"):
        resolve_labels(model, 3, explicit=["BACKGROUND", "a", "b", "c"])
    with pytest.raises(UserError, match="not a JSON list"):
        resolve_labels(model, 3, metadata={LABELS_KEY: "nope"})
