"""A real Mosquitto broker for tests: started on a free 127.0.0.1 port with a generated config, stopped (or
killed) and restarted on the same port with the same persistence directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_mosquitto() -> bool:
    return os.path.exists(MOSQUITTO)



def wait(pred, timeout: float = 20.0) -> bool:
    """Poll ``pred`` every 50 ms until it is true or ``timeout`` seconds passed; return its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()

class Broker:
    def __init__(self, workdir: Path, port: int | None = None, users: dict[str, str] | None = None,
                 persistence: bool = True):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.log = self.dir / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error", "log_type warning",
                 "log_type notice", "log_type subscribe", "max_queued_messages 0", "max_inflight_messages 0"]
        if os.geteuid() == 0:  # stay root: the default drop to "mosquitto" cannot read files under pytest's tmp
            lines.append("user root")
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for u, p in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), u, p], check=True, capture_output=True)
            os.chmod(pw, 0o600)
            lines += ["allow_anonymous false", f"password_file {pw}"]
        else:
            lines.append("allow_anonymous true")
        if persistence:
            (self.dir / "data").mkdir(exist_ok=True)
            # save every second so a SIGKILLed broker keeps the subscriber sessions
            lines += ["persistence true", f"persistence_location {self.dir / 'data'}/",
                      "autosave_interval 1", "autosave_on_changes false"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        logf = open(self.log, "a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=logf)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start listening")

    def wait_subscribed(self, topic_filter: str, timeout: float = 30.0) -> bool:
        """Wait until some client subscribed to ``topic_filter`` (the broker logs subscriptions): a subscriber
        started as a subprocess is ready once this returns True, however slow the machine is."""
        return wait(lambda: self.log.exists() and f" {topic_filter}" in self.log.read_text(errors="replace"), timeout)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class Collector:
    """A paho subscriber that records (topic, payload, retain) in arrival order.

    ``clean_session=False`` with a fixed client id makes it a persistent QoS 1 session: the broker queues
    messages for it while it is disconnected (and keeps them across a broker restart with persistence on)."""

    def __init__(self, port: int, topics: list[str], client_id: str | None = None, persistent: bool = False,
                 username: str | None = None, password: str | None = None, qos: int = 1):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.topics = topics
        self.qos = qos
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"col-{time.time_ns()}",
                                  clean_session=not persistent)
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.port = port

    def _on_connect(self, client, userdata, flags, rc, props):
        if not rc.is_failure:
            for t in self.topics:
                client.subscribe(t, qos=self.qos)
            self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def start(self, wait: bool = True) -> Collector:
        self.client.connect_async("127.0.0.1", self.port, keepalive=5)
        self.client.loop_start()
        if wait and not self.connected.wait(10):
            raise RuntimeError("collector could not connect")
        time.sleep(0.2)  # SUBACK
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def json(self, suffix: str) -> list[dict]:
        return [json.loads(p) for p in self.on(suffix)]

    def wait_for(self, pred, timeout: float = 20.0) -> bool:
        return wait(pred, timeout)


# -- daemon helpers ------------------------------------------------------------------------------------------
from _paths import FACE_LABELS, REPO, SHARED  # noqa: E402,F401 (re-exported)
from _paths import FACE_ONNX as FACE_MODEL  # noqa: E402,F401 (re-exported)


def make_face_video(path: Path, frames: int = 40, size=(320, 240)) -> Path:
    """A short MJPG video made of the shared face photos (each held 5 frames, shifted a little per frame)."""
    import cv2
    import numpy as np

    imgs = [cv2.resize(cv2.imread(str(p)), size) for p in sorted((SHARED / "data" / "faces").glob("*.jpg"))]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for i in range(frames):
        vw.write(np.roll(imgs[(i // 5) % len(imgs)], (i % 5) * 6, axis=1))
    vw.release()
    return path


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self, path: Path | None = None, abstract: str | None = None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            self.sock.bind("\0" + abstract)
            self.address = "@" + abstract
        else:
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.messages.append(data.decode())

    def lines(self) -> list[str]:
        return [line for m in list(self.messages) for line in m.split("\n")]

    def has(self, prefix: str) -> bool:
        return any(line.startswith(prefix) for line in self.lines())

    def close(self):
        self._stop.set()
        self._t.join(1)
        self.sock.close()


def write_config(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def start_daemon(config: Path, notify: NotifySocket | None = None, watchdog_usec: int | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e.pop("NOTIFY_SOCKET", None)
    e.pop("WATCHDOG_USEC", None)
    if notify:
        e["NOTIFY_SOCKET"] = notify.address
    if watchdog_usec:
        e["WATCHDOG_USEC"] = str(watchdog_usec)
    e.update(env or {})
    err = open(config.with_suffix(".stderr"), "w")
    return subprocess.Popen([str(REPO / ".venv" / "bin" / "edge-ssd"), "run", "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=err, env=e)


def stderr_of(config: Path) -> str:
    return config.with_suffix(".stderr").read_text()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def first_occurrences(msgs: list[dict]) -> tuple[list[str], int]:
    """Message ids in arrival order without re-deliveries, and the number of re-deliveries (docs/mqtt.md:
    consumers de-duplicate on the id, unique per device across restarts)."""
    seen, out = set(), []
    for m in msgs:
        k = m["id"]
        if k not in seen:
            seen.add(k)
            out.append(k)
    return out, len(msgs) - len(out)


def stop_daemon(p: subprocess.Popen, timeout: float = 30.0) -> int:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        raise
