"""Home Assistant MQTT device discovery (Home Assistant 2024.11 and later).

One retained message per daemon on ``<discovery_prefix>/device/edge_ssd_<device>/config`` carries the device
(``dev``), the origin (``o``: name, sw_version, support_url), the shared availability (``avty``) and the
components (``cmps``). Per source: an occupancy ``binary_sensor`` for any object and one per count label, the
object count and one count ``sensor`` per label, the same per zone, an ``image`` of the snapshot topic when
``snapshot: true``, and diagnostics (status as an ``enum`` sensor, FPS, inference time as a ``duration`` in
ms); per device: the spool backlog. Every component has a stable ``unique_id`` (``edge_ssd_<device>_<key>``) and a
``default_entity_id`` (``<platform>.edge_ssd_<device>_<key>``); ``object_id`` (deprecated in Home Assistant
2025.10) is never sent. The component keys are the object ids of the earlier per-entity discovery, so the
discovery ids, unique ids and entity ids of an upgraded install stay the same.

Removal: a component that the retained device message on the broker has and the current config does not (a
source or a label was removed) is announced as ``{"p": <platform>}``, which makes Home Assistant remove it;
an empty retained message removes the whole device (``edge-ssd ha remove``, ``deploy/install.sh --uninstall``).

Values that are not known yet are never sent: counts appear with the first processed frame, the
``starting`` status carries ``fps``/``inference_ms`` as null (shown as unknown), and every template tests
the fields it reads, so no payload of ours makes Home Assistant log a template warning.
"""

from __future__ import annotations

import json
from typing import Any

from .. import SUPPORT_URL, __version__
from ..capture.base import STATUSES
from ..daemon.config import Config
from ..model.labels import is_background
from .messages import json_bytes, slug
from .topics import Topics

# what a source's status topic can say (capture states, "ok" published as "streaming", plus "starting")
SOURCE_STATES: tuple[str, ...] = ("starting", *("streaming" if s == "ok" else s for s in STATUSES))


def device_id(device: str) -> str:
    return f"edge_ssd_{slug(device)}"


def device_topic(discovery_prefix: str, device: str) -> str:
    return f"{discovery_prefix}/device/{device_id(device)}/config"


def legacy_topics(discovery_prefix: str, device: str) -> str:
    """Subscription matching the per-entity discovery topics that edge-ssd 0.1 published."""
    return f"{discovery_prefix}/+/{device_id(device)}/+/config"


def labels_for_source(cfg: Config, source_index: int, model_labels: list[str] | None = None) -> list[str]:
    """Labels that get count and occupancy entities: homeassistant.labels, else the source's include list,
    else the model's labels (background excluded), minus the source's exclude list."""
    src = cfg.sources[source_index]
    if cfg.homeassistant.labels is not None:
        labels = list(cfg.homeassistant.labels)
    elif src.labels.include is not None:
        labels = list(src.labels.include)
    else:
        labels = [x for x in (model_labels or []) if not is_background(x)]
    return [x for x in labels if src.labels.allows(x)]


def _field(name: str) -> str:
    """Template reading one JSON field; '' (ignored by Home Assistant) when it is absent, None -> unknown."""
    return f"{{{{ value_json.{name} if value_json.{name} is defined else '' }}}}"


OCCUPIED = "{{ 'ON' if (value | int(0)) > 0 else 'OFF' }}"
COUNT = {"state_class": "measurement", "icon": "mdi:counter"}  # no unit: Home Assistant's convention for counts


