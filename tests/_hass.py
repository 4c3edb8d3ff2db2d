"""A real Home Assistant core for integration tests: the venv from scripts/setup-ha.sh (cached), a config dir
with the MQTT integration's config entry written into ``.storage``, started with ``--skip-pip`` on a test
broker; its device / entity registries, recorder database and log read back."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path

from _broker import REPO, free_port

SETUP = REPO / "scripts" / "setup-ha.sh"


def ha_venv() -> Path:
    """Build (first time: minutes) or find the cached venv; its path."""
    r = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        raise RuntimeError(f"scripts/setup-ha.sh failed: {r.stderr[-2000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def ha_version(venv: Path) -> tuple[int, int]:
    out = subprocess.run([str(venv / "bin" / "python"), "-c", "import homeassistant.const as c; print(c.__version__)"],
                         capture_output=True, text=True, check=True).stdout.strip()
    year, month = out.split(".")[:2]
    return int(year), int(month)


def slugify(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


CONFIGURATION = """\
homeassistant:
  name: edge-ssd test
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
  language: en
http:
  server_port: {http_port}
recorder:
  db_url: sqlite:///{db}
  commit_interval: 1
logger:
  default: warning
"""


class HomeAssistant:
    def __init__(self, venv: Path, config_dir: Path, broker_port: int):
        self.venv = venv
        self.dir = Path(config_dir)
        self.db = self.dir / "home-assistant_v2.db"
        self.log = self.dir / "home-assistant.log"
        self.proc: subprocess.Popen | None = None
        self.old_logs: list[str] = []  # the logs of earlier runs (Home Assistant rotates its log at start)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "configuration.yaml").write_text(CONFIGURATION.format(http_port=free_port(), db=self.db))
        self._write_mqtt_entry(broker_port)

    def _write_mqtt_entry(self, port: int) -> None:
        """The MQTT config entry, as the UI's config flow stores it (entry version 1.2: options separate)."""
        storage = self.dir / ".storage"
        storage.mkdir(exist_ok=True)
        now = "2026-01-01T00:00:00+00:00"
        entry = {"entry_id": uuid.uuid4().hex, "version": 1, "minor_version": 2, "domain": "mqtt",
                 "title": "127.0.0.1", "data": {"broker": "127.0.0.1", "port": port},
                 "options": {"discovery": True, "discovery_prefix": "homeassistant"}, "pref_disable_new_entities":
                 False, "pref_disable_polling": False, "source": "user", "unique_id": None, "disabled_by": None,
                 "discovery_keys": {}, "created_at": now, "modified_at": now, "subentries": []}
        (storage / "core.config_entries").write_text(json.dumps(
            {"version": 1, "minor_version": 5, "key": "core.config_entries", "data": {"entries": [entry]}}))

    def start(self) -> HomeAssistant:
        logf = open(self.dir / "hass.stdout", "a")
        self.proc = subprocess.Popen([str(self.venv / "bin" / "hass"), "-c", str(self.dir), "--skip-pip",
                                      "--log-file", str(self.log)], stdout=logf, stderr=logf,
                                     env={**os.environ, "PYTHONPATH": ""})
        return self

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM: Home Assistant writes its registries and the recorder's last states on the way out."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            if self.log.exists():
                self.old_logs.append(self.log.read_text())
        self.proc = None

    # -- read back ---------------------------------------------------------------------------------------------
    def registry(self, name: str) -> dict:
        p = self.dir / ".storage" / name
        return json.loads(p.read_text())["data"] if p.exists() else {}

    def states(self, since: float = 0.0) -> dict[str, list[str | None]]:
        """entity_id -> states in the order recorded (the recorder commits every second)."""
        if not self.db.exists():
            return {}
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute("SELECT m.entity_id, s.state FROM states s JOIN states_meta m "
                               "ON s.metadata_id = m.metadata_id WHERE s.last_updated_ts >= ? "
                               "ORDER BY s.last_updated_ts, s.state_id", (since,)).fetchall()
        except sqlite3.OperationalError:  # the schema is still being created
            return {}
        finally:
            con.close()
        out: dict[str, list[str | None]] = {}
        for entity_id, state in rows:
            out.setdefault(entity_id, []).append(state)
        return out

    def log_problems(self) -> list[str]:
        """WARNING / ERROR / CRITICAL records of every run's log (each with its continuation lines)."""
        texts = self.old_logs + ([self.log.read_text()] if self.proc is not None and self.log.exists() else [])
        out: list[str] = []
        for line in "\n".join(texts).splitlines():
            m = re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ (\w+) ", line)
            if m:
                if m.group(1) in ("WARNING", "ERROR", "CRITICAL"):
                    out.append(line)
            elif out and line.strip():
                out[-1] += "\n" + line
        return out

    def wait_online(self, collector, timeout: float = 240.0) -> bool:
        """Home Assistant's MQTT birth message (``homeassistant/status`` = online) after this start."""
        n = len(collector.on("homeassistant/status"))
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if collector.on("homeassistant/status")[n:].count(b"online"):
                return True
            if self.proc is not None and self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log.exists() else ""
                raise RuntimeError(f"Home Assistant exited: {tail}")
            time.sleep(0.2)
        return False
