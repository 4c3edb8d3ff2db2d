"""``edge-ssd fetch-model``: download the author's pretrained pytorch-ssd VOC models into a cache."""

from __future__ import annotations

import argparse

from . import _args as A

NAMES = ("mb1-ssd-voc", "mb2-ssd-lite-voc")


def _sha256(text: str) -> str:
    import re

    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"must be 64 hex digits, as `sha256sum` prints (got {text!r})")
    return text.strip().lower()


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "fetch-model",
        help="download a pretrained pytorch-ssd model (weights + labels) into the cache, resumably",
        description=(
            "Download qfgaohao/pytorch-ssd's published VOC models into $EDGE_SSD_CACHE/models (default "
            "~/.cache/edge-ssd/models). Interrupted downloads resume (HTTP Range); sizes and, when given, "
            "sha256 are checked; the checkpoint is test-loaded into the network. Prints the paths and the "
            "matching 'edge-ssd export' command."
        ),
    )
    p.add_argument("name", choices=NAMES, help="model name")
    p.add_argument("--cache", help="cache directory (default: $EDGE_SSD_CACHE/models or ~/.cache/edge-ssd/models)")
    p.add_argument("--url", help="download the weights from this address instead (a mirror)")
    p.add_argument("--labels-url", help="download the labels from this address instead")
    p.add_argument("--sha256", type=_sha256, help="expected sha256 of the weights file (64 hex digits)")
    p.add_argument("--retries", type=A.nonneg_int, default=3, help="retries after a network failure (default 3)")
    p.add_argument("--timeout", type=A.positive_float, default=30.0, help="socket timeout in seconds (default 30)")
    p.add_argument("--no-verify", action="store_true", help="skip test-loading the checkpoint (no torch needed)")
    A.add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..nets.fetch import fetch_model

    f = fetch_model(
        args.name, cache=args.cache, url=args.url, labels_url=args.labels_url, sha256=args.sha256,
        retries=max(0, args.retries), timeout=args.timeout, verify=not args.no_verify, progress=not args.no_progress,
    )  # fmt: skip
    print(f"weights: {f.weights}")
    print(f"labels:  {f.labels}")
    print(f"export:  edge-ssd export --arch {f.arch} --weights {f.weights} --labels {f.labels} -o {f.name}.onnx")
    return 0
