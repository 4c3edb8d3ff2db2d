"""edge-ssd doctor: real brokers (mosquitto), a real .tflite bundle (onnx2tf) and fake sysfs trees for the hardware
that cannot exist here (USB ids, thermal zones, vcgencmd output): the parsing is tested, not mocked."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edge_ssd import doctor
from edge_ssd.doctor import FAIL, OK, SKIP, WARN
from edge_ssd.runtime.edgetpu_probe import probe_edgetpu

REPO = Path(__file__).resolve().parents[1]
ONNX2TF = REPO / "convert" / ".venv" / "bin" / "onnx2tf"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"


# ------------------------------------------------------------------------------------------------ fixtures

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_broker(tmp: Path, users: dict[str, str] | None = None):
    if not os.access(MOSQUITTO, os.X_OK):
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    port = _free_port()
    conf = [f"listener {port} 127.0.0.1", "persistence false"]
    if os.getuid() == 0:
        conf.insert(0, "user root")  # else mosquitto drops to user 'mosquitto', which cannot read tmp files
    if users:
        pw = tmp / "passwd"
        for i, (u, p) in enumerate(users.items()):
            subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if i == 0 else []), "-b", str(pw), u, p], check=True,
                           capture_output=True)
        pw.chmod(0o600)
        conf += ["allow_anonymous false", f"password_file {pw}"]
    else:
        conf += ["allow_anonymous true"]
    (tmp / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    log = open(tmp / "mosquitto.log", "w")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp / "mosquitto.conf")], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"mosquitto did not start: {(tmp / 'mosquitto.log').read_text()}")


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    proc, port = _start_broker(tmp_path_factory.mktemp("mq-anon"))
    yield port
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory):
    proc, port = _start_broker(tmp_path_factory.mktemp("mq-auth"), {"alice": "s3cret"})
    yield port
    proc.terminate()
    proc.wait(5)


def _tiny_onnx(path: Path) -> None:
    """A two-output SSD-shaped graph (scores 1x64x3 softmaxed, boxes 1x64x4) small enough to convert in seconds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(3, 3, 1, 1)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, -1, 3], dtype=np.int64), "s1"),
             numpy_helper.from_array(np.array([1, -1, 4], dtype=np.int64), "s2")]
    nodes = [helper.make_node("Conv", ["input", "w1"], ["c1"]),
             helper.make_node("Transpose", ["c1"], ["t1"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t1", "s1"], ["r1"]),
             helper.make_node("Softmax", ["r1"], ["scores"], axis=-1),
             helper.make_node("Conv", ["input", "w2"], ["c2"]),
             helper.make_node("Transpose", ["c2"], ["t2"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t2", "s2"], ["boxes"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 64, 3]),
                           helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 64, 4])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A real bundle: a .tflite converted by onnx2tf, with a manifest written from the interpreter's own I/O."""
    if not ONNX2TF.exists():
        pytest.skip("convert/.venv (onnx2tf) not set up: run scripts/setup.sh")
    from edge_ssd.model.bundle import InputSpec, Manifest, OutputSpec, Postprocess, sha256_file, write_manifest
    from edge_ssd.runtime.backends import open_backend

    work = tmp_path_factory.mktemp("tiny")
    _tiny_onnx(work / "tiny.onnx")
    r = subprocess.run([str(ONNX2TF), "-i", str(work / "tiny.onnx"), "-o", str(work / "out"), "-n"],
                       capture_output=True, text=True, cwd=work, timeout=600)
    tfl = work / "out" / "tiny_float32.tflite"
    assert r.returncode == 0 and tfl.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    d = work / "tiny.bundle"
    d.mkdir()
    shutil.copy(tfl, d / "model.tflite")
    b = open_backend(d / "model.tflite")
    outs = {o.name: o for o in b.outputs}
    m = Manifest(model_sha256=sha256_file(d / "model.tflite"), target="float",
                 input=InputSpec(name=b.input.name, shape=list(b.input.shape), layout="NHWC"),
                 scores=OutputSpec(name="scores", shape=list(outs["scores"].shape)),
                 boxes=OutputSpec(name="boxes", shape=list(outs["boxes"].shape)),
                 postprocess=Postprocess(score_fn="none", box_encoding="corners"),
                 labels=["background", "a", "b"])
    write_manifest(d, m)
    return d


@pytest.fixture
def corrupt_bundle(bundle, tmp_path) -> Path:
    d = tmp_path / "corrupt.bundle"
    shutil.copytree(bundle, d)
    data = bytearray((d / "model.tflite").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.tflite").write_bytes(bytes(data))
    return d


def _usb_dev(root: Path, name: str, vid: str, pid: str, speed: str | None) -> None:
    d = root / "sys/bus/usb/devices" / name
    d.mkdir(parents=True)
    (d / "idVendor").write_text(vid + "\n")
    (d / "idProduct").write_text(pid + "\n")
    if speed is not None:
        (d / "speed").write_text(speed + "\n")


def _write(p: Path, text: str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# ------------------------------------------------------------------------------------------- pure checks

def test_python_version_gate():
    assert doctor.check_python((3, 10, 12)).status == FAIL
    assert "3.11" in doctor.check_python((3, 10, 12)).fix + doctor.check_python((3, 10, 12)).message
    assert doctor.check_python((3, 11, 2)).status == OK
    assert doctor.check_python((3, 13, 5)).status == OK
    assert doctor.check_python().status == OK  # this interpreter (the project needs >= 3.11)


def test_runtime_speed_classes():
    def b(name, ok, version="1.0"):
        return {"name": name, "available": ok, "version": version if ok else None, "detail": ""}

    fast = doctor.check_runtime([b("litert", True, "2.3.0"), b("tflite_runtime", True)])
    assert (fast.status, fast.data["speed"]) == (OK, "fast") and "2.3.0" in fast.message
    slow = doctor.check_runtime([b("litert", False), b("tflite_runtime", True, "2.14.0")])
    assert (slow.status, slow.data["speed"]) == (WARN, "slow")
    assert "10x" in slow.message and "pip install ai-edge-litert" in slow.fix
    none = doctor.check_runtime([b("litert", False), b("tflite_runtime", False), b("tensorflow", False)])
    assert none.status == FAIL and "pip install ai-edge-litert" in none.fix
    real = doctor.check_runtime()  # this venv has ai-edge-litert
    assert real.status == OK and real.data["runtime"] == "litert"


def _delegate(tmp: Path) -> Path:
    from _edgetpu_util import build_lib

    return build_lib(tmp, "delegate")


def test_edgetpu_usb_ids_and_link_speed(tmp_path):
    _usb_dev(tmp_path, "usb2", "1d6b", "0003", "5000")  # a root hub: ignored
    _usb_dev(tmp_path, "2-1", "18d1", "9302", "5000")
    _usb_dev(tmp_path, "1-1.3", "1a6e", "089a", "480")
    (tmp_path / "sys/bus/usb/devices/1-1.3:1.0").mkdir()  # an interface dir without ids: ignored
    found = doctor.scan_usb_edgetpu(tmp_path)
    assert sorted(d["id"] for d in found) == ["18d1:9302", "1a6e:089a"]
    checks = doctor.check_edgetpu(tmp_path)
    tpu = {c.data["id"]: c for c in checks if c.name == "edgetpu"}
    assert tpu["18d1:9302"].status == OK and "USB 3" in tpu["18d1:9302"].message
    assert tpu["1a6e:089a"].status == WARN and "USB 2" in tpu["1a6e:089a"].message
    assert "USB 3 port" in tpu["1a6e:089a"].fix
    lib = [c for c in checks if c.name == "libedgetpu"]
    assert len(lib) == 1
    # libedgetpu is really probed (in a child process): absent on this machine -> FAIL with the install fix
    if not probe_edgetpu().ok:
        assert lib[0].status == FAIL and "install.sh --coral" in lib[0].fix
    # the same code path with a delegate library that loads (a no-op TFLite delegate compiled here)
    ok = [c for c in doctor.check_edgetpu(tmp_path, lib=str(_delegate(tmp_path))) if c.name == "libedgetpu"]
    assert ok[0].status == OK


def test_edgetpu_absent_pcie_and_required(tmp_path):
    assert [c.status for c in doctor.check_edgetpu(tmp_path)] == [SKIP]
    req = doctor.check_edgetpu(tmp_path, required=True)
    assert [c.status for c in req] == [FAIL] and "1a6e:089a" in req[0].message
    _write(tmp_path / "dev/apex_0", "")
    pcie = doctor.check_edgetpu(tmp_path, lib=str(_delegate(tmp_path)))
    assert [(c.name, c.status) for c in pcie] == [("edgetpu", OK), ("libedgetpu", OK)]
    assert "apex_0" in pcie[0].message


def test_edgetpu_unknown_speed_file(tmp_path):
    _usb_dev(tmp_path, "3-2", "18d1", "9302", None)
    c = [c for c in doctor.check_edgetpu(tmp_path) if c.name == "edgetpu"][0]
    assert c.status == OK and c.data["speed_mbps"] is None


@pytest.mark.parametrize("milli,status", [("45123", OK), ("72000", WARN), ("83500", WARN)])
def test_cpu_temperature(tmp_path, milli, status, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no vcgencmd here
    _write(tmp_path / "sys/class/thermal/thermal_zone0/temp", milli + "\n")
    checks = doctor.check_thermal(tmp_path)
    assert [c.name for c in checks] == ["cpu-temp"]
    assert checks[0].status == status
    assert checks[0].data["celsius"] == pytest.approx(int(milli) / 1000)
    assert f"{int(milli) / 1000:.1f} C" in checks[0].message


def test_decode_throttled_bits():
    assert doctor.decode_throttled(0) == []
    assert doctor.decode_throttled(0x50005) == ["under-voltage detected", "currently throttled",
                                                "under-voltage has occurred", "throttling has occurred"]
    assert doctor.decode_throttled(0x80008) == ["soft temperature limit active", "soft temperature limit has occurred"]


def _fake_vcgencmd(bindir: Path, output: str, rc: int = 0) -> None:
    bindir.mkdir(exist_ok=True)
    exe = bindir / "vcgencmd"
    exe.write_text(f"#!/bin/sh\n[ \"$1\" = get_throttled ] || exit 2\nprintf '%s\\n' '{output}'\nexit {rc}\n")
    exe.chmod(0o755)


@pytest.mark.parametrize("out,status,words", [
    ("throttled=0x0", OK, ["not throttled"]),
    ("throttled=0x50005", WARN, ["now under-voltage detected", "since boot", "power"]),
    ("throttled=0x20000", WARN, ["since boot: ARM frequency capping has occurred", "cooling"]),
])
def test_vcgencmd_throttled(tmp_path, monkeypatch, out, status, words):
    _fake_vcgencmd(tmp_path / "bin", out)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    _write(tmp_path / "root/proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    checks = {c.name: c for c in doctor.check_thermal(tmp_path / "root")}
    assert checks["cpu-temp"].status == SKIP  # no thermal zone in this fake tree
    t = checks["throttle"]
    assert t.status == status
    text = t.message + " " + t.fix
    for w in words:
        assert w in text, (w, t.line())
    assert t.data["value"] == int(out.split("=")[1], 16)


def test_vcgencmd_failure_and_missing_on_pi(tmp_path, monkeypatch):
    _fake_vcgencmd(tmp_path / "bin", "VCHI initialization failed", rc=255)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    c = [c for c in doctor.check_thermal(tmp_path) if c.name == "throttle"][0]
    assert c.status == WARN and "VCHI" in c.message and "video" in c.fix
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert [c.name for c in doctor.check_thermal(tmp_path)] == ["cpu-temp"]  # not a Pi: no throttle line
    _write(tmp_path / "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    c = [c for c in doctor.check_thermal(tmp_path) if c.name == "throttle"][0]
    assert c.status == WARN and "vcgencmd not found" in c.message


def test_camera_devices_and_video_group(tmp_path):
    _write(tmp_path / "etc/passwd",
           "root:x:0:0::/root:/bin/bash\nedge-ssd:x:995:995::/var/lib/edge-ssd:/usr/sbin/nologin\n")
    _write(tmp_path / "etc/group", "root:x:0:\nvideo:x:44:pi\nedge-ssd:x:995:\n")
    checks = {c.name: c for c in doctor.check_camera(tmp_path)}
    assert checks["camera"].status == WARN and "no /dev/video" in checks["camera"].message
    assert checks["video-grp"].status == WARN and "usermod -aG video edge-ssd" in checks["video-grp"].fix
    assert checks["picamera2"].status == SKIP  # not a Pi (no device-tree model)

    for n in ("video0", "video10", "video1"):
        _write(tmp_path / "dev" / n, "")
    _write(tmp_path / "etc/group", "root:x:0:\nvideo:x:44:pi,edge-ssd\nedge-ssd:x:995:\n")
    checks = {c.name: c for c in doctor.check_camera(tmp_path)}
    assert checks["camera"].data["devices"] == ["video0", "video1", "video10"]
    assert checks["camera"].status == (OK if os.access(tmp_path / "dev/video0", os.R_OK | os.W_OK) else WARN)
    assert checks["video-grp"].status == OK
    assert doctor.user_in_group(tmp_path, "pi", "video") is None  # pi has no passwd entry here
    assert doctor.user_in_group(tmp_path, "root", "video") is False
    assert {c.name: c for c in doctor.check_camera(tmp_path, user="nobody")}["video-grp"].status == SKIP


def test_picamera2_on_a_pi_without_it(tmp_path):
    _write(tmp_path / "proc/device-tree/model", "Raspberry Pi 4 Model B Rev 1.4\x00")
    c = {c.name: c for c in doctor.check_camera(tmp_path)}["picamera2"]
    try:
        import picamera2  # noqa: F401
    except ImportError:
        assert c.status == WARN and "python3-picamera2" in c.fix and "system-site-packages" in c.fix
    else:  # pragma: no cover - only on a Pi
        assert c.status == OK


def test_spool_space(tmp_path):
    spool = tmp_path / "state" / "spool"
    c = doctor.check_space(spool)
    assert c.status in (OK, WARN) and c.data["checked"] == str(tmp_path) and "not created yet" in c.message
    assert c.data["free_mb"] == pytest.approx(shutil.disk_usage(tmp_path).free / 1e6, rel=0.05)
    assert doctor.check_space(tmp_path, warn_mb=1e12, fail_mb=1).status == WARN
    f = doctor.check_space(tmp_path, warn_mb=1e12, fail_mb=1e12)
    assert f.status == FAIL and "free disk space" in f.fix


# ----------------------------------------------------------------------------------------- real broker

def test_broker_reachable_anonymous(broker):
    c = doctor.check_broker("127.0.0.1", broker, timeout=5)
    assert c.status == OK and c.data["reason"] == "ok" and c.data["connack"] == 0, c.line()


def test_broker_unreachable_closed_port():
    port = _free_port()  # bound and released: nothing listens there
    c = doctor.check_broker("127.0.0.1", port, timeout=3)
    assert c.status == FAIL and c.data["reason"] == "refused" and "connection refused" in c.message
    assert f"-p {port}" in c.fix


def test_broker_credentials(auth_broker):
    good = doctor.check_broker("127.0.0.1", auth_broker, "alice", "s3cret")
    assert good.status == OK and "alice" in good.message, good.line()
    bad = doctor.check_broker("127.0.0.1", auth_broker, "alice", "wrong")
    assert bad.status == FAIL and bad.data["reason"] == "credentials", bad.line()
    assert "rejected the login as 'alice'" in bad.message and "password" in bad.fix
    anon = doctor.check_broker("127.0.0.1", auth_broker)
    assert anon.status == FAIL and anon.data["reason"] == "credentials" and "mqtt.username" in anon.fix


def test_broker_not_mqtt(tmp_path):
    """A TCP port that accepts but never answers MQTT: no CONNACK within the timeout."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        c = doctor.check_broker("127.0.0.1", srv.getsockname()[1], timeout=1.0)
    finally:
        srv.close()
    assert c.status == FAIL and c.data["reason"] == "no-connack" and "mqtt.port" in c.fix


# ------------------------------------------------------------------------------------------------ bundle

def test_bundle_ok_and_invoke(bundle):
    c, info = doctor.check_bundle(bundle)
    assert c.status == OK and "verified" in c.message and info is not None
    inv = doctor.measure_invoke(info[1], runs=3)
    assert inv.status == OK and len(inv.data["times_ms"]) == 3 and inv.data["median_ms"] > 0
    assert "litert" in inv.message and "1x8x8x3" in inv.message


def test_bundle_corrupt_and_missing(corrupt_bundle, tmp_path):
    c, info = doctor.check_bundle(corrupt_bundle)
    assert c.status == FAIL and info is None and "sha256" in c.message
    (corrupt_bundle / "model.tflite").unlink()
    c, _ = doctor.check_bundle(corrupt_bundle)
    assert c.status == FAIL and "missing" in c.message
    c, _ = doctor.check_bundle(tmp_path / "nothing")
    assert c.status == FAIL and "manifest.json" in c.message


def test_invoke_of_a_non_model_fails(tmp_path):
    bogus = _write(tmp_path / "x.tflite", "not a flatbuffer")
    c = doctor.measure_invoke(bogus)
    assert c.status == FAIL and "cannot load" in c.message


# ---------------------------------------------------------------------------------------- the whole CLI

def _config(tmp_path: Path, bundle: Path, port: int, user: str | None = None, pw: str | None = None) -> Path:
    mqtt = f"mqtt:\n  host: 127.0.0.1\n  port: {port}\n"
    if user:
        mqtt += f"  username: {user}\n  password: {pw}\n"
    return _write(tmp_path / "config.yaml",
                  f"device: test-pi\nmodel:\n  bundle: {bundle}\n  threads: 1\n"
                  f"sources:\n  - name: cam\n    url: /dev/video0\n{mqtt}"
                  f"spool:\n  dir: {tmp_path / 'spool'}\n")


def _doctor(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_ssd", "doctor", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_cli_json_all_good(tmp_path, bundle, auth_broker):
    root = tmp_path / "root"
    _usb_dev(root, "2-1", "18d1", "9302", "5000")
    _write(root / "sys/class/thermal/thermal_zone0/temp", "51000\n")
    cfg = _config(tmp_path, bundle, auth_broker, "alice", "s3cret")
    r = _doctor("--config", str(cfg), "--json", "--root", str(root))
    rep = json.loads(r.stdout)
    by = {}
    for c in rep["checks"]:
        by.setdefault(c["name"], c)
    assert by["config"]["status"] == OK
    assert by["bundle"]["status"] == OK
    assert by["invoke"]["status"] == OK and by["invoke"]["data"]["median_ms"] > 0
    assert by["mqtt"]["status"] == OK
    assert by["cpu-temp"]["data"]["celsius"] == 51.0
    assert by["spool"]["data"]["path"] == str(tmp_path / "spool")
    # a Coral is "plugged in" (fake sysfs) but libedgetpu is not installed here -> that one line fails
    fails = [c["name"] for c in rep["checks"] if c["status"] == FAIL]
    expected = [] if probe_edgetpu().ok else ["libedgetpu"]
    assert fails == expected
    assert r.returncode == (1 if fails else 0) == rep["exit_code"]
    assert rep["summary"]["fail"] == len(fails)


def test_cli_text_warnings_only_exit_0(tmp_path, bundle, broker):
    cfg = _config(tmp_path, bundle, broker)
    r = _doctor("--config", str(cfg), "--root", str(tmp_path / "emptyroot"))
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, r.stdout + r.stderr
    for line in lines[:-1]:
        assert line.split()[0] in ("OK", "WARN", "FAIL", "SKIP"), line
        if line.startswith(("WARN", "FAIL")):
            assert "-> fix:" in line
    assert any(line.startswith("WARN") and "camera" in line for line in lines)  # no /dev/video* in the fake root
    assert lines[-1].startswith("OK with warnings")


def test_cli_blocking_problems_exit_1(tmp_path, corrupt_bundle, auth_broker):
    cfg = _config(tmp_path, corrupt_bundle, auth_broker, "alice", "wrong")
    r = _doctor("--config", str(cfg), "--root", str(tmp_path / "emptyroot"))
    assert r.returncode == 1
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert any("bundle" in f and "sha256" in f for f in fails)
    assert any("mqtt" in f and "rejected the login" in f for f in fails)
    assert r.stdout.strip().splitlines()[-1].startswith("FAIL")


def test_cli_model_flag_and_bad_config(tmp_path, bundle):
    bad = _write(tmp_path / "bad.yaml", "device: x\nmodle: {}\n")
    r = _doctor("--config", str(bad), "--model", str(bundle), "--root", str(tmp_path))
    assert r.returncode == 1
    cfg_line = [line for line in r.stdout.splitlines() if line.split()[1] == "config"][0]
    assert cfg_line.startswith("FAIL") and "bad.yaml:2: modle: unknown key" in cfg_line
    assert any(line.startswith("OK") and " bundle " in line for line in r.stdout.splitlines())
