"""The daemon's configuration: one YAML file, validated with pydantic v2 (``extra="forbid"``).

Errors name the key path AND the YAML line (``config.yaml:12: mqtt.prot: unknown key``): the file is composed
with PyYAML's node API, which keeps a start mark for every mapping key and sequence item, and pydantic's error
locations are mapped back onto those marks.

Secrets never need to live in the file:
  - ``mqtt.password_file``: a file holding the password (first line, stripped); relative paths are resolved
    against the config file's directory; ``$CREDENTIALS_DIRECTORY`` (systemd ``LoadCredential=``) and other
    environment variables are expanded.
  - environment overrides (applied before validation, so they are validated too):
    ``EDGE_SSD_MQTT_PASSWORD``, ``EDGE_SSD_MQTT_USERNAME``, ``EDGE_SSD_MQTT_HOST``, ``EDGE_SSD_MQTT_PORT``.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import UserError
from ..publish.scene import LabelRule, SourceRules, Zone
from ..publish.tracker import TrackerSettings
from ..redact import MASK, mask
from ..runtime.backends import BackendChoice

NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
DEFAULT_SPOOL_DIR = "/var/lib/edge-ssd/spool"
DEFAULT_BUNDLE_DIR = "/var/lib/edge-ssd/bundles"
ENV_OVERRIDES = {
    "EDGE_SSD_MQTT_PASSWORD": ("mqtt", "password"),
    "EDGE_SSD_MQTT_USERNAME": ("mqtt", "username"),
    "EDGE_SSD_MQTT_HOST": ("mqtt", "host"),
    "EDGE_SSD_MQTT_PORT": ("mqtt", "port"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelConfig(_Strict):
    bundle: str = Field(description="bundle directory (manifest.json + model.tflite) or an .onnx/.tflite file")
    labels: str | None = Field(default=None, description="labels file (one per line, BACKGROUND first) for a "
                               "bare .onnx/.tflite without labels; a bundle carries its own")
    threads: int = Field(default=2, ge=1, le=64)
    backend: BackendChoice = "auto"
    # which Coral the Edge TPU delegate opens (libedgetpu's "device" option): usb, usb:N, pci, pci:N; None: the first
    edgetpu_device: str | None = Field(default=None, description="Coral to use: usb, usb:0, pci, pci:0")

    @field_validator("edgetpu_device")
    @classmethod
    def _edgetpu_device(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"(usb|pci)(:\d+)?", v):
            raise ValueError(f"{v!r} is not an Edge TPU device: use usb, usb:N, pci or pci:N (N from 0)")
        return v


class LabelFilter(_Strict):
    include: list[str] | None = None  # None = every label of the model
    exclude: list[str] = Field(default_factory=list)

    def allows(self, label: str) -> bool:
        if self.include is not None and label not in self.include:
            return False
        return label not in self.exclude


class ObjectFilter(_Strict):
    """Per-label filter (like Frigate's ``objects.filters``): applied before tracking, counts and every sink."""
    min_score: float | None = Field(default=None, ge=0.0, le=1.0, description="drop detections scoring below")
    min_area: float | None = Field(default=None, ge=0.0, le=1.0,
                                   description="drop boxes smaller than this fraction of the frame's area")


class ZoneConfig(_Strict):
    """A polygon in normalised image coordinates (0..1, x right, y down); an object is in the zone when the
    bottom centre of its box is inside. Each zone has its own occupancy and counts."""
    name: str = Field(pattern=NAME_RE)
    polygon: list[tuple[float, float]] = Field(min_length=3, description="[[x, y], ...] corners, 0..1")
    labels: list[str] | None = Field(default=None, description="count only these labels (default: all)")

    @field_validator("polygon")
    @classmethod
    def _normalised(cls, v: list[tuple[float, float]]) -> list[tuple[float, float]]:
        for x, y in v:
            if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
                raise ValueError(f"point [{x}, {y}] is outside 0..1; zones use normalised coordinates "
                                 "(pixel x / width, pixel y / height)")
        return v


class SourceConfig(_Strict):
    name: str = Field(pattern=NAME_RE)
    url: str = Field(min_length=1, description="camera index, device path, file, glob, rtsp:// or http:// URL")
    score_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    labels: LabelFilter = Field(default_factory=LabelFilter)
    max_fps: float | None = Field(default=None, gt=0)
    max_frame_age: float | None = Field(default=None, gt=0, description="seconds; older frames are skipped")
    snapshot: bool = False
    loop: bool = False  # for file sources: start again at the end (soak tests, demos)
    realtime: bool | None = None  # files: pace at the file's FPS (default: on for looping files)
    filters: dict[str, ObjectFilter] = Field(default_factory=dict, description="per label: min_score, min_area")
    zones: list[ZoneConfig] = Field(default_factory=list)

    @field_validator("zones")
    @classmethod
    def _unique_zones(cls, v: list[ZoneConfig]) -> list[ZoneConfig]:
        names = [z.name for z in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate zone name(s) {', '.join(dup)}")
        return v


class TLSConfig(_Strict):
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    insecure: bool = False  # skip hostname verification (self-signed test brokers only)

    @model_validator(mode="after")
    def _pair(self) -> TLSConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be given together")
        return self


class RetainConfig(_Strict):
    counts: bool = True
    status: bool = True
    stats: bool = False
    detections: bool = False


class ExpiryConfig(_Strict):
    """Seconds after which a spooled message is stale: never sent later than that (dropped from the spool and
    counted in ``stats.spool.dropped_expired``); with ``protocol: 5`` the broker gets the rest as the message
    expiry interval, so it does not hand it to an offline subscriber later either. None: no expiry."""
    detections: float | None = Field(default=None, gt=0)
    events: float | None = Field(default=None, gt=0)


class MqttConfig(_Strict):
    host: str = Field(min_length=1)
    port: int = Field(default=1883, ge=1, le=65535)
    tls: TLSConfig | None = None
    username: str | None = None
    password: str | None = None  # prefer password_file or EDGE_SSD_MQTT_PASSWORD
    password_file: str | None = None
    client_id: str | None = None  # default: edge-ssd-<device>-<random>
    keepalive: int = Field(default=30, ge=5, le=3600)
    qos: Literal[0, 1, 2] = 1
    topic_prefix: str = Field(default="edge-ssd", pattern=r"^[^#+]+$")
    retain: RetainConfig = Field(default_factory=RetainConfig)
    reconnect_min_delay: float = Field(default=1.0, gt=0)
    reconnect_max_delay: float = Field(default=60.0, gt=0)
    inflight: int = Field(default=100, ge=1, le=65535, description="unacknowledged QoS>=1 messages in flight")
    protocol: Literal[4, 5] = Field(default=4, description="MQTT 3.1.1 (4) or MQTT 5 (5)")
    detections: Literal["all", "change", "off"] | float = Field(
        default="all", description="the per-frame detections topic: every frame (all), when the objects per "
        "label change (change), off, or a number: at most every N seconds")
    events: bool = Field(default=True, description="publish <prefix>/<device>/events (new / update / end)")
    expiry: ExpiryConfig = Field(default_factory=ExpiryConfig)

    @field_validator("detections")
    @classmethod
    def _detections(cls, v: str | float) -> str | float:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("a number of seconds must be > 0 (or use all, change, off)")
        return v

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if not v:
            raise ValueError("must not be empty")
        return v


class SpoolConfig(_Strict):
    dir: str | None = None  # default: $STATE_DIRECTORY/spool or /var/lib/edge-ssd/spool
    max_bytes: int = Field(default=256 * 1024 * 1024, ge=4096)
    max_age: float = Field(default=7 * 24 * 3600.0, gt=0, description="seconds")
    fsync: Literal["always", "normal"] = "normal"
    reserve_bytes: int = Field(default=1 << 20, ge=0, description="ballast released when the disk fills up")

    def resolved_dir(self) -> Path:
        if self.dir:
            return Path(os.path.expandvars(self.dir)).expanduser()
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0]) / "spool"
        return Path(DEFAULT_SPOOL_DIR)


