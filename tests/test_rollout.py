"""Bundle roll-out end to end: real Mosquitto, real daemon subprocesses running the face model on a video, a real
HTTP server on 127.0.0.1 (edge_ssd.fleet.serve), the real float32 face bundle (onnx2tf, once per session)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from _broker import (
    FACE_LABELS,
    FACE_MODEL,
    REPO,
    Broker,
    Collector,
    have_mosquitto,
    make_face_video,
    read_jsonl,
    start_daemon,
    stderr_of,
    stop_daemon,
    write_config,
)
from _broker import wait as _wait

from edge_ssd.fleet.archive import keygen, pack_bundle, sign_bundle
from edge_ssd.fleet.push import Broker as PushBroker
from edge_ssd.fleet.push import publish
from edge_ssd.fleet.serve import BundleServer
from edge_ssd.model.bundle import load_manifest, write_manifest

pytestmark = [pytest.mark.skipif(not have_mosquitto(), reason="mosquitto not installed"),
              pytest.mark.skipif(not FACE_MODEL.exists(), reason="shared face model missing")]

EDGE_SSD = REPO / ".venv" / "bin" / "edge-ssd"
OLD_MODEL = FACE_MODEL.stem  # the model name the daemons start with (the configured ONNX model)


def wait(pred, timeout=60.0):
    return _wait(pred, timeout)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return make_face_video(tmp_path_factory.mktemp("video") / "faces.avi", frames=20)


@pytest.fixture(scope="module")
def bundle(face_bundle):
    """The session's float32 face bundle (conftest); tests copy it before changing anything."""
    return face_bundle


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return keygen(d, "good"), keygen(d, "other")


