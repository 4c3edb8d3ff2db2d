"""``edge-ssd export``: a pytorch-ssd checkpoint to an ONNX model with pytorch-ssd's contract."""

from __future__ import annotations

import argparse

from . import _args as A

ARCH_CHOICES = ("mb1-ssd", "mb1-ssd-lite", "mb2-ssd-lite")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a pytorch-ssd MobileNet-SSD checkpoint to ONNX (scores + boxes), checked against PyTorch",
        description=(
            "Export a qfgaohao/pytorch-ssd checkpoint to ONNX: input 'input' 1x3x300x300, outputs 'scores' "
            "(softmax) and 'boxes' (corner form, 0..1). The file is checked with onnx.checker and compared "
            "with PyTorch under ONNX Runtime before it is written; labels and arch go into the ONNX metadata."
        ),
    )
    p.add_argument("--arch", choices=ARCH_CHOICES, help="network (default: guessed from the checkpoint)")
    p.add_argument("--weights", help="pytorch-ssd .pth checkpoint (state dict)")
    p.add_argument("--random-init", action="store_true", help="export untrained random weights (tests only)")
    p.add_argument("--labels", required=True, help="labels .txt, one class per line, BACKGROUND first")
    p.add_argument("-o", "--output", required=True, help="output .onnx file")
    p.add_argument("--opset", type=int, default=13, choices=range(10, 18), metavar="{10..17}", help="ONNX opset")
    p.add_argument("--width-mult", type=A.positive_float, default=None,
                   help="base-net width multiplier (default: guessed, 1.0)")
    p.add_argument("--check-image", help="image for the ONNX Runtime vs PyTorch check (default: a synthetic one)")
    p.add_argument("--atol", type=A.positive_float, default=1e-4, help="max abs difference allowed in that check")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import UserError

    if bool(args.weights) == bool(args.random_init):
        raise UserError(
            "pass --weights CHECKPOINT.pth (or, for tests only, --random-init); refusing to guess"
            if not args.weights
            else "--weights and --random-init exclude each other; drop one"
        )
    from ..nets.export import read_labels

    labels = read_labels(args.labels)  # fail fast, before torch loads

    import torch

    from ..model.preprocess import read_image
    from ..nets import create_net, describe_state_dict, load_weights, read_state_dict
    from ..nets.export import export_onnx

    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    arch, width = args.arch, args.width_mult
    if args.weights:
        sd = read_state_dict(args.weights)
        guess = describe_state_dict(sd)
        arch = arch or guess["arch"]
        width = width if width is not None else (guess["width_mult"] or 1.0)
        if arch is None:
            raise UserError(
                f"cannot tell the architecture of {args.weights!r}; pass --arch ({', '.join(ARCH_CHOICES)})"
            )
    else:
        if arch is None:
            raise UserError(f"--random-init needs --arch ({', '.join(ARCH_CHOICES)})")
        width = 1.0 if width is None else width
    net = create_net(arch, len(labels), width_mult=width, is_test=True)
    if args.weights:
        load_weights(net, args.weights)
    image, image_name = None, "a synthetic image"
    if args.check_image:
        try:
            image, image_name = read_image(args.check_image), args.check_image
        except (OSError, ValueError) as e:
            raise UserError(f"--check-image: {str(e).splitlines()[0] if str(e) else 'unreadable file'}") from None
    extra = {"edge_ssd.weights": "random-init" if args.random_init else str(args.weights)}
    if args.weights:
        import hashlib

        with open(args.weights, "rb") as f:
            extra["edge_ssd.weights_sha256"] = hashlib.file_digest(f, "sha256").hexdigest()
    rep = export_onnx(net, labels, args.output, opset=args.opset, check_image=image, check_image_name=image_name,
                      atol=args.atol, metadata=extra)  # fmt: skip
    print(
        f"wrote {rep.path} ({rep.arch}, width {rep.width_mult:g}, {rep.num_classes} classes, {rep.num_priors} priors, "
        f"opset {rep.opset}); ONNX Runtime vs PyTorch on {rep.check_image}: max abs error scores "
        f"{rep.max_abs_err_scores:.1e}, boxes {rep.max_abs_err_boxes:.1e}"
    )
    return 0
