"""MQTT publishing that loses nothing (paho-mqtt 2.x, ``CallbackAPIVersion.VERSION2``).

Three kinds of messages:
  - durable (detections, events): appended to the on-disk :class:`~edge_ssd.publish.spool.Spool` first, handed to the
    broker in spool order, deleted from the spool only when acknowledged (PUBACK -> ``on_publish(mid)``). Live
    messages never overtake spooled ones because *every* durable message goes through the spool: the
    publisher always sends the oldest unsent row next.
  - state (availability, per-label counts, per-source status, stats, Home Assistant discovery): latest value
    per topic, published when it changes and re-published after EVERY (re)connect and when
    ``homeassistant/status`` goes ``online``.
  - live (snapshots): best effort, only while connected.

Connection handling. One I/O thread owns the paho client and drives ``client.loop()`` itself, and all publishes
happen on that thread, so the order on the wire is exactly the spool order. After a disconnect the client
object is discarded and a fresh one connects (exponential backoff between ``reconnect_min_delay`` and
``reconnect_max_delay``, the same schedule as paho's ``reconnect_delay_set``). Why not paho's own
``loop_start`` auto-reconnect: paho keeps unacknowledged messages in memory and re-sends them after its
on_connect callback, so anything published from another thread in between overtakes them, and the spool
replay would send them a second time. With one thread and one client per connection, unacknowledged spool
rows are simply replayed in id order on the new connection. Delivery is at-least-once: a message whose PUBACK
was lost with the connection is sent again (MQTT's DUP semantics); consumers de-duplicate on the message
``id`` (publish/identity.py).

Broker refusals (bad credentials, not authorised) are logged as one line per distinct reason; the publisher
keeps retrying with backoff (messages keep going to the spool) so that fixing the broker side, or the config
plus ``systemctl reload edge-ssd``, recovers without a restart.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .hub import Update
from .messages import json_bytes
from .scene import Counts
from .spool import Spool
from .topics import Topics

if TYPE_CHECKING:
    from .homeassistant import DeviceDiscovery

log = logging.getLogger("edge_ssd.mqtt")


class MqttPublisher:
    def __init__(self, host: str, port: int = 1883, *, topics: Topics, spool: Spool, client_id: str,
                 username: str | None = None, password: str | None = None, tls=None, keepalive: int = 30,
                 qos: int = 1, min_delay: float = 1.0, max_delay: float = 60.0, inflight: int = 100,
                 discovery_prefix: str | None = None, protocol: int = 4,
                 expiry: dict[str, float | None] | None = None):
        self.host, self.port = host, int(port)
        self.topics = topics
        self.spool = spool
        self.client_id = client_id
        self.username, self.password = username, password
        self.tls = tls
        self.keepalive = int(keepalive)
        self.qos = int(qos)
        self.min_delay, self.max_delay = float(min_delay), max(float(max_delay), float(min_delay))
        self.inflight = int(inflight)
        self.discovery_prefix = discovery_prefix
        self.protocol = int(protocol)
        # topic kind (the last topic level: detections, events) -> seconds a spooled message stays fresh
        self.expiry = {k: float(v) for k, v in (expiry or {}).items() if v}
        self.expired = 0
        self._lock = threading.Lock()
        self._discovery: DeviceDiscovery | None = None  # topic, legacy, message(), merge_retained()
        self._legacy: set[str] = set()  # per-entity discovery topics of edge-ssd 0.1 still retained: migrate
        self._hold_announce: float = 0.0  # announce after the retained discovery messages came (or this time)
        self._sub_mid: int | None = None
        self._state: dict[str, tuple[bytes, bool, int]] = {}
        self._dirty: list[str] = []  # state topics changed since last published (in change order)
        self._live: deque = deque(maxlen=64)
        self._announce = False
        self._stop = threading.Event()
        self._flush_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self.connected = False
        self.connects = 0
        self.disconnects = 0
        self.sent = 0
        self.acked = 0
        self.state_published = 0
        self.unspooled = 0  # sent without the spool (disk full)
        self.last_error: str | None = None
        self._logged_errors: set[str] = set()
        self._offline_acked = False
        self._offline_mid: int | None = None  # the mid of the "offline" message sent at stop
        self._offline_at = 0.0
        self._session_ok = False  # per connection attempt (the network thread)
        self._refused: str | None = None
        self._handed: dict[int, int] = {}
        self._subs: dict[str, Callable[[str, bytes, bool], None]] = {}  # topic -> callback, see subscribe()

    # -- producer API (any thread) ------------------------------------------------------------------------
    def publish_durable(self, topic: str, payload: bytes, qos: int | None = None, retain: bool = False) -> bool:
        qos = self.qos if qos is None else qos
        rid = self.spool.append(topic, payload, qos, retain, count_drop=False)
        if rid is None:
            # the spool could not store it (disk full / too big): send directly if that cannot reorder anything
            if self.connected and len(self.spool) == 0:
                with self._lock:
                    self._live.append((topic, payload, qos, retain))
                self.unspooled += 1
                return True
            self.spool.count_drop()
            return False
        return True

    def set_state(self, topic: str, payload: bytes | str, retain: bool = True, qos: int | None = None) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        qos = self.qos if qos is None else qos
        with self._lock:
            if self._state.get(topic, (None,))[0] == payload:
                return
            self._state[topic] = (payload, retain, qos)
            if topic not in self._dirty:
                self._dirty.append(topic)

    def set_discovery(self, discovery) -> None:
        """The Home Assistant device message (:class:`~.homeassistant.DeviceDiscovery`), published retained."""
        with self._lock:
            self._discovery = discovery
            self._announce = True

    def publish_live(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> bool:
        if not self.connected:
            return False
        with self._lock:
            self._live.append((topic, payload, qos, retain))
        return True

    def subscribe(self, topic: str, callback: Callable[[str, bytes, bool], None]) -> None:
        """Deliver messages on ``topic`` (exact name, QoS 1, subscribed again after every connect) to
        ``callback(topic, payload, retained)``. It runs on the I/O thread: it must return quickly."""
        with self._lock:
            self._subs[topic] = callback

    def stats(self) -> dict:
        return {"connected": self.connected, "connects": self.connects, "disconnects": self.disconnects,
                "sent": self.sent, "acked": self.acked, "unspooled": self.unspooled, "last_error": self.last_error}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> MqttPublisher:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        return self

    def stop(self, flush_timeout: float = 10.0) -> bool:
        """Send what the spool holds (up to ``flush_timeout`` s), publish ``offline``, disconnect cleanly.
        Returns True when the spool was drained."""
        if self._thread is None:
            return len(self.spool) == 0
        self._flush_deadline = time.monotonic() + flush_timeout
        self._stop.set()
        self._thread.join(flush_timeout + 5.0)
        self._thread = None
        return len(self.spool) == 0

    def wait_connected(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.connected:
                return True
            time.sleep(0.02)
        return self.connected

    # -- I/O thread ----------------------------------------------------------------------------------------
    def _new_client(self):
        import paho.mqtt.client as mqtt

        if self.protocol == 5:  # MQTT 5: clean start is a connect() flag, not a client setting
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5)
        else:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                            protocol=mqtt.MQTTv311)
        c.max_inflight_messages_set(self.inflight)
        c.max_queued_messages_set(0)
        c.connect_timeout = 10.0
        set_credentials(c, self.username, self.password, self.tls)
        c.will_set(self.topics.available, b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        return c

    def _log_once(self, key: str, msg: str, level=logging.ERROR) -> None:
        self.last_error = msg
        if key not in self._logged_errors:
            self._logged_errors.add(key)
            log.log(level, msg)

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            client = self._new_client()
            self._session_ok = False
            self._refused = None
            self._handed = {}
            try:
                client.connect(self.host, self.port, self.keepalive)
            except (OSError, ssl.SSLError, ValueError) as e:
                self._log_once(f"connect:{type(e).__name__}:{getattr(e, 'errno', '')}",
                               f"mqtt: cannot connect to {self.host}:{self.port}: {e}; retrying with backoff, "
                               f"detections are spooled in {self.spool.dir}", logging.WARNING)
            else:
                if self._session(client):
                    attempt = 0
            sock = client.socket()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
            if self._stop.is_set():
                break
            delay = min(self.max_delay, self.min_delay * 2 ** attempt) * (0.75 + 0.25 * random.random())
            attempt = min(attempt + 1, 30)
            self._stop.wait(delay)

    def _session(self, client) -> bool:
        """Run one connection until it drops (or stop); True if it got as far as a successful CONNACK."""
        import paho.mqtt.client as mqtt

        t0 = time.monotonic()
        cursor = 0  # highest spool id handed to this connection
        offline_mid = None
        while True:
            rc = client.loop(timeout=0.02)
            if rc != mqtt.MQTT_ERR_SUCCESS or self._refused is not None:
                break
            if not self._session_ok:
                if self._stop.is_set() and time.monotonic() > (self._flush_deadline or 0):
                    break  # stopping and the CONNACK did not come within flush_timeout
                if time.monotonic() - t0 > 15.0:
                    self._log_once("connack-timeout", f"mqtt: no CONNACK from {self.host}:{self.port} in 15 s")
                    break
                continue
            stopping = self._stop.is_set()
            self._publish_state(client)
            with self._lock:
                live = list(self._live)
                self._live.clear()
            for topic, payload, qos, retain in live:
                client.publish(topic, payload, qos=qos, retain=retain)
            # durable: the oldest unsent rows first, at most `inflight` unacknowledged
            room = self.inflight - len(self._handed)
            if room > 0 and len(self.spool) > len(self._handed):
                for rec in self.spool.peek(cursor, room):
                    cursor = rec.id
                    left = self._fresh_for(rec)
                    if left is not None and left <= 0:
                        self.spool.expire(rec.id)  # stale: never delivered late (mqtt.expiry)
                        self.expired += 1
                        continue
                    info = client.publish(rec.topic, rec.payload, qos=rec.qos, retain=rec.retain,
                                          properties=self._expiry_props(left))
                    if info.rc != mqtt.MQTT_ERR_SUCCESS:
                        break
                    self.sent += 1
                    self._handed[info.mid] = rec.id  # QoS 0: on_publish fires once written
            if stopping:
                drained = not self._handed and len(self.spool) == 0
                if offline_mid is None and (drained or time.monotonic() > (self._flush_deadline or 0)):
                    info = client.publish(self.topics.available, b"offline", qos=1, retain=True)
                    offline_mid = info.mid
                    self._offline_mid = offline_mid
                    self._offline_at = time.monotonic()
                if offline_mid is not None and (self._offline_acked or time.monotonic() - self._offline_at > 3.0):
                    client.disconnect()
                    client.loop(timeout=0.1)
                    break
        self._set_disconnected()
        return self._session_ok

    def _fresh_for(self, rec) -> float | None:
        """Seconds record ``rec`` stays fresh (its topic kind's expiry minus its age in the spool); None: no
        expiry for that kind."""
        exp = self.expiry.get(rec.topic.rsplit("/", 1)[-1])
        return None if exp is None else exp - (time.time() - rec.ts)

    def _expiry_props(self, left: float | None):
        """MQTT 5: the rest of the freshness as the message expiry interval, so the broker does not hand the
        message to a subscriber later either (a persistent session that was offline)."""
        if left is None or self.protocol != 5:
            return None
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        props.MessageExpiryInterval = max(1, math.ceil(left))
        return props

    def _publish_state(self, client) -> None:
        with self._lock:
            if self._announce and time.monotonic() < self._hold_announce:
                return  # reading back the retained discovery messages: state goes out with the announce
            announce = self._announce
            if announce:
                self._announce = False
                dirty = list(self._state.keys())
                legacy, self._legacy = sorted(self._legacy), set()
            else:
                dirty = self._dirty
            self._dirty = []
            items = [(t, *self._state[t]) for t in dirty if t in self._state]
        if announce and self._discovery is not None:
            self._publish_discovery(client, legacy)
        if announce:
            client.publish(self.topics.available, b"online", qos=1, retain=True)
        for topic, payload, retain, qos in items:
            client.publish(topic, payload, qos=qos, retain=retain)
            self.state_published += 1

    def _publish_discovery(self, client, legacy: list[str]) -> None:
        """The device message. Per-entity topics of edge-ssd 0.1 are migrated first: ``migrate_discovery`` (Home
        Assistant unloads the entity but keeps its registry entry), then the old topic cleared while nothing
        owns it any more, then the device message re-creates the entity with the same unique_id, entity_id and
        history. (Clearing after the device message, as Home Assistant's docs have it, makes 2025.4 log a
        'conflicting MQTT discovery message' warning per entity.)"""
        d = self._discovery
        assert d is not None  # the caller checked
        for topic in legacy:
            client.publish(topic, b'{"migrate_discovery":true}', qos=1, retain=True)
        for topic in legacy:
            client.publish(topic, b"", qos=1, retain=True)
        client.publish(d.topic, d.message(), qos=1, retain=True)
        if legacy:
            log.info("mqtt: migrated %d Home Assistant entities to device discovery (%s)", len(legacy), d.topic)

    def _set_disconnected(self) -> None:
        if self.connected:
            self.disconnects += 1
            if self._stop.is_set():  # our own clean disconnect at stop
                log.info("mqtt: disconnected from %s:%d (stopping, %d left in the spool)", self.host, self.port,
                         len(self.spool))
            else:
                log.warning("mqtt: disconnected from %s:%d; spooling (%d queued)", self.host, self.port,
                            len(self.spool))
        self.connected = False

    # -- paho callbacks (run on the I/O thread, inside client.loop) -----------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            hint = ""
            if "password" in self._refused.lower() or "authori" in self._refused.lower():
                hint = "; check mqtt.username and mqtt.password_file / EDGE_SSD_MQTT_PASSWORD"
            self._log_once(f"refused:{self._refused}",
                           f"mqtt: broker {self.host}:{self.port} refused the connection: {self._refused}{hint} "
                           "(retrying with backoff; detections are spooled)")
            return
        self._session_ok = True
        self.connected = True
        self.connects += 1
        self._logged_errors.clear()
        self.last_error = None
        log.info("mqtt: connected to %s:%d as %s (%d spooled messages to send)", self.host, self.port,
                 self.client_id, len(self.spool))
        subs = [(f"{self.discovery_prefix}/status", 1)] if self.discovery_prefix else []
        with self._lock:
            subs += [(topic, 1) for topic in self._subs]
            self._announce = True  # discovery, availability and every state topic again
            if self._discovery is not None:
                # read back what the broker retained first: removed components, entities to migrate
                subs += [(self._discovery.topic, 1), (self._discovery.legacy, 1)]
                self._hold_announce = time.monotonic() + 3.0
        if subs:
            self._sub_mid = client.subscribe(subs)[1]

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._set_disconnected()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        if mid == self._offline_mid:
            self._offline_acked = True
        rid = self._handed.pop(mid, None)
        if rid is not None:
            self.spool.ack(rid)
            self.acked += 1

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if mid == self._sub_mid:  # the broker sends the retained messages right after the SUBACK
            self._hold_announce = min(self._hold_announce, time.monotonic() + 0.3)

    def _on_message(self, client, userdata, msg) -> None:
        cb = self._subs.get(msg.topic)
        if cb is not None:
            try:
                cb(msg.topic, bytes(msg.payload), bool(msg.retain))
            except Exception:
                log.exception("mqtt: handler for %s failed", msg.topic)
            return
        disc = self._discovery
        if disc is not None and msg.retain and msg.topic == disc.topic:
            if disc.merge_retained(bytes(msg.payload)):
                with self._lock:
                    self._announce = True
            return
        if disc is not None and msg.retain and msg.topic != disc.topic and msg.topic.endswith("/config"):
            if msg.payload:  # a retained per-entity message (legacy_topics matches only ours)
                with self._lock:
                    self._legacy.add(msg.topic)
                    self._announce = True
            return
        if self.discovery_prefix and msg.topic == f"{self.discovery_prefix}/status":
            if msg.payload.strip().lower() == b"online":
                log.info("mqtt: Home Assistant came online: re-announcing discovery and state")
                with self._lock:
                    self._announce = True


class MqttSink:
    """Hub output: detections (durable, per ``detections`` mode), events (durable), counts per label and per
    zone (state, on change, from the confirmed tracks; none before they are known), snapshots (live)."""

    def __init__(self, publisher: MqttPublisher, *, count_labels: dict[str, list[str]] | None = None,
                 zones: dict[str, dict[str, list[str] | None]] | None = None, retain_counts: bool = True,
                 retain_detections: bool = False, detections: str | float = "all", events: bool = True,
                 snapshots: set[str] | None = None, snapshot_interval: float = 1.0):
        from ..runtime.stats import RateMeter

        self.pub = publisher
        self.topics = publisher.topics
        self.retain_counts = retain_counts
        self.retain_detections = retain_detections
        self.detections = detections
        self.events = events
        self.snapshots = set(snapshots or ())
        self.wants_image = bool(self.snapshots)
        self.snapshot_interval = snapshot_interval
        self._last_snap: dict[str, float] = {}
        self._labels: dict[str, set[str]] = {k: set(v) for k, v in (count_labels or {}).items()}
        # per source, per zone: the labels that get a count topic (None: the source's count labels)
        self._zones: dict[str, dict[str, list[str] | None]] = zones or {}
        self._zone_labels: dict[tuple[str, str], set[str]] = {}
        self._last_det: dict[str, tuple[float, tuple]] = {}  # source -> (capture ts, label multiset) published
        self.rates: dict[str, RateMeter] = {}
        self._meter = RateMeter
        self.frames: dict[str, int] = {}
        self.last_inference_ms: dict[str, float] = {}
        self.detections_skipped = 0

    def handle(self, u: Update) -> None:
        if u.detection is not None:
            if self._detection_due(u.source, u.detection):
                self.pub.publish_durable(self.topics.detections(u.source), json_bytes(u.detection),
                                         retain=self.retain_detections)
            else:
                self.detections_skipped += 1
        if self.events:
            for e in u.events:
                self.pub.publish_durable(self.topics.events, json_bytes(e))
        if u.counts is not None:
            self._publish_counts(u.source, u.counts)
        if u.result is not None:
            self._frame_stats(u.result)
            self._snapshot(u.result, u.detection)

    def _detection_due(self, source: str, msg: dict) -> bool:
        mode = self.detections
        if mode == "all":
            return True
        if mode == "off":
            return False
        key = tuple(sorted(o["label"] for o in msg["objects"]))
        last = self._last_det.get(source)
        due = last is None or (key != last[1] if mode == "change" else msg["ts"] - last[0] >= float(mode))
        if due:
            self._last_det[source] = (msg["ts"], key)
        return due

    def _publish_counts(self, source: str, c: Counts) -> None:
        tracked = self._labels.setdefault(source, set())
        tracked.update(c.labels)
        r = self.retain_counts
        for lab in tracked:
            self.pub.set_state(self.topics.count(source, lab), str(c.labels.get(lab, 0)), retain=r)
        self.pub.set_state(self.topics.total(source), str(c.total), retain=r)
        for zone, only in self._zones.get(source, {}).items():
            per = c.zones.get(zone, {})
            zl = self._zone_labels.setdefault((source, zone), set(only if only is not None else tracked))
            zl.update(per)
            for lab in zl:
                self.pub.set_state(self.topics.zone_count(source, zone, lab), str(per.get(lab, 0)), retain=r)
            self.pub.set_state(self.topics.zone_count(source, zone), str(sum(per.values())), retain=r)

    def _frame_stats(self, r) -> None:
        self.rates.setdefault(r.source, self._meter()).tick()
        self.frames[r.source] = self.frames.get(r.source, 0) + 1
        self.last_inference_ms[r.source] = float(r.inference_ms)

    def _snapshot(self, r, msg: dict | None) -> None:
        if r.source not in self.snapshots or not (msg and msg["objects"]) or r.image is None:
            return
        now = time.monotonic()
        if now - self._last_snap.get(r.source, -1e9) >= self.snapshot_interval:
            import cv2

            ok, jpg = cv2.imencode(".jpg", r.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok and self.pub.publish_live(self.topics.snapshot(r.source), jpg.tobytes(), qos=0, retain=True):
                self._last_snap[r.source] = now

    def fps(self, source: str) -> float:
        m = self.rates.get(source)
        return round(m.rate(), 2) if m else 0.0

    def close(self) -> None:
        pass


def set_credentials(client, username: str | None, password: str | None, tls) -> None:
    """Username/password and TLS (a ``daemon.config.TLSConfig`` or None) on a paho client."""
    if username:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set(ca_certs=tls.ca, certfile=tls.cert, keyfile=tls.key, cert_reqs=ssl.CERT_REQUIRED)
        if tls.insecure:
            client.tls_insecure_set(True)
