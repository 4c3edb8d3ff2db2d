"""``edge-ssd config check FILE``: validate a daemon config; exit 0 with a summary, or exit 2 listing every
problem as ``file:line: key: problem``."""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("config", help="check a daemon config file")
    sub = p.add_subparsers(dest="config_cmd", metavar="ACTION")
    c = sub.add_parser("check", help="validate FILE (exit 0 and a summary, or 2 and file:line: key: problem)")
    c.add_argument("file", help="YAML config, e.g. /etc/edge-ssd/config.yaml")
    c.add_argument("-q", "--quiet", action="store_true", help="print nothing when the file is valid")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..daemon.config import ConfigError, load_config

    if getattr(args, "config_cmd", None) != "check":
        print("usage: edge-ssd config check FILE", file=sys.stderr)
        return 2
    try:
        loaded = load_config(args.file)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2
    if not args.quiet:
        print(loaded.summary())
    return 0
