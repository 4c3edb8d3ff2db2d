"""Bundle archives, signatures, roll-out commands and their CLI errors (no broker needed)."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from edge_ssd.daemon.config import ConfigError, parse_config
from edge_ssd.errors import UserError
from edge_ssd.fleet.archive import keygen, load_public_key, pack_bundle, sign_bundle, unpack_bundle, verify_signature
from edge_ssd.fleet.device import parse_command
from edge_ssd.model.bundle import BundleError, InputSpec, Manifest, OutputSpec, Postprocess, sha256_file, write_manifest

REPO = Path(__file__).resolve().parents[1]
EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A bundle whose model file is arbitrary bytes: archives and signatures do not look inside the model."""
    d = tmp_path / "b.bundle"
    d.mkdir()
    (d / "model.tflite").write_bytes(bytes(range(256)) * 40)
    m = Manifest(model_sha256=sha256_file(d / "model.tflite"), target="float",
                 input=InputSpec(name="input", shape=[1, 240, 320, 3]), scores=OutputSpec(name="s", shape=[1, 4, 2]),
                 boxes=OutputSpec(name="b", shape=[1, 4, 4]), postprocess=Postprocess(box_encoding="corners"),
                 labels=["bg", "face"])
    write_manifest(d, m)
    return d


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(EDGE_SSD), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_pack_is_deterministic_and_unpacks_to_the_same_files(bundle, tmp_path):
    a = pack_bundle(bundle, tmp_path / "a.tar")
    b = pack_bundle(bundle, tmp_path / "b.tar")
    assert a.sha256 == b.sha256 and a.size == b.size == a.path.stat().st_size
    out = unpack_bundle(a.path, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.tflite"]
    assert (out / "model.tflite").read_bytes() == (bundle / "model.tflite").read_bytes()


@pytest.mark.parametrize("name", ["../evil", "sub/manifest.json", "/etc/passwd"])
def test_unpack_refuses_entries_outside_the_top_level(tmp_path, name):
    arc = tmp_path / "x.tar"
    with tarfile.open(arc, "w") as tar:
        info = tarfile.TarInfo(name)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(BundleError, match="not a plain file at the top level"):
        unpack_bundle(arc, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_unpack_of_a_truncated_archive_is_a_bundle_error(bundle, tmp_path):
    p = pack_bundle(bundle, tmp_path / "a.tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(p.path.read_bytes()[: p.size // 3])
    with pytest.raises(BundleError, match="not a bundle archive"):
        unpack_bundle(cut, tmp_path / "out")


def test_sign_verify_and_tamper(bundle, tmp_path):
    (priv, pub), (_, other_pub) = keygen(tmp_path / "k", "a"), keygen(tmp_path / "k", "b")
    assert oct(priv.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(BundleError, match="not signed"):
        verify_signature(bundle, load_public_key(pub))
    sign_bundle(bundle, priv)
    verify_signature(bundle, load_public_key(pub))
    with pytest.raises(BundleError, match="does not verify"):
        verify_signature(bundle, load_public_key(other_pub))
    m = json.loads((bundle / "manifest.json").read_text())
    m["labels"] = ["bg", "person"]  # changed after signing
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="does not verify"):
        verify_signature(bundle, load_public_key(pub))


def test_keygen_never_overwrites_and_keys_are_checked(tmp_path):
    keygen(tmp_path, "k")
    with pytest.raises(UserError, match="already exists"):
        keygen(tmp_path, "k")
    with pytest.raises(UserError, match="not a PEM public key"):
        load_public_key(tmp_path / "k.key")
    (tmp_path / "junk.pub").write_text("hello\n")
    with pytest.raises(UserError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pub")


@pytest.mark.parametrize("payload, problem", [
    (b"not json", "not JSON"),
    (b"[1]", "not a JSON object"),
    (json.dumps({"url": "ftp://x/y", "sha256": "0" * 64, "version": "v1"}).encode(), "command url"),
    (json.dumps({"url": "http://x/y", "sha256": "abc", "version": "v1"}).encode(), "command sha256"),
    (json.dumps({"url": "http://x/y", "sha256": "0" * 64, "version": "../x"}).encode(), "command version"),
    (json.dumps({"url": "http://x/y", "sha256": "0" * 64}).encode(), "command version"),
])
def test_bad_commands_are_one_line(payload, problem):
    with pytest.raises(UserError, match=problem) as e:
        parse_command(payload)
    assert "\n" not in str(e.value)


def test_command_sha256_is_normalised():
    c = parse_command(json.dumps({"url": "https://h/b.tar", "sha256": "AB" * 32, "version": "2.0", "x": 1}).encode())
    assert c.sha256 == "ab" * 32 and c.version == "2.0"


BASE = "device: d1\nmodel: {bundle: m.onnx}\nsources: [{name: cam, url: '0'}]\n"


def test_rollout_config_checks(tmp_path):
    with pytest.raises(ConfigError, match="rollout.enabled: roll-out commands come over MQTT"):
        parse_config(BASE + "rollout: {enabled: true}\n", tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"c.yaml:7: rollout.public_key: file not found"):
        parse_config(BASE + "mqtt: {host: h}\nrollout:\n  enabled: true\n  public_key: /nonexistent.pub\n",
                     tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match="'all' is reserved"):
        parse_config(BASE.replace("d1", "all"), tmp_path / "c.yaml")
    ok = parse_config(BASE + "mqtt: {host: h}\nrollout: {enabled: true, dir: /x/b}\n", tmp_path / "c.yaml")
    assert ok.config.rollout.enabled and str(ok.config.rollout.resolved_dir()) == "/x/b"


def test_cli_errors_are_one_line(bundle, tmp_path):
    r = cli("push-bundle", tmp_path / "missing.bundle", "--serve", "--port", "1")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr
    r = cli("push-bundle", bundle, "--url", "http://127.0.0.1:1/b.tar", "--port", "1", "--out", tmp_path)
    assert r.returncode == 2 and "does not serve" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("sign-bundle", bundle)
    assert r.returncode == 2 and "--key" in r.stderr
    cli("keygen", tmp_path / "k")
    assert cli("sign-bundle", bundle, "--key", tmp_path / "k" / "bundle-signing.key").returncode == 0
    r = cli("sign-bundle", bundle, "--check", tmp_path / "k" / "bundle-signing.pub")
    assert r.returncode == 0 and "signature OK" in r.stdout
    r = cli("push-bundle", bundle, "--serve", "--version", "a b", "--port", "1")
    assert r.returncode == 2 and "--version" in r.stderr


def test_rollout_commands_precedence_redelivery_and_bridge_echo(tmp_path):
    """The device's own command wins over the fleet-wide one; a retained re-delivery of a failed bundle is not
    retried, a live re-publish is, and the same live command twice within the echo window counts once."""
    from edge_ssd.fleet.device import Rollout

    r = Rollout(tmp_path / "store", None, "configured.bundle")  # worker thread not started: _next() by hand
    cmd = lambda v, c: json.dumps({"url": "http://h/b.tar", "sha256": c * 64, "version": v}).encode()  # noqa: E731
    r.on_command("all")("p/all/model/set", cmd("1", "a"), True)
    assert r._next().version == "1"
    r.on_command("device")("p/d/model/set", cmd("2", "b"), True)
    assert r._next().version == "2"  # the device's own topic wins
    r.store.mark_failed("b" * 64, "rolled back")
    r.on_command("device")("p/d/model/set", cmd("2", "b"), True)  # re-delivered (reconnect)
    assert r._next() is None
    r.on_command("device")("p/d/model/set", cmd("2", "b"), False)  # pushed again
    assert r._next().version == "2"
    r.on_command("device")("p/d/model/set", cmd("2", "b"), False)  # the bridge's echo of that push
    assert r._next() is None
    r.on_command("device")("p/d/model/set", b"", True)  # cleared: the fleet-wide command applies again
    assert r._next().version == "1"
    assert [m["state"] for m in r.take_reports()] == []
    r.on_command("device")("p/d/model/set", b"{bad", False)
    (rep,) = r.take_reports()
    assert rep["state"] == "failed" and "not JSON" in rep["reason"]
