"""sd_notify(3) without libsystemd: one datagram to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace). Also the watchdog interval from ``$WATCHDOG_USEC`` (honouring ``$WATCHDOG_PID``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from ..redact import mask


class Notifier:
    def __init__(self, address: str | None = None):
        addr = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if addr:
            self.address = "\0" + addr[1:] if addr.startswith("@") else addr
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str, **kv) -> bool:
        """Send ``READY=1``-style lines; keyword arguments become ``KEY=value``. False when not under systemd."""
        if self._sock is None or self.address is None:
            return False
        lines = list(fields) + [f"{k.upper()}={v}" for k, v in kv.items()]
        msg = "\n".join(mask(line.replace("\n", " ")) for line in lines).encode()  # STATUS= is world-readable
        try:
            self._sock.sendto(msg, self.address)
            return True
        except OSError:
            return False

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog deadlines (``WATCHDOG_USEC``), or None if the watchdog is off or for another
    process (``WATCHDOG_PID``)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None