class HomeAssistantConfig(_Strict):
    enabled: bool = True
    discovery_prefix: str = Field(default="homeassistant", pattern=r"^[^#+]+$")
    labels: list[str] | None = None  # count sensors for these labels (default: the sources' include lists)
    support_url: str | None = Field(default=None, pattern=r"^https?://", description="origin support URL shown "
                                    "by Home Assistant (default: the project's)")


class TrackingConfig(_Strict):
    """The object tracker behind events, counts and occupancy (IoU + centre-distance association per source and
    label; counts are the confirmed tracks in view)."""
    iou: float = Field(default=0.3, gt=0.0, lt=1.0, description="minimum IoU to continue a track")
    centre_gate: float = Field(default=2.5, ge=0.0, le=10.0, description="else continue a track whose centre is "
                               "within this many box sizes (small, jittery boxes); 0: IoU only")
    hold_frames: int = Field(default=1, ge=0, description="a missed object keeps counting for this many frames "
                             "(unless another detection is where it was)")
    confirm_frames: int = Field(default=2, ge=1, description="frames seen before a track counts (and 'new')")
    end_frames: int = Field(default=10, ge=1, description="frames unseen after which a track ends")
    end_seconds: float = Field(default=2.0, gt=0, description="seconds unseen after which a track ends")
    update_interval: float = Field(default=5.0, gt=0, description="at most one periodic 'update' per track")


