"""``edge-ssd ha remove --config FILE``: remove this device from Home Assistant.

Publishes an empty retained message on the device discovery topic (Home Assistant then deletes the device and
its entities), clears the per-entity discovery topics an edge-ssd 0.1 may have left, and clears the retained
state topics under ``<prefix>/<device>/`` (availability, counts, status, snapshots). Refuses while the daemon
is online (it would announce the device again) unless ``--force``. ``deploy/install.sh --uninstall`` runs it.
"""

from __future__ import annotations

import sys
import threading
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("ha", help="Home Assistant: remove this device's discovery and retained state")
    sub = p.add_subparsers(dest="ha_cmd", metavar="ACTION")
    r = sub.add_parser("remove", help="remove the device from Home Assistant and clear its retained topics")
    r.add_argument("--config", default="/etc/edge-ssd/config.yaml", help="daemon config (default: %(default)s)")
    r.add_argument("--force", action="store_true", help="even while the daemon reports itself online")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the broker (default 10)")
    p.set_defaults(func=run)


class _Retained:
    """Connect, subscribe, collect the retained messages the broker sends right after the SUBACK."""

    def __init__(self, cfg, password: str | None, subscriptions: list[str]):
        import paho.mqtt.client as mqtt

        from ..publish.mqtt import set_credentials

        m = cfg.mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{cfg.client_id()}-ha",
                                  protocol=mqtt.MQTTv311)
        set_credentials(self.client, m.username, password, m.tls)
        self.subscriptions = subscriptions
        self.found: dict[str, bytes] = {}
        self.subscribed = threading.Event()
        self.refused: str | None = None
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self.refused = str(reason_code)
            self.subscribed.set()
            return
        client.subscribe([(t, 1) for t in self.subscriptions])

    def _on_message(self, client, userdata, msg) -> None:
        if msg.retain and msg.payload:
            self.found[msg.topic] = bytes(msg.payload)


def _fail(msg: str) -> int:
    print(f"edge-ssd ha: {msg}", file=sys.stderr)
    return 1


def run(args) -> int:
    from ..daemon.config import ConfigError, load_config
    from ..publish.homeassistant import device_topic, legacy_topics
    from ..publish.topics import Topics

    if getattr(args, "ha_cmd", None) != "remove":
        print("usage: edge-ssd ha remove [--config FILE] [--force]", file=sys.stderr)
        return 2
    try:
        loaded = load_config(args.config)
    except ConfigError as e:
        for line in e.problems:
            print(line, file=sys.stderr)
        return 2
    cfg = loaded.config
    if cfg.mqtt is None:
        return _fail(f"{args.config} has no mqtt section: nothing was announced to Home Assistant")
    prefix = cfg.homeassistant.discovery_prefix
    topics = Topics(cfg.mqtt.topic_prefix, cfg.device)
    device = device_topic(prefix, cfg.device)
    r = _Retained(cfg, loaded.password, [device, legacy_topics(prefix, cfg.device), topics.subscription()])
    m = cfg.mqtt
    try:
        r.client.connect(m.host, m.port, keepalive=30)
    except (OSError, ValueError) as e:
        return _fail(f"cannot connect to the broker {m.host}:{m.port}: {e} (check mqtt.host/port in {args.config})")
    r.client.loop_start()
    try:
        if not r.subscribed.wait(args.timeout):
            return _fail(f"no answer from the broker {m.host}:{m.port} within {args.timeout:g} s")
        if r.refused:
            return _fail(f"the broker {m.host}:{m.port} refused the connection: {r.refused} "
                         "(check mqtt.username and mqtt.password_file)")
        time.sleep(0.5)  # the retained messages follow the SUBACK
        if r.found.get(topics.available) == b"online" and not args.force:
            return _fail(f"device {cfg.device} is online: stop the daemon first (systemctl stop edge-ssd), "
                         "or pass --force")
        clear = [device] + sorted(t for t in r.found if t != device)
        for t in clear:
            r.client.publish(t, b"", qos=1, retain=True).wait_for_publish(args.timeout)
    finally:
        r.client.disconnect()
        r.client.loop_stop()
    print(f"removed device {cfg.device} from Home Assistant ({device}); cleared {len(clear) - 1} other "
          f"retained topic(s) on {m.host}:{m.port}")
    return 0
