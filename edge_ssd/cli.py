"""The ``edge-ssd`` command line. Each subcommand lives in ``edge_ssd/commands/<name>.py`` and exposes
``register(subparsers)``, which adds its parser and sets ``func=run`` (a callable taking ``args`` and
returning an exit code). Command modules import heavy dependencies lazily, inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from . import __version__
from .errors import INTERNAL_ERROR, DependencyError, UserError


class Parser(argparse.ArgumentParser):
    """Usage errors as one line like every other error: ``edge-ssd: error: detect: argument --threads: must be
    an integer >= 1 (got '0'); see 'edge-ssd detect --help'`` (exit 2), not the usage block."""

    def error(self, message: str):
        cmd = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        where = f"{cmd}: " if cmd else ""
        self.exit(2, f"edge-ssd: error: {where}{message}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


# a missing Python module -> what to install (the extras of pyproject.toml, or apt for system packages)
EXTRA_FOR_MODULE = {
    "torch": "pip install 'edge-ssd[train]'",
    "torchvision": "pip install 'edge-ssd[train]'",
    "onnx": "pip install 'edge-ssd[convert]'",
    "onnxruntime": "pip install 'edge-ssd[convert]'",
    "faster_coco_eval": "pip install 'edge-ssd[convert]'",
    "matplotlib": "pip install 'edge-ssd[convert]'",
    "psutil": "pip install 'edge-ssd[convert]'",
    "picamera2": "sudo apt-get install python3-picamera2 (Raspberry Pi OS), and a venv with --system-site-packages",
    "libcamera": "sudo apt-get install python3-libcamera (Raspberry Pi OS)",
    "pycoral": "see docs for the Coral Edge TPU (deploy/install.sh --coral)",
}


def install_hint(module: str | None) -> str:
    """What to run for a missing ``module`` (top-level name)."""
    top = (module or "").split(".")[0]
    return EXTRA_FOR_MODULE.get(top, "reinstall edge-ssd (pip install --force-reinstall edge-ssd) or its extras")


def main(argv: list[str] | None = None) -> int:
    from .logs import setup_logging
    from .redact import mask

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(verbose=args.verbose)
    if not args.verbose:  # OpenCV's and FFmpeg's own console chatter (our messages say what failed); -v keeps it
        import os

        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
        os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "8")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"edge-ssd: error: {mask(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("edge-ssd: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:
        if args.verbose:
            raise
        what = e.name or str(e).split("'")[1 if "'" in str(e) else 0]
        print(f"edge-ssd: error: {args.command} needs the Python module '{what}', which is not installed or "
              f"broken; {install_hint(what)}", file=sys.stderr)
        return DependencyError.exit_code
    except UnicodeDecodeError as e:
        if args.verbose:
            raise
        print(f"edge-ssd: error: a text file given to {args.command} is not UTF-8 (byte 0x{e.object[e.start]:02x} at "
              f"offset {e.start}); save it as UTF-8 text", file=sys.stderr)
        return 2
    except OSError as e:
        # the safety net for files and disks (missing folder, permissions, a full disk): one line, no traceback
        # (use -v to see where it came from)
        if args.verbose:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(mask(f"edge-ssd: error: {e.strerror or e}{where} (check the path, its permissions and the free space)"),
              file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the last net: one line, never a traceback (unless -v)
        if args.verbose:
            raise
        text = " ".join(str(e).split())[:300] or "no details"
        print(mask(f"edge-ssd: error: {args.command} failed unexpectedly: {type(e).__name__}: {text} "
                   "(run with -v for the traceback)"), file=sys.stderr)
        return INTERNAL_ERROR
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