class MetricsConfig(_Strict):
    port: int = Field(ge=1, le=65535, description="Prometheus /metrics on this port")
    host: str = Field(default="127.0.0.1", description="address to listen on (localhost by default)")


class FileSinkConfig(_Strict):
    path: str
    max_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    backups: int = Field(default=3, ge=0, le=100)


class SinksConfig(_Strict):
    stdout: bool | None = None  # default: on when no mqtt section is configured
    file: FileSinkConfig | None = None


class RolloutConfig(_Strict):
    """Bundle roll-out over MQTT (docs/fleet.md): commands on <prefix>/<device>/model/set and <prefix>/all/model/set."""

    enabled: bool = False
    public_key: str | None = None  # Ed25519 PEM (edge-ssd keygen); when set, only bundles signed by it are applied
    dir: str | None = None  # default: $STATE_DIRECTORY/bundles or /var/lib/edge-ssd/bundles
    check_frames: int = Field(default=3, ge=1, le=10000, description="good frames before a new bundle is kept")
    check_timeout: float = Field(default=60.0, gt=0, description="seconds for those frames, else roll back")

    def resolved_dir(self) -> Path:
        if self.dir:
            return Path(os.path.expandvars(self.dir)).expanduser()
        state = os.environ.get("STATE_DIRECTORY")
        return Path(state.split(":")[0]) / "bundles" if state else Path(DEFAULT_BUNDLE_DIR)


