"""``edge-ssd convert model.onnx``: calibrated int8 TFLite bundle with a fidelity report."""

from __future__ import annotations

import argparse

from .inspect import _shape, raw_outputs


def _floats(s: str) -> list[float]:
    try:
        v = [float(x) for x in s.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r}: give one number or three comma-separated numbers") from None
    if len(v) == 1:
        v = v * 3
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"{s!r}: give one number or three (R,G,B)")
    return v


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="ONNX SSD -> calibrated int8 TFLite bundle with measured fidelity",
        description="Cut the SSD tail (softmax + box decode, kept in float on the host), quantise the body to int8 "
                    "with onnx2tf using real calibration images, write the bundle (manifest.json, model.tflite, "
                    "report.json/.md/.png) and validate it as the device runs it (edge-ssd's runtime) against the "
                    "source ONNX in ONNX Runtime, on held-out images (--val, or 25%% of --calib never calibrated "
                    "on). Exit 4 when detection agreement falls below --min-agreement (artefacts are kept).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("-o", "--output", default=None, help="bundle directory (default: <model>.bundle)")
    p.add_argument("--calib", nargs="+", required=True, metavar="DIR",
                   help="calibration images: image folder(s), VOC root(s) or Open Images root(s)")
    p.add_argument("--calib-split", default=None, help="Open Images split for --calib (e.g. train)")
    p.add_argument("--calib-count", type=int, default=200, help="calibration images to use (default 200)")
    p.add_argument("--val", nargs="+", default=None, metavar="DIR",
                   help="validation images (default: a seeded 25%% of --calib, held out from calibration)")
    p.add_argument("--val-split", default=None, help="Open Images split for --val (e.g. test)")
    p.add_argument("--labels", default=None,
                   help="labels file, one per line, BACKGROUND first (default: the model's metadata, else "
                        "<model>-labels.txt / <model>.txt beside it, else class1... with a warning)")
    p.add_argument("--target", choices=["cpu", "edgetpu"], default="cpu")
    p.add_argument("--quant", choices=["auto", "per-channel", "per-tensor"], default="auto",
                   help="weight quantisation (auto: try per-channel and per-tensor with min-max calibration and "
                        "per-channel with percentile calibration, keep the most accurate on the held-out images)")
    p.add_argument("--calibration", choices=["minmax", "percentile"], default=None,
                   help="activation ranges: min-max over the calibration images, or the --percentile of their "
                        "values (default: minmax, and auto also tries percentile)")
    p.add_argument("--percentile", type=float, default=99.999, help="percentile for --calibration percentile")
    p.add_argument("--backend", choices=["flatbuffer_direct", "tf_converter"], default="flatbuffer_direct",
                   help="onnx2tf backend: flatbuffer_direct (default, no TensorFlow) or tf_converter (needs "
                        "convert/.venv-tf from `scripts/setup.sh --with-tf`, 2.7 GB)")
    p.add_argument("--mean", type=_floats, default=None,
                   help="normalisation mean the source graph expects (default 127; 0 when the graph normalises "
                        "itself)")
    p.add_argument("--std", type=_floats, default=None,
                   help="normalisation std the source graph expects (default 128; 1 when the graph normalises "
                        "itself)")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,H,W", help="fix a dynamic input shape")
    p.add_argument("--score-threshold", type=float, default=0.5, help="score threshold for agreement and manifest")
    p.add_argument("--min-agreement", type=float, default=0.9,
                   help="minimum int8-vs-fp32 detection F1 (default 0.9); below it exit 4")
    p.add_argument("--raw-outputs", type=raw_outputs, default=None, metavar="SCORES,BOXES",
                   help="cut at these raw class-logits and box-offsets tensors when the tail is not found (the "
                        "tail after them is proved or refused; see `edge-ssd inspect`)")
    p.add_argument("--postprocess-model", action="store_true",
                   help="also write model_postprocess.tflite + labelmap.txt: the int8 body ending in TFLite's "
                        "TFLite_Detection_PostProcess op (uint8 RGB in; boxes, classes, scores, count out), the "
                        "format Frigate, pycoral and picamera2 read; validated as they read it")
    p.add_argument("--allow-cpu-ops", action="store_true",
                   help="--target edgetpu: accept a model whose body the Edge TPU compiler leaves partly on the CPU")
    p.add_argument("--force", action="store_true",
                   help="allow < 10 calibration images, too few to hold out validation images, a non-empty output "
                        "dir")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ..convert.api import EXIT_LOW_AGREEMENT, convert_model
    from ..convert.report import format_markdown

    out = Path(args.output) if args.output else Path(Path(args.model).stem + ".bundle")
    r = convert_model(args.model, out, calib=args.calib, calib_count=args.calib_count, val=args.val,
                      labels=args.labels, target=args.target, quant=args.quant, min_agreement=args.min_agreement,
                      force=args.force, progress=not args.no_progress, mean=args.mean, std=args.std,
                      input_shape=args.input_shape, calib_split=args.calib_split, val_split=args.val_split,
                      score_threshold=args.score_threshold, backend=args.backend, calibration=args.calibration,
                      percentile=args.percentile, postprocess_model=args.postprocess_model,
                      allow_cpu_ops=args.allow_cpu_ops, raw_outputs=args.raw_outputs)
    print(format_markdown(r.report))
    print(f"bundle: {r.bundle_dir}")
    if not r.ok:
        print(f"edge-ssd: error: {r.report['failure']}; artefacts kept in {r.bundle_dir}", file=sys.stderr)
        return EXIT_LOW_AGREEMENT
    return 0
