"""``edge-ssd run --config FILE``: the detection daemon (systemd Type=notify; see edge_ssd/daemon/service.py)."""

from __future__ import annotations

import os


def register(subparsers) -> None:
    p = subparsers.add_parser("run", help="run the detection daemon (sources -> model -> MQTT/stdout/file)")
    p.add_argument("--config", "-c", default=os.environ.get("EDGE_SSD_CONFIG", "/etc/edge-ssd/config.yaml"),
                   help="YAML config (default: $EDGE_SSD_CONFIG or /etc/edge-ssd/config.yaml)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..daemon.service import Daemon

    return Daemon(args.config).run()
