"""A throwaway Mosquitto broker on a free 127.0.0.1 port, and the reference subscriber (``edge-ssd watch
--json``) as a subprocess recording what arrives: what ``edge-ssd demo`` and ``bench/soak_daemon.py`` run.

The broker is anonymous, without persistence, its config and log in a folder of the caller's; stop it with
:meth:`LocalBroker.stop` or use it as a context manager.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError


def find_mosquitto() -> str | None:
    """The mosquitto binary (on PATH or in /usr/sbin, where Debian puts it), or None."""
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                              if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    def __init__(self, workdir: str | Path, binary: str | None = None):
        self.dir = Path(workdir)
        self.binary = binary or find_mosquitto()
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"

    def start(self, timeout: float = 10.0) -> LocalBroker:
        if not self.binary:
            raise UserError("mosquitto is not installed; install it (sudo apt-get install mosquitto) or run without "
                            "a broker")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr",
                 "log_type error", "log_type warning"]
        if os.geteuid() == 0:  # as root mosquitto drops to the "mosquitto" user, which cannot read our folder
            lines.append("user root")
        conf = self.dir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise UserError(f"mosquitto exited at start (code {self.proc.returncode}); see {self.log_path}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise UserError(f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout:.0f} s; see "
                        f"{self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass(frozen=True)
class Message:
    topic: str
    payload: object  # the JSON payload, or {"bytes": n} for binary ones (snapshots)
    retain: bool


class WatchSubscriber:
    """``edge-ssd watch --json`` on ``host:port`` as a subprocess. Every message it prints is recorded in
    :attr:`messages` and handed to ``on_message`` (from a reader thread)."""

    def __init__(self, host: str, port: int, on_message: Callable[[Message], None] | None = None,
                 prefix: str = "edge-ssd", device: str = "+"):
        self.cmd = [sys.executable, "-m", "edge_ssd", "watch", "--host", host, "--port", str(port), "--json",
                    "--prefix", prefix, "--device", device]
        self.on_message = on_message
        self.messages: list[Message] = []
        self.proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> WatchSubscriber:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1)
        self._thread = threading.Thread(target=self._read, name="watch-subscriber", daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                d = json.loads(line)
                m = Message(str(d["topic"]), d["payload"], bool(d.get("retain")))
            except (ValueError, KeyError, TypeError):
                if line.strip():  # watch's own complaints (a refused connection ...)
                    m = Message("", line.strip(), False)
                else:
                    continue
            with self._lock:
                self.messages.append(m)
            if self.on_message is not None:
                self.on_message(m)

    def on(self, suffix: str) -> list[Message]:
        """The messages received so far on topics ending in ``suffix``."""
        with self._lock:
            return [m for m in self.messages if m.topic.endswith(suffix)]

    def wait_for(self, pred: Callable[[WatchSubscriber], bool], timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self):
                return True
            time.sleep(0.05)
        return pred(self)

    def stop(self) -> int | None:
        """Ctrl-C to watch (it exits 0 on it); returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)
        return self.proc.returncode


def publish_retained(port: int, topic: str, payload: bytes, host: str = "127.0.0.1") -> None:
    """Publish ``payload`` retained on ``topic`` (empty: clear it) and wait for the broker's ack."""
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-ssd-probe-{os.getpid()}-{time.monotonic_ns()}")
    c.connect(host, port, keepalive=10)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    finally:
        c.disconnect()
        c.loop_stop()
