"""MQTT topic layout (schema 1); see docs/mqtt.md. Everything lives under ``<prefix>/<device>/``."""

from __future__ import annotations

from dataclasses import dataclass

from .messages import slug


@dataclass(frozen=True)
class Topics:
    prefix: str = "edge-ssd"
    device: str = "edge"

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device}"

    @property
    def available(self) -> str:  # retained "online" / "offline" (offline is the broker's last will)
        return f"{self.base}/available"

    @property
    def stats(self) -> str:  # periodic JSON
        return f"{self.base}/stats"

    @property
    def events(self) -> str:  # JSON per tracked-object event (new / update / end), every source
        return f"{self.base}/events"

    def detections(self, source: str) -> str:  # JSON per processed frame
        return f"{self.base}/{source}/detections"

    def count(self, source: str, label: str) -> str:  # retained integer: confirmed tracks of label, on change
        return f"{self.base}/{source}/{slug(label)}/count"

    def total(self, source: str) -> str:  # retained integer: all confirmed tracks of the source
        return f"{self.base}/{source}/count"

    def zone_count(self, source: str, zone: str, label: str | None = None) -> str:  # retained integer
        tail = f"/{slug(label)}" if label is not None else ""
        return f"{self.base}/{source}/zones/{zone}{tail}/count"

    def status(self, source: str) -> str:  # retained JSON: state, fps, inference_ms, frames ...
        return f"{self.base}/{source}/status"

    def snapshot(self, source: str) -> str:  # JPEG bytes of the latest frame with objects
        return f"{self.base}/{source}/snapshot"

    @property
    def model_set(self) -> str:  # retained roll-out command for this device (docs/fleet.md)
        return f"{self.base}/model/set"

    @property
    def fleet_model_set(self) -> str:  # retained roll-out command for every device under the prefix
        return f"{self.prefix}/all/model/set"

    @property
    def model_state(self) -> str:  # retained JSON: downloading / verifying / active / rolled-back / failed
        return f"{self.base}/model/state"

    def subscription(self) -> str:
        return f"{self.base}/#"
