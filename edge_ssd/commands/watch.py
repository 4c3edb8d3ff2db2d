"""``edge-ssd watch``: the reference subscriber. Shows detections live as a table per source (frame, fps,
objects with label/score/box), or prints the raw messages as JSON lines (``--json``).

``--share GROUP`` joins the MQTT 5 shared subscription ``$share/GROUP/<prefix>/<device>/+/detections``: the
broker hands each detections message to exactly one member of the group, so several watchers (or any MQTT 5
consumers, docs/fleet.md) split the load. The subscriber speaks MQTT 5 whatever protocol the devices use."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

from . import _args as A


def register(subparsers) -> None:
    p = subparsers.add_parser("watch", help="subscribe to a broker and show detections live")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=A.port, default=1883)
    p.add_argument("--prefix", default="edge-ssd", help="topic prefix (mqtt.topic_prefix)")
    p.add_argument("--device", default="+", help="device name (default: all devices)")
    p.add_argument("--username")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the password (or set $EDGE_SSD_MQTT_PASSWORD)")
    p.add_argument("--password", help=argparse.SUPPRESS)  # visible in `ps`: kept for old scripts, warns
    p.add_argument("--once", type=A.positive_int, metavar="N", help="exit after N detection messages")
    p.add_argument("--json", action="store_true", help="print each message as a JSON line instead of a table")
    p.add_argument("--timeout", type=A.positive_float, default=None, help="exit (code 1) after this many seconds")
    p.add_argument("--share", metavar="GROUP", help="join the shared subscription $share/GROUP/... (MQTT 5): each "
                   "detections message goes to one member of the group")
    p.set_defaults(func=run)


def render(state: dict, width: int = 100) -> str:
    """The table: one block per (device, source) with its latest frame."""
    lines = [f"{'device/source':<28} {'frame':>7} {'fps':>6} {'inf ms':>7}  objects"]
    for key in sorted(state):
        s = state[key]
        m = s["msg"]
        objs = m.get("objects", [])
        lines.append(f"{key:<28} {m.get('frame', ''):>7} {s['fps']:>6.1f} {m.get('inference_ms', 0):>7.1f}  "
                     f"{len(objs)}")
        for o in objs[:10]:
            box = ",".join(f"{v:.3f}" for v in o.get("box", []))
            lines.append(f"{'':<30}{o.get('label', '?'):<14} {o.get('score', 0):.2f}  [{box}]")
        if len(objs) > 10:
            lines.append(f"{'':<30}... {len(objs) - 10} more")
    return "\n".join(line[:width] for line in lines)


def _payload(raw: bytes):
    """A message payload for ``--json``: JSON as is, plain text ("online") as a string, binary (snapshots) as its
    size."""
    try:
        return json.loads(raw)
    except ValueError:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"bytes": len(raw)}


class _Watch:
    """The subscriber's state, updated from paho's network thread."""

    def __init__(self, args, sub: str):
        self.args = args
        self.sub = sub
        self.state: dict[str, dict] = {}
        self.count = 0
        self.done = threading.Event()
        self.err: list[str] = []
        self.lock = threading.Lock()
        self.tty = sys.stdout.isatty() and not args.json

    def on_connect(self, c, u, flags, rc, props) -> None:
        if rc.is_failure:
            self.err.append(f"broker {self.args.host}:{self.args.port} refused the connection: {rc}; check "
                            "--username and --password-file")
            self.done.set()
            return
        c.subscribe(self.sub, qos=1)

    def on_message(self, c, u, msg) -> None:
        is_det = msg.topic.endswith("/detections")
        if self.args.json and (is_det or not self.args.once):
            print(json.dumps({"topic": msg.topic, "retain": bool(msg.retain), "payload": _payload(msg.payload)}),
                  flush=True)
        if not is_det:
            return
        try:
            m = json.loads(msg.payload)
        except ValueError:
            return
        self._detection(msg.topic, m)

    def _detection(self, topic: str, m: dict) -> None:
        parts = topic.split("/")
        key = f"{parts[-3]}/{parts[-2]}" if len(parts) >= 3 else topic
        now = time.monotonic()
        with self.lock:
            s = self.state.setdefault(key, {"fps": 0.0, "t": now, "msg": m})
            dt = now - s["t"]
            if dt > 0:
                s["fps"] = 0.8 * s["fps"] + 0.2 / dt if s["fps"] else 1.0 / dt
            s["t"], s["msg"] = now, m
            self.count += 1
            if not self.args.json:
                table = render(self.state)
                print(("\x1b[H\x1b[2J" if self.tty else "") + table + ("" if self.tty else "\n"), flush=True)
            if self.args.once and self.count >= self.args.once:
                self.done.set()


def read_password(args) -> str | None:
    """--password-file (first line), else $EDGE_SSD_MQTT_PASSWORD, else the deprecated --password (warned)."""
    import logging
    import os
    from pathlib import Path

    from ..errors import UserError

    if args.password_file:
        p = Path(args.password_file)
        try:
            lines = p.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            why = getattr(e, "strerror", None) or "not UTF-8 text"
            raise UserError(f"--password-file {p}: cannot read it ({why}); check the path") from None
        return lines[0].strip() if lines else ""
    env = os.environ.get("EDGE_SSD_MQTT_PASSWORD")
    if env:
        return env
    if args.password:
        logging.getLogger("edge_ssd.watch").warning(
            "--password is visible to every user in `ps`; use --password-file FILE or EDGE_SSD_MQTT_PASSWORD")
        return args.password
    return None


def run(args) -> int:
    import os
    import re

    import paho.mqtt.client as mqtt

    from ..errors import UserError

    if args.share is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", args.share):
        raise UserError(f"--share {args.share!r}: a group name is letters, digits, _ and - (no / + #)")
    sub = f"{args.prefix}/{args.device}/#"
    if args.share:
        sub = f"$share/{args.share}/{args.prefix}/{args.device}/+/detections"
    w = _Watch(args, sub)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-ssd-watch-{os.getpid()}",
                    protocol=mqtt.MQTTv5 if args.share else mqtt.MQTTv311)
    pw = read_password(args)
    if pw is not None and not args.username:
        raise UserError("a password was given but no --username; pass --username NAME")
    if args.username:
        c.username_pw_set(args.username, pw)
    c.on_connect = w.on_connect
    c.on_message = w.on_message
    try:
        c.connect(args.host, args.port, keepalive=30)
    except OSError as e:
        raise UserError(f"cannot connect to {args.host}:{args.port}: {e}; is the broker up?") from None
    except ValueError as e:  # paho: an empty or malformed host name
        raise UserError(f"--host {args.host!r}: {e} (give the broker's name or address)") from None
    c.loop_start()
    try:
        ok = w.done.wait(args.timeout)
    except KeyboardInterrupt:
        ok = True
    c.disconnect()
    c.loop_stop()
    if w.err:
        raise UserError(w.err[0])
    return 0 if ok else 1
