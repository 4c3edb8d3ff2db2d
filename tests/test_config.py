"""Daemon config: validation with YAML line numbers, secrets, `edge-ssd config check`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_ssd.daemon.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
EXE = str(REPO / ".venv" / "bin" / "edge-ssd")

GOOD = """\
device: pi-1
model:
  bundle: /models/ssd
sources:
  - name: front
    url: rtsp://u:p@cam/stream
    labels: {include: [person], exclude: []}
  - name: back
    url: /dev/video0
    score_threshold: 0.3
mqtt:
  host: broker.lan
  username: edge
"""


def problems(text: str, env=None) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        parse_config(text, "cfg.yaml", env=env or {})
    return ei.value.problems


def test_good_config_defaults():
    c = parse_config(GOOD, "cfg.yaml", env={}).config
    assert c.mqtt.qos == 1 and c.mqtt.topic_prefix == "edge-ssd" and c.mqtt.port == 1883
    assert c.homeassistant.enabled and c.homeassistant.discovery_prefix == "homeassistant"
    assert c.sources[1].score_threshold == 0.3 and c.sources[0].labels.allows("person")
    assert not c.sources[0].labels.allows("car")
    assert c.client_id().startswith("edge-ssd-pi-1-") and c.client_id() == c.client_id()
    assert not c.stdout_enabled  # mqtt configured -> stdout off by default


def test_unknown_key_names_key_and_line():
    text = GOOD.replace("    score_threshold: 0.3\n", "    score_treshold: 0.3\n")
    assert problems(text) == ["cfg.yaml:10: sources[1].score_treshold: unknown key (remove it or check the "
                              "spelling; see deploy/config.example.yaml)"]


def test_bad_values_and_missing_keys_each_with_line():
    text = GOOD.replace("  username: edge\n", "  qos: 3\n  port: 99999\n").replace("  bundle: /models/ssd\n",
                                                                                   "  threads: 2\n")
    p = problems(text)
    assert p[0].startswith("cfg.yaml:2: model.bundle: required key is missing")
    assert any(x.startswith("cfg.yaml:13: mqtt.qos: Input should be 0, 1 or 2") for x in p)
    assert any(x.startswith("cfg.yaml:14: mqtt.port:") for x in p)


def test_duplicate_source_and_bad_name():
    text = GOOD.replace("name: back", "name: front")
    assert "duplicate source name 'front'" in problems(text)[0]
    assert problems(GOOD.replace("name: back", "name: 'back door'"))[0].startswith("cfg.yaml:8: sources[1].name:")


def test_yaml_syntax_error_line():
    p = problems(GOOD + "  bad: [unclosed\n")
    assert p[0].startswith("cfg.yaml:15: (yaml):") or p[0].startswith("cfg.yaml:14: (yaml):")


def test_password_file_and_env_override(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nignored\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "  password_file: pw\n")
    assert load_config(cfg, env={}).password == "s3cret"  # relative to the config file
    assert load_config(cfg, env={"EDGE_SSD_MQTT_PASSWORD": "fromenv"}).password == "fromenv"
    assert load_config(cfg, env={"EDGE_SSD_MQTT_HOST": "other"}).config.mqtt.host == "other"
    cfg.write_text(GOOD + "  password_file: missing-file\n")
    with pytest.raises(ConfigError) as ei:
        load_config(cfg, env={})
    assert ei.value.problems[0].startswith(f"{cfg}:14: mqtt.password_file: cannot read")


def test_spool_dir_from_state_directory(monkeypatch):
    c = parse_config(GOOD, env={}).config
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/edge-ssd")
    assert str(c.spool.resolved_dir()) == "/var/lib/edge-ssd/spool"
    monkeypatch.delenv("STATE_DIRECTORY")
    assert str(c.spool.resolved_dir()) == "/var/lib/edge-ssd/spool"


def test_cli_check_example_config_passes(tmp_path):
    # the example names a password_file relative to its directory: give it one beside a copy
    ex = tmp_path / "config.yaml"
    ex.write_text((REPO / "deploy" / "config.example.yaml").read_text())
    (tmp_path / "mqtt-password").write_text("x\n")
    r = subprocess.run([EXE, "config", "check", str(ex)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "device: pi-garage" in r.stdout and "user:pass" not in r.stdout  # credentials in URLs masked


def test_cli_check_bad_config_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD + "  prot: 1883\nextra_section: {}\n")
    r = subprocess.run([EXE, "config", "check", str(bad)], capture_output=True, text=True)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert lines == [f"{bad}:14: mqtt.prot: unknown key (remove it or check the spelling; see "
                     "deploy/config.example.yaml)",
                     f"{bad}:15: extra_section: unknown key (remove it or check the spelling; see "
                     "deploy/config.example.yaml)"]
