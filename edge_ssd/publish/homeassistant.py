"""Home Assistant MQTT device discovery.

Per source: an ``occupancy`` binary_sensor (any object passing the source's filters), one ``count`` sensor per
configured label, and diagnostic sensors (status, FPS, inference ms). Per device: a spool backlog sensor. All
share one device block (identifiers ``edge_ssd_<device>``) and the availability topic, and have stable
``unique_id`` values, so re-announcing is idempotent. The publisher re-announces after every (re)connect and
whenever ``<discovery_prefix>/status`` goes ``online`` (Home Assistant restarted).
"""

from __future__ import annotations

from .. import __version__
from ..daemon.config import Config
from .messages import json_bytes, slug
from .topics import Topics


def labels_for_source(cfg: Config, source_index: int, model_labels: list[str] | None = None) -> list[str]:
    """Labels that get a count sensor: homeassistant.labels, else the source's include list, else the model's
    labels (background excluded), minus the source's exclude list."""
    src = cfg.sources[source_index]
    if cfg.homeassistant.labels is not None:
        labels = list(cfg.homeassistant.labels)
    elif src.labels.include is not None:
        labels = list(src.labels.include)
    else:
        labels = [x for x in (model_labels or []) if x.upper() not in ("BACKGROUND", "__BACKGROUND__")]
    return [x for x in labels if src.labels.allows(x)]


def discovery_messages(cfg: Config, topics: Topics, model_labels: list[str] | None = None,
                       model_name: str = "") -> list[tuple[str, bytes]]:
    """(topic, payload) pairs, all to be published retained."""
    ha = cfg.homeassistant
    dev_id = f"edge_ssd_{slug(cfg.device)}"
    device = {"identifiers": [dev_id], "name": cfg.device, "manufacturer": "edge-ssd",
              "model": f"edge-ssd {model_name}".strip(), "sw_version": __version__}
    avail = [{"topic": topics.available, "payload_available": "online", "payload_not_available": "offline"}]
    out: list[tuple[str, bytes]] = []

    def add(component: str, object_id: str, cfg_: dict) -> None:
        uid = f"{dev_id}_{object_id}"
        payload = {"name": cfg_.pop("name"), "unique_id": uid, "object_id": uid, "device": device,
                   "availability": avail, **cfg_}
        out.append((f"{ha.discovery_prefix}/{component}/{dev_id}/{object_id}/config",
                    json_bytes(payload)))

    for i, src in enumerate(cfg.sources):
        s = slug(src.name)
        add("binary_sensor", f"{s}_occupancy", {
            "name": f"{src.name} occupancy", "device_class": "occupancy", "state_topic": topics.total(src.name),
            "value_template": "{{ 'ON' if (value | int(0)) > 0 else 'OFF' }}"})
        add("sensor", f"{s}_count", {
            "name": f"{src.name} objects", "state_topic": topics.total(src.name), "state_class": "measurement",
            "unit_of_measurement": "objects", "icon": "mdi:counter"})
        for label in labels_for_source(cfg, i, model_labels):
            add("sensor", f"{s}_{slug(label)}_count", {
                "name": f"{src.name} {label} count", "state_topic": topics.count(src.name, label),
                "state_class": "measurement", "unit_of_measurement": "objects", "icon": "mdi:counter"})
        st = topics.status(src.name)
        add("sensor", f"{s}_status", {
            "name": f"{src.name} status", "state_topic": st, "value_template": "{{ value_json.state }}",
            "entity_category": "diagnostic", "icon": "mdi:cctv"})
        add("sensor", f"{s}_fps", {
            "name": f"{src.name} FPS", "state_topic": st, "value_template": "{{ value_json.fps }}",
            "unit_of_measurement": "fps", "state_class": "measurement", "entity_category": "diagnostic"})
        add("sensor", f"{s}_inference_ms", {
            "name": f"{src.name} inference", "state_topic": st, "value_template": "{{ value_json.inference_ms }}",
            "unit_of_measurement": "ms", "state_class": "measurement", "entity_category": "diagnostic",
            "icon": "mdi:timer-outline"})
    add("sensor", "spool_queued", {
        "name": "spool backlog", "state_topic": topics.stats, "value_template": "{{ value_json.spool.queued }}",
        "unit_of_measurement": "messages", "state_class": "measurement", "entity_category": "diagnostic"})
    return out