def _source_components(cfg: Config, i: int, topics: Topics, labels: list[str]) -> dict[str, dict[str, Any]]:
    src = cfg.sources[i]
    s, n = slug(src.name), src.name
    out: dict[str, dict[str, Any]] = {
        f"{s}_occupancy": {"p": "binary_sensor", "name": f"{n} occupancy", "device_class": "occupancy",
                           "state_topic": topics.total(n), "value_template": OCCUPIED},
        f"{s}_count": {"p": "sensor", "name": f"{n} objects", "state_topic": topics.total(n), **COUNT},
    }
    for label in labels:
        ls = slug(label)
        out[f"{s}_{ls}_occupancy"] = {"p": "binary_sensor", "name": f"{n} {label} occupancy",
                                      "device_class": "occupancy", "state_topic": topics.count(n, label),
                                      "value_template": OCCUPIED}
        out[f"{s}_{ls}_count"] = {"p": "sensor", "name": f"{n} {label} count",
                                  "state_topic": topics.count(n, label), **COUNT}
    for z in src.zones:  # a zone: its occupancy and count, and a count per label it is limited to
        zs = f"{s}_{slug(z.name)}_zone"
        out[f"{zs}_occupancy"] = {"p": "binary_sensor", "name": f"{n} {z.name} occupancy",
                                  "device_class": "occupancy", "state_topic": topics.zone_count(n, z.name),
                                  "value_template": OCCUPIED}
        out[f"{zs}_count"] = {"p": "sensor", "name": f"{n} {z.name} objects",
                              "state_topic": topics.zone_count(n, z.name), **COUNT}
        for label in z.labels or []:
            out[f"{zs}_{slug(label)}_count"] = {"p": "sensor", "name": f"{n} {z.name} {label} count",
                                                "state_topic": topics.zone_count(n, z.name, label), **COUNT}
    if src.snapshot:
        out[f"{s}_snapshot"] = {"p": "image", "name": f"{n} snapshot", "image_topic": topics.snapshot(n),
                                "content_type": "image/jpeg"}
    st = topics.status(n)
    diag = {"state_topic": st, "entity_category": "diagnostic"}
    out[f"{s}_status"] = {"p": "sensor", "name": f"{n} status", "device_class": "enum",
                          "options": list(SOURCE_STATES), "icon": "mdi:cctv", **diag,
                          "value_template": "{{ value_json.state if value_json.state is defined and "
                                            f"value_json.state in {list(SOURCE_STATES)} else None }}}}"}
    out[f"{s}_fps"] = {"p": "sensor", "name": f"{n} FPS", "unit_of_measurement": "fps",
                       "state_class": "measurement", "suggested_display_precision": 1,
                       "value_template": _field("fps"), **diag}
    out[f"{s}_inference_ms"] = {"p": "sensor", "name": f"{n} inference", "device_class": "duration",
                                "unit_of_measurement": "ms", "state_class": "measurement",
                                "suggested_display_precision": 1, "value_template": _field("inference_ms"),
                                **diag}
    return out


def components(cfg: Config, topics: Topics, model_labels: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The ``cmps`` of the device message: key -> component config (``p`` is the platform)."""
    dev = device_id(cfg.device)
    out: dict[str, dict[str, Any]] = {}
    for i in range(len(cfg.sources)):
        out.update(_source_components(cfg, i, topics, labels_for_source(cfg, i, model_labels)))
    out["spool_queued"] = {
        "p": "sensor", "name": "spool backlog", "state_topic": topics.stats, "state_class": "measurement",
        "entity_category": "diagnostic", "icon": "mdi:tray-full",
        "value_template": "{{ value_json.spool.queued if value_json.spool is defined and "
                          "value_json.spool.queued is defined else '' }}"}
    for key, c in out.items():
        c["unique_id"] = f"{dev}_{key}"
        c["default_entity_id"] = f"{c['p']}.{dev}_{key}"
    return out


def device_payload(cfg: Config, topics: Topics, model_labels: list[str] | None = None,
                   model_name: str = "") -> dict[str, Any]:
    ha = cfg.homeassistant
    return {
        "dev": {"identifiers": [device_id(cfg.device)], "name": cfg.device, "manufacturer": "edge-ssd",
                "model": f"edge-ssd {model_name}".strip(), "sw_version": __version__},
        "o": {"name": "edge-ssd", "sw_version": __version__, "support_url": ha.support_url or SUPPORT_URL},
        "avty": [{"topic": topics.available, "payload_available": "online", "payload_not_available": "offline"}],
        "qos": 1,
        "cmps": components(cfg, topics, model_labels),
    }


class DeviceDiscovery:
    """The daemon's retained device message, merged with what the broker retained from an earlier run."""

    def __init__(self, topic: str, legacy: str, payload: dict[str, Any]):
        self.topic = topic
        self.legacy = legacy  # subscription matching this device's per-entity topics of edge-ssd 0.1
        self.payload = payload
        self.removed: dict[str, dict[str, str]] = {}  # key -> {"p": platform}: components to remove

    @classmethod
    def for_config(cls, cfg: Config, topics: Topics, model_labels: list[str] | None = None,
                   model_name: str = "") -> DeviceDiscovery:
        prefix = cfg.homeassistant.discovery_prefix
        return cls(device_topic(prefix, cfg.device), legacy_topics(prefix, cfg.device),
                   device_payload(cfg, topics, model_labels, model_name))

    def message(self) -> bytes:
        if not self.removed:
            return json_bytes(self.payload)
        return json_bytes({**self.payload, "cmps": {**self.removed, **self.payload["cmps"]}})

    def merge_retained(self, raw: bytes) -> bool:
        """Note the components of the retained message ``raw`` that this config no longer has (and the removals
        it still carries, so a Home Assistant that was offline removes them too). True if ``message()``
        changed."""
        try:
            old = json.loads(raw) if raw else {}
            cmps = old.get("cmps", old.get("components", {})) if isinstance(old, dict) else {}
        except ValueError:
            return False
        if not isinstance(cmps, dict):
            return False
        before = dict(self.removed)
        for key, c in cmps.items():
            platform = c.get("p", c.get("platform")) if isinstance(c, dict) else None
            if key not in self.payload["cmps"] and isinstance(platform, str):
                self.removed[key] = {"p": platform}
        return self.removed != before