class Config(_Strict):
    device: str = Field(pattern=NAME_RE)
    model: ModelConfig
    sources: list[SourceConfig] = Field(min_length=1)
    mqtt: MqttConfig | None = None
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    stats_interval: float = Field(default=30.0, gt=0, description="seconds between stats messages")
    flush_timeout: float = Field(default=10.0, ge=0, description="seconds to drain the spool on stop")
    sinks: SinksConfig = Field(default_factory=SinksConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    metrics: MetricsConfig | None = None
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("device")
    @classmethod
    def _not_all(cls, v: str) -> str:
        if v == "all":
            raise ValueError("'all' is reserved (<prefix>/all/model/set addresses every device); choose another name")
        return v

    @field_validator("sources")
    @classmethod
    def _unique(cls, v: list[SourceConfig]) -> list[SourceConfig]:
        seen: set[str] = set()
        for s in v:
            if s.name in seen:
                raise ValueError(f"duplicate source name {s.name!r}")
            seen.add(s.name)
        return v

    @property
    def stdout_enabled(self) -> bool:
        return self.sinks.stdout if self.sinks.stdout is not None else self.mqtt is None

    def client_id(self) -> str:
        if self.mqtt and self.mqtt.client_id:
            return self.mqtt.client_id
        return _default_client_id(self.device)


_CLIENT_IDS: dict[str, str] = {}


def _default_client_id(device: str) -> str:
    # stable for the process lifetime (reconnects keep the same id), unique across processes
    if device not in _CLIENT_IDS:
        _CLIENT_IDS[device] = f"edge-ssd-{device}-{secrets.token_hex(3)}"
    return _CLIENT_IDS[device]


@dataclass
class LoadedConfig:
    config: Config
    path: Path
    password: str | None  # the effective MQTT password (file > env > inline)
    warnings: list[str] = field(default_factory=list)  # "file:line: key: advice", printed by config check and run

    def summary(self) -> str:
        c = self.config
        tpu = f", Edge TPU {c.model.edgetpu_device}" if c.model.edgetpu_device else ""
        lines = [f"{self.path}: OK", f"  device: {c.device}", f"  model: {c.model.bundle} ({c.model.backend}, "
                 f"{c.model.threads} threads{tpu})"]
        for s in c.sources:
            lab = "all labels" if s.labels.include is None else ",".join(s.labels.include)
            url = mask(s.url)
            extra = "".join(f", {n} {k}" for n, k in ((len(s.filters), "filter(s)"), (len(s.zones), "zone(s)")) if n)
            lines.append(f"  source {s.name}: {url} (score>={s.score_threshold}, {lab}"
                         f"{', max ' + str(s.max_fps) + ' fps' if s.max_fps else ''}{extra})")
        if c.mqtt:
            m = c.mqtt
            auth = f", user {m.username}" if m.username else ""
            lines.append(f"  mqtt: {'mqtts' if m.tls else 'mqtt'}://{m.host}:{m.port} qos {m.qos}, prefix "
                         f"{m.topic_prefix}/{c.device}{auth}, password {'set' if self.password else 'not set'}")
            det = m.detections if isinstance(m.detections, str) else f"every {m.detections:g} s"
            lines.append(f"  topics: detections {det}, events {'on' if m.events else 'off'}, MQTT "
                         f"{'5' if m.protocol == 5 else '3.1.1'}")
            lines.append(f"  spool: {c.spool.resolved_dir()} (max {c.spool.max_bytes} bytes, {c.spool.max_age:g} s)")
            ha = c.homeassistant
            lines.append(f"  homeassistant: {'on, ' + ha.discovery_prefix if ha.enabled else 'off'}")
        if c.metrics:
            lines.append(f"  metrics: http://{c.metrics.host}:{c.metrics.port}/metrics")
        sinks = [n for n, on in (("stdout", c.stdout_enabled), ("file", c.sinks.file is not None)) if on]
        lines.append(f"  sinks: {', '.join(sinks) or 'none'}{' + mqtt' if c.mqtt else ''}")
        return "\n".join(lines)


class ConfigError(UserError):
    """Config problems; ``problems`` holds one ``file:line: key: problem`` line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more; run 'edge-ssd config check')" if len(problems) > 1 else ""
        super().__init__(problems[0] + more)


# -- YAML with line numbers -------------------------------------------------------------------------------------

def _line_map(node: yaml.Node | None, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Path tuple (keys and list indices) -> 1-based line of that key / item."""
    out = {} if out is None else out
    if node is None:
        return out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            out[path + (key,)] = k.start_mark.line + 1
            _line_map(v, path + (key,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out[path + (i,)] = item.start_mark.line + 1
            _line_map(item, path + (i,), out)
    return out


def _duplicate_keys(node: yaml.Node | None, path: tuple = ()) -> list[tuple[int, str]]:
    """(line, problem) for every mapping key given twice (PyYAML silently keeps the last one)."""
    out: list[tuple[int, str]] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for k, v in node.value:
            key = k.value if isinstance(k, yaml.ScalarNode) else str(k.value)
            line = k.start_mark.line + 1
            if key in first:
                out.append((line, f"{_fmt_loc(path + (key,))}: duplicate key (first given on line {first[key]}); "
                                  "keep one of them"))
            first.setdefault(key, line)
            out += _duplicate_keys(v, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            out += _duplicate_keys(item, path + (i,))
    return out


def _loc_line(lines: dict[tuple, int], loc: tuple) -> int:
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return 1


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _problem_text(err: Mapping[str, Any]) -> str:
    t = err["type"]
    if t == "extra_forbidden":
        return "unknown key (remove it or check the spelling; see deploy/config.example.yaml)"
    if t == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if t == "literal_error" or t.endswith("_type") or t.startswith("string_pattern"):
        msg += f" (got {err.get('input')!r})"
    if t == "string_type" and isinstance(err.get("input"), (int, float, bool)):
        msg += f"; YAML read it as a number or boolean: quote it, e.g. \"{err.get('input')}\""
    return msg


# complexity: one branch per config problem, each its own file:line message
def parse_config(text: str, path: str | Path = "<config>", env: Mapping[str, str] | None = None) -> LoadedConfig:  # noqa: C901
    """Validate config ``text``; raises ``ConfigError`` with ``file:line: key: problem`` lines."""
    path = Path(path)
    env = os.environ if env is None else env
    fname = str(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{fname}:{line}: (yaml): {problem} (fix the YAML syntax)"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{fname}:1: (top level): expected a mapping of sections (device:, model:, ...)"])
    dups = _duplicate_keys(node)
    if dups:
        raise ConfigError([f"{fname}:{line}: {text}" for line, text in dups])
    lines = _line_map(node)
    for var, (sec, key) in ENV_OVERRIDES.items():
        if env.get(var):
            section = data.get(sec)
            if isinstance(section, dict):
                section[key] = env[var]
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            loc = tuple(err["loc"])
            problems.append((_loc_line(lines, loc), f"{_fmt_loc(loc)}: {_problem_text(err)}"))
        problems.sort(key=lambda p: p[0])
        raise ConfigError([f"{fname}:{line}: {text}" for line, text in problems]) from None
    password = None
    if cfg.mqtt:
        password = cfg.mqtt.password
        if cfg.mqtt.password_file and not env.get("EDGE_SSD_MQTT_PASSWORD"):
            pf = Path(os.path.expandvars(cfg.mqtt.password_file)).expanduser()
            if not pf.is_absolute():
                pf = path.parent / pf
            line = _loc_line(lines, ("mqtt", "password_file"))
            try:
                password = pf.read_text().splitlines()[0].strip() if pf.stat().st_size else ""
            except OSError as e:
                raise ConfigError([f"{fname}:{line}: mqtt.password_file: cannot read {pf}: {e.strerror} "
                                   "(create it, readable by the edge-ssd user)"]) from None
        if cfg.mqtt.tls:
            for key in ("ca", "cert", "key"):
                v = getattr(cfg.mqtt.tls, key)
                if v and not Path(v).expanduser().is_file():
                    line = _loc_line(lines, ("mqtt", "tls", key))
                    raise ConfigError([f"{fname}:{line}: mqtt.tls.{key}: file not found: {v} (fix the path)"])
        if cfg.mqtt.password and not cfg.mqtt.username:
            line = _loc_line(lines, ("mqtt",))
            raise ConfigError([f"{fname}:{line}: mqtt.username: a password is set but no username"])
    _check_rollout(cfg, lines, fname)
    warnings = []
    if cfg.mqtt and cfg.mqtt.password and not (env or {}).get("EDGE_SSD_MQTT_PASSWORD"):
        warnings.append(f"{fname}:{_loc_line(lines, ('mqtt', 'password'))}: mqtt.password: the password is written "
                        "in the config file; move it to mqtt.password_file (mode 0640 root:edge-ssd) or "
                        "EDGE_SSD_MQTT_PASSWORD")
    return LoadedConfig(cfg, path, password, warnings)


def _check_rollout(cfg: Config, lines: dict[tuple, int], fname: str) -> None:
    r = cfg.rollout
    if r.enabled and cfg.mqtt is None:
        line = _loc_line(lines, ("rollout", "enabled"))
        raise ConfigError([f"{fname}:{line}: rollout.enabled: roll-out commands come over MQTT; add an mqtt section"])
    if r.public_key and not Path(r.public_key).expanduser().is_file():
        line = _loc_line(lines, ("rollout", "public_key"))
        raise ConfigError([f"{fname}:{line}: rollout.public_key: file not found: {r.public_key} (copy the .pub "
                           "made by `edge-ssd keygen` there)"])


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> LoadedConfig:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError([f"{p}:0: (file): cannot read config: {e.strerror} (check the --config path)"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError([f"{p}:{line}: (file): not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                           "save the file as UTF-8"]) from None
    return parse_config(text, p, env)


def config_schema() -> dict[str, Any]:
    """The config file's JSON Schema (draft 2020-12), from the models above: what ``config check`` enforces,
    except the checks that need the file system (password_file, TLS files)."""
    schema = Config.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "edge-ssd daemon config",
            **{k: v for k, v in schema.items() if k != "title"}}


def source_rules(cfg: Config) -> dict[str, SourceRules]:
    """Per source: the label filters and zones as the publishing side uses them."""
    out = {}
    for s in cfg.sources:
        rules = {lab: LabelRule(f.min_score, f.min_area) for lab, f in s.filters.items()}
        zones = tuple(Zone(z.name, tuple((float(p[0]), float(p[1])) for p in z.polygon),
                           None if z.labels is None else frozenset(z.labels)) for z in s.zones)
        out[s.name] = SourceRules(rules, zones)
    return out


def tracker_settings(cfg: Config) -> TrackerSettings:
    t = cfg.tracking
    return TrackerSettings(t.iou, t.centre_gate, t.hold_frames, t.confirm_frames, t.end_frames, t.end_seconds,
                           t.update_interval)


def as_dict(cfg: Config) -> dict[str, Any]:
    d = cfg.model_dump()
    if d.get("mqtt"):
        d["mqtt"]["password"] = MASK if d["mqtt"].get("password") else None
    return d
