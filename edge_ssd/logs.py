"""Logging set-up for the CLI and the daemon, suited to a device.

- On a terminal or in a file: ``2026-01-01 12:00:00,123 WARNING edge_ssd.x: message``.
- Under systemd (``$JOURNAL_STREAM`` set: stdout/stderr go to the journal): no timestamp of our own (the
  journal adds one) and a syslog priority prefix per line (``<3>`` error, ``<4>`` warning, ``<6>`` info,
  ``<7>`` debug), which journald reads (``SyslogLevelPrefix=yes``, the default), so ``journalctl -p warning``
  shows warnings and errors only.
- Every line goes through :func:`edge_ssd.redact.mask`: no URL password reaches a log.
"""

from __future__ import annotations

import logging
import os
import sys

from .redact import mask

PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def under_journal(env: dict[str, str] | None = None) -> bool:
    """True when our stderr is connected to the systemd journal."""
    env = os.environ if env is None else env
    return bool(env.get("JOURNAL_STREAM"))


class MaskingFormatter(logging.Formatter):
    """The formatted record (message, arguments and traceback) through :func:`edge_ssd.redact.mask`."""

    def format(self, record: logging.LogRecord) -> str:
        return mask(super().format(record))


class JournalFormatter(MaskingFormatter):
    """``<N>name: message``; continuation lines (tracebacks) get the same prefix."""

    def format(self, record: logging.LogRecord) -> str:
        prio = PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def setup_logging(verbose: bool = False, stream=None, env: dict[str, str] | None = None) -> logging.Handler:
    """Configure the root logger (once; a second call replaces our handler). Returns the handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_edge_ssd", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler._edge_ssd = True  # type: ignore[attr-defined]
    if under_journal(env):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(MaskingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    return handler
