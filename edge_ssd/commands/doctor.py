"""``edge-ssd doctor``: check this machine (Python, runtime, camera, Edge TPU, broker, bundle, disk, thermals)."""

from __future__ import annotations

import argparse

from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor",
        help="check that this device can run the daemon (OK/WARN/FAIL with a fix each)",
        description="Checks Python, the TFLite runtime and its speed, cameras, a Coral Edge TPU (USB link speed, "
        "libedgetpu), the MQTT broker and credentials, the bundle's integrity, free space for the spool and the "
        "CPU temperature / throttling. Exit code 1 when something blocks running, 0 with warnings only.",
    )
    p.add_argument("--config", metavar="FILE", help="daemon config (default: /etc/edge-ssd/config.yaml if present)")
    p.add_argument("--model", metavar="BUNDLE", help="bundle to verify and time (default: the config's model.bundle)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of lines")
    p.add_argument("--user", default="edge-ssd", help="service user whose group membership is checked")
    p.add_argument("--timeout", type=A.positive_float, default=5.0, help="seconds to wait for the broker (default 5)")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)  # fake sysfs/dev trees (tests)
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    from ..doctor import run_checks
    from ..redact import mask

    report = run_checks(config=args.config, bundle=args.model, root=args.root, user=args.user,
                        timeout=args.timeout)
    if args.json:
        print(mask(json.dumps(report.as_dict(), indent=1, default=str)))
    else:
        print(mask(report.text()))
    return report.exit_code
