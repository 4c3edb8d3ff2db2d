"""``edge-ssd inspect model.onnx``: inputs/outputs, opset, and the SSD post-processing tail found in the graph."""

from __future__ import annotations


def _shape(s: str) -> list[int]:
    try:
        v = [int(x) for x in s.replace("x", ",").split(",")]
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"{s!r}: give N,C,H,W, e.g. 1,3,300,300") from None
    return v


def raw_outputs(s: str) -> tuple[str, str]:
    parts = [x.strip() for x in s.split(",")]
    if len(parts) != 2 or not all(parts):
        import argparse

        raise argparse.ArgumentTypeError(f"{s!r}: give two tensor names, SCORES,BOXES (raw logits, raw offsets)")
    return parts[0], parts[1]


def register(subparsers) -> None:
    p = subparsers.add_parser("inspect", help="show an ONNX SSD's I/O, priors and post-processing tail",
                              description="Inspect an ONNX SSD: inputs/outputs, opset, the softmax + box decode "
                              "tail (cut points, priors, variances read from the graph and proved numerically).")
    p.add_argument("model", help="the .onnx file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="N,C,H,W",
                   help="fix a dynamic input shape, in the input's order, e.g. 1,3,300,300 or 1,300,300,3")
    p.add_argument("--raw-outputs", type=raw_outputs, default=None, metavar="SCORES,BOXES",
                   help="the raw class-logits and box-offsets tensors to cut at (when the tail is not found); the "
                        "tail after them is proved or refused")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..convert.inspect import format_info, inspect_model

    info = inspect_model(args.model, input_shape=args.input_shape, raw_outputs=args.raw_outputs)
    if args.json:
        print(json.dumps(info.to_json(), indent=1, default=str))
    else:
        print(format_info(info))
    return 0