def schema(name: str):
    """A validator for docs/schemas/<name>.schema.json."""
    jsonschema = pytest.importorskip("jsonschema")
    s = json.loads((REPO / "docs" / "schemas" / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


def copy_bundle(src: Path, dst: Path, **post) -> Path:
    """A copy of ``src``, its manifest's postprocess changed by ``post`` (a different bundle, same model file)."""
    shutil.copytree(src, dst)
    m, _ = load_manifest(dst)
    write_manifest(dst, m.model_copy(update={"postprocess": m.postprocess.model_copy(update=post)}))
    return dst


def daemon_conf(tmp: Path, name: str, video: Path, port: int, public_key: Path | None = None) -> Path:
    d = tmp / name
    d.mkdir()
    conf = {
        "device": name,
        "model": {"bundle": str(FACE_MODEL), "labels": str(FACE_LABELS), "threads": 1},
        "sources": [{"name": "cam", "url": str(video), "score_threshold": 0.6, "loop": True, "max_fps": 5}],
        "mqtt": {"host": "127.0.0.1", "port": port, "keepalive": 5, "reconnect_min_delay": 0.2,
                 "reconnect_max_delay": 1.0},
        "homeassistant": {"enabled": False},
        "spool": {"dir": str(d / "spool"), "reserve_bytes": 65536},
        "rollout": {"enabled": True, "dir": str(d / "bundles"), "check_frames": 3, "check_timeout": 30,
                    **({"public_key": str(public_key)} if public_key else {})},
        "stats_interval": 5,
        "flush_timeout": 5,
        "sinks": {"file": {"path": str(d / "produced.jsonl"), "max_bytes": 1 << 30}},
    }
    return write_config(d / "c.yaml", conf)


def produced(cfg: Path) -> list[dict]:
    p = cfg.parent / "produced.jsonl"
    return read_jsonl(p) if p.exists() else []


def models(cfg: Path) -> list[str]:
    return [m["model"] for m in produced(cfg)]


def states(col: Collector, device: str) -> list[dict]:
    return col.json(f"/{device}/model/state")


def store_state(cfg: Path) -> dict:
    p = cfg.parent / "bundles" / "state.json"
    return json.loads(p.read_text()) if p.exists() else {}


def serve_archive(tmp: Path, bundle: Path, rate: float | None = None, corrupt: bool = False):
    packed = pack_bundle(bundle, tmp / "www" / f"{bundle.name}.tar")
    if corrupt:  # the server sends other bytes than the command's sha256 names (flip one byte in the model)
        data = bytearray(packed.path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        packed.path.write_bytes(bytes(data))
    server = BundleServer(packed.path.parent, "127.0.0.1", 0, rate=rate).start()
    return packed, server, f"http://127.0.0.1:{server.port}/{packed.path.name}"


def send_command(port: int, device: str, url: str, packed, version: str) -> None:
    payload = json.dumps({"url": url, "sha256": packed.sha256, "version": version, "size": packed.size}).encode()
    publish(PushBroker("127.0.0.1", port), [device], payload).disconnect()


def test_push_bundle_cli_rolls_out_to_three_daemons(tmp_path, video, bundle, keys):
    """push-bundle --serve --key: three daemons (each with the public key) download, verify and switch; the
    retained state says active; a restarted daemon starts on the rolled-out bundle."""
    (priv, pub), _ = keys
    state_schema, set_schema = schema("model-state"), schema("model-set")
    new = copy_bundle(bundle, tmp_path / "v2.bundle", score_threshold=0.65)
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/+/model/state", "edge-ssd/all/model/set"]).start()
        cfgs = [daemon_conf(tmp_path, f"dev{i}", video, b.port, pub) for i in range(3)]
        procs = [start_daemon(c) for c in cfgs]
        try:
            assert wait(lambda: all(len(produced(c)) >= 3 for c in cfgs), 120), stderr_of(cfgs[0])
            r = subprocess.run([str(EDGE_SSD), "push-bundle", str(new), "--serve", "--listen", "127.0.0.1:0",
                                "--key", str(priv), "--version", "v2", "--port", str(b.port), "--wait", "3",
                                "--timeout", "150"], capture_output=True, text=True, timeout=200)
            assert r.returncode == 0, r.stdout + r.stderr + stderr_of(cfgs[0])
            assert r.stdout.count(": active v2") == 3
            (command,) = col.json("edge-ssd/all/model/set")
            set_schema.validate(command)
            sha = store_state(cfgs[0])["active"]["sha256"]
            for c in cfgs:
                name = f"v2-{sha[:12]}"
                assert wait(lambda c=c, name=name: models(c)[-1:] == [name], 30), stderr_of(c)
                st = store_state(c)
                assert st["active"]["version"] == "v2" and st["active"]["sha256"] == sha
                assert (c.parent / "bundles" / f"{name}.bundle" / "manifest.sig").is_file()
                for s in states(col, c.parent.name):  # every report matches docs/schemas/model-state
                    state_schema.validate(s)
                seen = [s["state"] for s in states(col, c.parent.name)]
                assert seen[-1] == "active" and "downloading" in seen and "verifying" in seen
                # the switch is clean: the old model, then only the new one
                ms = models(c)
                k = ms.index(name)
                assert set(ms[:k]) == {OLD_MODEL} and set(ms[k:]) == {name}
            # a restart keeps the rolled-out bundle (state.json), and says active again for the retained command
            assert stop_daemon(procs[0]) == 0
            n = len(produced(cfgs[0]))
            procs[0] = start_daemon(cfgs[0])
            assert wait(lambda: len(produced(cfgs[0])) > n + 2, 60), stderr_of(cfgs[0])
            assert set(models(cfgs[0])[n:]) == {f"v2-{sha[:12]}"}
            late = Collector(b.port, ["edge-ssd/+/model/state"]).start()  # retained state for newcomers
            assert wait(lambda: len(late.json("/model/state")) == 3, 10)
            assert {m["state"] for m in late.json("/model/state")} == {"active"}
            late.stop()
        finally:
            for p in procs:
                stop_daemon(p)
            col.stop()


def test_corrupted_download_and_wrong_signature_are_never_applied(tmp_path, video, bundle, keys):
    (_, pub), (other_priv, _) = keys
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/+/model/state"]).start()
        cfg = daemon_conf(tmp_path, "dev", video, b.port, pub)
        p = start_daemon(cfg)
        try:
            assert wait(lambda: len(produced(cfg)) >= 3, 120), stderr_of(cfg)
            # 1. the served bytes differ from the command's sha256
            good = copy_bundle(bundle, tmp_path / "v3.bundle", score_threshold=0.66)
            sign_bundle(good, keys[0][0])
            packed, srv, url = serve_archive(tmp_path / "a", good, corrupt=True)
            packed_ok = pack_bundle(good, tmp_path / "ok.tar")
            send_command(b.port, "dev", url, packed_ok, "v3")
            assert wait(lambda: any(s["state"] == "failed" for s in states(col, "dev")), 60), stderr_of(cfg)
            fail = [s for s in states(col, "dev") if s["state"] == "failed"][-1]
            assert "sha256" in fail["reason"] and fail["version"] == "v3"
            assert not list((cfg.parent / "bundles" / "downloads").iterdir())  # the bad download is gone
            srv.stop()
            # 2. signed with another key
            forged = copy_bundle(bundle, tmp_path / "v4.bundle", score_threshold=0.67)
            sign_bundle(forged, other_priv)
            packed, srv, url = serve_archive(tmp_path / "b", forged)
            send_command(b.port, "dev", url, packed, "v4")
            assert wait(lambda: states(col, "dev")[-1]["version"] == "v4"
                        and states(col, "dev")[-1]["state"] == "failed", 60)
            assert "signature does not verify" in states(col, "dev")[-1]["reason"]
            srv.stop()
            # 3. not signed at all
            unsigned = copy_bundle(bundle, tmp_path / "v5.bundle", score_threshold=0.68)
            packed, srv, url = serve_archive(tmp_path / "c", unsigned)
            send_command(b.port, "dev", url, packed, "v5")
            assert wait(lambda: states(col, "dev")[-1]["version"] == "v5"
                        and states(col, "dev")[-1]["state"] == "failed", 60)
            assert "not signed" in states(col, "dev")[-1]["reason"]
            srv.stop()
            n = len(produced(cfg))
            assert wait(lambda: len(produced(cfg)) > n + 3, 30)
            assert p.poll() is None
        finally:
            assert stop_daemon(p) == 0
            col.stop()
    assert set(models(cfg)) == {OLD_MODEL}  # nothing else ever ran
    assert "active" not in store_state(cfg)
    assert not list((cfg.parent / "bundles").glob("*.bundle"))
    assert all(s["state"] != "active" for s in states(col, "dev"))
    for s in states(col, "dev"):
        schema("model-state").validate(s)


def test_bundle_failing_its_first_frames_is_rolled_back(tmp_path, video, bundle):
    """The manifest says 'offsets' with 10 priors: the model loads and infers, every postprocess fails; the
    daemon goes back to the previous model, reports rolled-back, and a re-delivered command is not retried."""
    bad = copy_bundle(bundle, tmp_path / "bad.bundle", box_encoding="offsets", priors=[[0.5, 0.5, 0.1, 0.1]] * 10)
    with Broker(tmp_path / "broker") as b:
        col = Collector(b.port, ["edge-ssd/+/model/state"]).start()
        cfg = daemon_conf(tmp_path, "dev", video, b.port)
        p = start_daemon(cfg)
        try:
            assert wait(lambda: len(produced(cfg)) >= 3, 120), stderr_of(cfg)
            packed, srv, url = serve_archive(tmp_path, bad)
            send_command(b.port, "dev", url, packed, "bad1")
            assert wait(lambda: any(s["state"] == "rolled-back" for s in states(col, "dev")), 90), stderr_of(cfg)
            rb = [s for s in states(col, "dev") if s["state"] == "rolled-back"][-1]
            assert "failed on the new bundle" in rb["reason"] and rb["active"]["version"] is None
            n = len(produced(cfg))
            assert wait(lambda: len(produced(cfg)) > n + 3, 30)
            assert set(models(cfg)[n:]) == {OLD_MODEL}  # the previous model runs again
            assert "rolling back" in stderr_of(cfg)
            # a broker restart re-delivers the retained command: it is not tried again
            count = len(col.messages)
            b.stop()
            b.start()
            assert wait(lambda: len(produced(cfg)) > n + 10, 30)
            assert [t for t, _, retained in col.messages[count:] if not retained] == []
            assert stderr_of(cfg).count("rollout: downloading") == 1
            srv.stop()
        finally:
            assert stop_daemon(p) == 0
            col.stop()
    assert store_state(cfg)["failed"][packed.sha256]
    assert "active" not in store_state(cfg)


def test_daemon_killed_mid_download_resumes_and_never_runs_a_partial_bundle(tmp_path, video, bundle):
    new = copy_bundle(bundle, tmp_path / "v6.bundle", score_threshold=0.69)
    packed, srv, url = serve_archive(tmp_path, new, rate=150_000)  # 1.2 MB at 150 kB/s: about 8 s
    part = lambda cfg: cfg.parent / "bundles" / "downloads" / f"{packed.sha256}.tar.part"  # noqa: E731
    with Broker(tmp_path / "broker") as b:
        cfg = daemon_conf(tmp_path, "dev", video, b.port)
        p = start_daemon(cfg)
        try:
            assert wait(lambda: len(produced(cfg)) >= 3, 120), stderr_of(cfg)
            send_command(b.port, "dev", url, packed, "v6")
            assert wait(lambda: part(cfg).exists() and part(cfg).stat().st_size > 200_000, 30), stderr_of(cfg)
            p.send_signal(signal.SIGKILL)
            p.wait()
            kept = part(cfg).stat().st_size
            assert 0 < kept < packed.size
            assert not list((cfg.parent / "bundles").glob("*.bundle"))  # nothing unpacked from a partial file
            n = len(produced(cfg))
            time.sleep(0.5)
            p = start_daemon(cfg)  # the retained command comes back; the download resumes
            name = f"v6-{packed.sha256[:12]}"
            assert wait(lambda: store_state(cfg).get("active", {}).get("sha256") == packed.sha256, 90), stderr_of(cfg)
            assert wait(lambda: models(cfg)[-1:] == [name], 10)
        finally:
            assert stop_daemon(p) == 0
            srv.stop()
    resumed = [start for f, start in srv.requests if start > 0]
    assert resumed and resumed[0] == kept  # a Range request from where it was killed
    ms = models(cfg)
    k = ms.index(name)
    assert k >= n and set(ms[:k]) == {OLD_MODEL} and set(ms[k:]) == {name}
    active = cfg.parent / "bundles" / f"{name}.bundle"
    load_manifest(active, verify=True)  # the unpacked bundle is whole (the model file's sha256 matches)
    assert not (cfg.parent / "bundles" / "downloads" / f"{packed.sha256}.tar.part").exists()
