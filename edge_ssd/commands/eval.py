"""``edge-ssd eval MODEL DATASET``: VOC-style mAP@IoU of a model on a labelled dataset."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="mAP of a model (.onnx, .tflite or bundle) on a VOC / Open Images dataset",
        description="Run a model over a labelled dataset and report VOC-style mAP (VOC07 11-point and area under "
        "the curve) with per-class AP, over the classes the model and the dataset both know (by name); dataset "
        "classes the model lacks are listed, not averaged in.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="an .onnx model, a .tflite model or a bundle directory")
    p.add_argument("dataset", help="a VOC root (Annotations/, JPEGImages/) or a pytorch-ssd Open Images root")
    p.add_argument("--split", default=None, help="VOC split name or list file; Open Images split (train/test/...)")
    p.add_argument("--iou", type=float, default=0.5, help="IoU threshold for a true positive")
    p.add_argument("--threshold", type=float, default=0.01, help="score threshold (pytorch-ssd's eval uses 0.01)")
    p.add_argument("--labels", default=None,
                   help="the model's labels file (default: its metadata, its bundle's manifest, or <stem>-labels.txt "
                        "/ <stem>.txt beside it)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it shows only on a terminal)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    from ..data import open_dataset
    from ..errors import UserError
    from ..eval import evaluate, format_report, load_predictor

    if not 0.0 < args.iou < 1.0:
        raise UserError(f"--iou {args.iou} must be between 0 and 1 (VOC uses 0.5)")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit {args.limit} must be a positive number of images")
    # the dataset reader knows the model's classes (--labels) and keeps any others it finds, so a dataset
    # class the model lacks is listed, not an error
    names = None
    if args.labels:
        from ..model.labels import BACKGROUND, is_background, read_labels

        names = [BACKGROUND] + [n for n in read_labels(args.labels) if not is_background(n)]
    dataset = open_dataset(args.dataset, split=args.split, class_names=names, add_unknown=True)
    if dataset.num_boxes == 0:
        raise UserError(f"{args.dataset} has no ground-truth boxes (eval needs a VOC or Open Images dataset)")
    predictor = load_predictor(args.model, labels=args.labels, prob_threshold=args.threshold, labels_required=True)
    labels = predictor.labels
    report = evaluate(predictor, dataset, iou=args.iou, limit=args.limit, model_labels=labels,
                      progress=not args.no_progress)
    report.update(model=str(args.model), dataset=str(args.dataset), split=args.split, threshold=args.threshold,
                  predictor=predictor.description)
    print(format_report(report))
    print(f"{report['ms_per_image']:.1f} ms/image ({predictor.description})")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"report written to {out}")
    return 0
