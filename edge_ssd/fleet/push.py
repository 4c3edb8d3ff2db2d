"""The operator's side of a roll-out: publish the retained command and follow the devices' ``model/state``."""

from __future__ import annotations

import json
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .archive import Packed

FINAL = ("active", "rolled-back", "failed")


@dataclass
class Broker:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    prefix: str = "edge-ssd"


def command_topic(prefix: str, device: str) -> str:
    return f"{prefix}/{device}/model/set"


def advertise_host(broker_host: str, broker_port: int) -> str:
    """The local address this machine uses to reach the broker: the devices reach the broker, so they most
    likely reach this address too."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((socket.gethostbyname(broker_host), broker_port))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def check_served(url: str, packed: Packed) -> None:
    """Download ``url`` once (resumable fetch, sha256 checked) so that no device is sent a URL that serves
    other bytes."""
    from ..nets.fetch import download

    with tempfile.TemporaryDirectory() as d:
        try:
            download(url, Path(d) / "check.tar", expected_size=packed.size, sha256=packed.sha256, retries=0,
                     timeout=30.0, progress=False)
        except UserError as e:
            raise UserError(f"--url does not serve {packed.path} (copy it there first): {e}") from None


@dataclass
class Follower:
    """Collects live ``<prefix>/+/model/state`` reports about one sha256 (retained old ones are skipped)."""

    sha256: str
    states: dict[str, dict] = field(default_factory=dict)  # device -> latest report
    cond: threading.Condition = field(default_factory=threading.Condition)

    def on_message(self, client, userdata, msg) -> None:
        if msg.retain:
            return
        try:
            m = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(m, dict) or m.get("sha256") != self.sha256:
            return
        device = msg.topic.split("/")[-3]
        with self.cond:
            self.states[device] = m
            self.cond.notify_all()
        reason = f": {m['reason']}" if m.get("reason") else ""
        print(f"{device}: {m.get('state')} {m.get('version')}{reason}", flush=True)

    def finished(self) -> dict[str, str]:
        return {d: m["state"] for d, m in self.states.items() if m.get("state") in FINAL}


def _client(b: Broker, on_message=None):
    import paho.mqtt.client as mqtt

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-ssd-push-{time.time_ns() % 10**9}")
    if b.username:
        c.username_pw_set(b.username, b.password)
    connected = threading.Event()

    def on_connect(cl, u, f, rc, p) -> None:
        if not rc.is_failure:
            connected.set()

    c.on_connect = on_connect
    if on_message:
        c.on_message = on_message
    try:
        c.connect(b.host, b.port, keepalive=30)
    except OSError as e:
        raise UserError(f"cannot connect to the broker {b.host}:{b.port}: {e}; check --host/--port") from None
    c.loop_start()
    if not connected.wait(10):
        c.loop_stop()
        raise UserError(f"broker {b.host}:{b.port} did not accept the connection; check --username/--password")
    return c


def publish(b: Broker, devices: list[str], payload: bytes, follower: Follower | None = None):
    """Publish ``payload`` retained (QoS 1) on each device's command topic (``all``: every device); returns the
    connected client (subscribed to the state reports when ``follower`` is given) for the caller to close."""
    c = _client(b, follower.on_message if follower else None)
    if follower:
        c.subscribe(f"{b.prefix}/+/model/state", qos=1)
        time.sleep(0.3)  # SUBACK before the devices can answer
    for d in devices:
        info = c.publish(command_topic(b.prefix, d), payload, qos=1, retain=True)
        info.wait_for_publish(10)
        if not info.is_published():
            raise UserError(f"broker {b.host}:{b.port} did not acknowledge the command; is it up?")
    return c


def wait_devices(follower: Follower, n: int, timeout: float | None) -> dict[str, str]:
    """Wait until ``n`` devices reported a final state for the bundle (or ``timeout``); returns them."""
    end = None if timeout is None else time.monotonic() + timeout
    with follower.cond:
        while len(follower.finished()) < n:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                break
            follower.cond.wait(left if left is not None else 1.0)
        return follower.finished()
