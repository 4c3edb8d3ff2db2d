"""Evaluate detections against a dataset's ground truth (VOC-style mAP).

``evaluate(predict_fn, dataset)`` runs a model over the images (``predict_fn(bgr) -> Detections``);
``evaluate_detections(dets_by_image, dataset)`` scores detections computed elsewhere (e.g. fp32 vs int8 in the
converter). mAP is the mean over classes that have at least one non-difficult ground-truth box.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ..errors import UserError
from ..model.box import Detections
from ..model.labels import is_background
from .voc import class_ap


def _class_map(model_labels: Sequence[str] | None, dataset_names: Sequence[str]) -> np.ndarray | None:
    """Model class id -> dataset class id (-1: not in the dataset, or background); None when the label lists
    are identical."""
    if model_labels is None or list(model_labels) == list(dataset_names):
        return None
    index = {n: i for i, n in enumerate(dataset_names) if i > 0}
    m = np.array([-1 if is_background(n) else index.get(n, -1) for n in model_labels], np.int64)
    if not (m > 0).any():
        known = [n for n in model_labels if not is_background(n)]
        raise UserError(f"the model's labels ({', '.join(known[:5])}{'...' if len(known) > 5 else ''}) share no "
                        f"class with the dataset ({', '.join(list(dataset_names)[1:6])}...); pass the right "
                        "--labels or dataset")
    return m


def evaluate_detections(
    dets_by_image: Mapping[str, Detections] | Sequence[Detections],
    dataset,
    iou: float = 0.5,
    limit: int | None = None,
    model_labels: Sequence[str] | None = None,
) -> dict:
    """mAP of precomputed detections.

    ``dets_by_image``: a mapping ``image_id -> Detections`` (missing images have no detections) or a sequence
    aligned with the dataset's first ``len(dets_by_image)`` samples. Class ids index ``model_labels`` when given
    (mapped to the dataset's classes by name), else the dataset's ``class_names``. Boxes are normalised corners.
    mAP averages the classes the model and the dataset both know (by name) that have ground truth;
    ``classes_model_lacks`` lists the dataset classes with ground truth that the model does not know.
    """
    names = list(dataset.class_names)
    if isinstance(dets_by_image, Mapping):
        n = len(dataset) if limit is None else min(limit, len(dataset))
        get = lambda i, s: dets_by_image.get(s.image_id)  # noqa: E731
    else:
        n = len(dets_by_image) if limit is None else min(limit, len(dets_by_image))
        if n > len(dataset):
            raise UserError(f"{n} detection sets for a dataset of {len(dataset)} images (pass one per image)")
        get = lambda i, s: dets_by_image[i]  # noqa: E731
    cmap = _class_map(model_labels, names)
    num_classes = len(names)
    gt: list[dict] = [{} for _ in range(num_classes)]
    dets: list[list] = [[] for _ in range(num_classes)]
    for i in range(n):
        s = dataset[i]
        key = i
        for c in range(1, num_classes):
            m = s.labels == c
            gt[c][key] = (s.boxes[m], s.difficult[m])
        d = get(i, s)
        if d is None or len(d) == 0:
            continue
        cls = np.asarray(d.class_ids, np.int64)
        if cmap is not None:
            ok = (cls >= 0) & (cls < cmap.size)
            cls = np.where(ok, cmap[np.clip(cls, 0, cmap.size - 1)], -1)
        for b, sc, c in zip(np.asarray(d.boxes, np.float64), np.asarray(d.scores, np.float64), cls, strict=True):
            if 0 < c < num_classes:
                dets[c].append((key, float(sc), b))
    # the classes both sides know: a model that lacks a dataset class is not averaged with its zero AP
    known = set(range(1, num_classes)) if cmap is None else {int(c) for c in cmap if c > 0}
    per_class = {}
    for c in range(1, num_classes):
        if c in known:
            per_class[names[c]] = class_ap(dets[c], gt[c], iou)
    present = [v for v in per_class.values() if v["npos"] > 0]
    lacking = sorted(names[c] for c in range(1, num_classes) if c not in known and any(
        int((~g[1]).sum()) for g in gt[c].values()))

    def mean(key):
        return float(np.mean([v[key] for v in present])) if present else 0.0

    return {
        "map_voc07": mean("ap_voc07"),
        "map_auc": mean("ap_auc"),
        "map_101": mean("ap_101"),
        "iou": iou,
        "num_images": n,
        "num_classes": len(present),
        "num_gt": int(sum(v["npos"] for v in present)),
        "num_detections": int(sum(v["ndet"] for v in per_class.values())),
        "per_class": per_class,
        "classes_model_lacks": lacking,
    }


def evaluate(
    predict_fn: Callable[[np.ndarray], Detections],
    dataset,
    iou: float = 0.5,
    limit: int | None = None,
    model_labels: Sequence[str] | None = None,
    progress: bool = True,
) -> dict:
    """Run ``predict_fn`` (BGR uint8 image -> :class:`Detections`, normalised boxes) over ``dataset`` and return
    the report of :func:`evaluate_detections` plus ``seconds`` and ``ms_per_image``."""
    from tqdm import tqdm

    n = len(dataset) if limit is None else min(int(limit), len(dataset))
    if n == 0:
        raise UserError("the dataset has no images to evaluate (check the path, --split and --limit)")
    results: list[Detections] = []
    t0 = time.perf_counter()
    infer = 0.0
    for i in tqdm(range(n), desc="eval", unit="img", disable=None if progress else True):
        img = dataset.load_image(i)
        t = time.perf_counter()
        results.append(predict_fn(img))
        infer += time.perf_counter() - t
    report = evaluate_detections(results, dataset, iou=iou, model_labels=model_labels)
    report["seconds"] = time.perf_counter() - t0
    report["ms_per_image"] = 1000.0 * infer / n
    return report


def format_report(report: dict) -> str:
    """A terminal table of per-class AP plus the mAP lines."""
    rows = [(name, v) for name, v in report["per_class"].items()]
    width = max([len("class")] + [len(n) for n, _ in rows])
    lines = [f"{'class':<{width}}  {'npos':>5}  {'dets':>6}  {'AP(07)':>7}  {'AP(auc)':>7}"]
    for name, v in rows:
        if v["npos"] == 0 and v["ndet"] == 0:
            continue
        a07 = "-" if v["ap_voc07"] is None else f"{v['ap_voc07']:.4f}"
        auc = "-" if v["ap_auc"] is None else f"{v['ap_auc']:.4f}"
        lines.append(f"{name:<{width}}  {v['npos']:>5}  {v['ndet']:>6}  {a07:>7}  {auc:>7}")
    if report.get("classes_model_lacks"):
        lines.append(f"not in the model (left out of the mean): {', '.join(report['classes_model_lacks'])}")
    lines.append(f"mAP@{report['iou']:g} VOC07 11-point: {report['map_voc07']:.4f}   "
                 f"area (VOC2010+): {report['map_auc']:.4f}   "
                 f"({report['num_classes']} classes, {report['num_images']} images, {report['num_gt']} boxes)")
    return "\n".join(lines)
