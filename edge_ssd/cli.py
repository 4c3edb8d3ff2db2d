"""The ``edge-ssd`` command line. Each subcommand lives in ``edge_ssd/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` (a callable taking ``args`` and
returning an exit code). Command modules import heavy dependencies lazily, inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__
from .errors import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-ssd",
        description="MobileNet-SSD on edge devices: export, convert to int8 TFLite, run, publish over MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"edge-ssd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    from . import commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{commands.__name__}.{info.name}")
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"edge-ssd: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edge-ssd: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # the safety net for files and disks (missing folder, permissions, a full disk): one line, no traceback
        # (use -v to see where it came from)
        if args.verbose:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"edge-ssd: error: {e.strerror or e}{where} (check the path, its permissions and the free space)",
              file=sys.stderr)
        return 2
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
