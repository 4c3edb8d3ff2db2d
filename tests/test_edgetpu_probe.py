"""The Edge TPU delegate is probed in a child process: a libedgetpu that crashes (built for another TFLite) is
one line naming the fix, in the backends, `detect`, the daemon and `doctor`. The libraries are real shared
objects compiled here (gcc): one segfaults in its ELF constructor, one is a working no-op TFLite delegate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _edgetpu_util import build_lib, tiny_tflite

from edge_ssd import doctor
from edge_ssd.doctor import FAIL, OK
from edge_ssd.errors import UserError
from edge_ssd.runtime.edgetpu_probe import ENV_LIB, probe_edgetpu

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="module")
def libs(tmp_path_factory):
    d = tmp_path_factory.mktemp("libs")
    return {"crash": build_lib(d, "crash_init"), "delegate": build_lib(d, "delegate")}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_tflite(tmp_path_factory.mktemp("m") / "tiny_edgetpu.tflite")


def test_crash_while_loading_the_library(libs):
    r = probe_edgetpu("usb", lib=str(libs["crash"]))
    assert r.status == "crashed" and "SIGSEGV" in r.detail and "loading the library" in r.detail
    line = r.line()
    assert "\n" not in line and "crashed the process" in line
    assert "deploy/install.sh --coral" in line and "built for the installed TFLite runtime" in line


def test_crash_while_creating_the_delegate(libs, model):
    r = probe_edgetpu("crash", model_path=model, lib=str(libs["delegate"]))
    assert r.status == "crashed" and "SIGSEGV" in r.detail and "delegate" in r.detail


def test_missing_not_a_delegate_no_device_and_ok(libs, model, tmp_path):
    missing = probe_edgetpu(lib=str(tmp_path / "libedgetpu.so.1"))
    assert missing.status == "missing" and "install.sh --coral" in missing.fix()
    libc = probe_edgetpu(lib="libc.so.6")
    assert libc.status == "not_delegate" and "tflite_plugin_create_delegate" in libc.detail
    none = probe_edgetpu("usb:9", lib=str(libs["delegate"]))
    assert none.status == "no_device" and "edgetpu_device" in none.fix()
    ok = probe_edgetpu("usb", model_path=model, lib=str(libs["delegate"]))
    assert ok.ok and ok.fix() == "" and "loads and runs" in ok.line()


def test_backend_probes_before_loading_in_process(libs, model, monkeypatch):
    from edge_ssd.runtime.backends import open_backend

    monkeypatch.setenv(ENV_LIB, str(libs["crash"]))
    with pytest.raises(UserError, match="crashed the process"):
        open_backend(model, backend="edgetpu", edgetpu_device="usb")
    # this process survived; with a delegate that works the same path loads and runs the model
    monkeypatch.setenv(ENV_LIB, str(libs["delegate"]))
    import numpy as np

    b = open_backend(model, backend="auto")  # *_edgetpu.tflite -> the Edge TPU delegate
    assert b.name == "edgetpu"
    out = b.run(np.zeros((1, 8, 8, 3), np.float32))
    assert float(next(iter(out.values())).mean()) == pytest.approx(1.0)


def _cli(*args, env_lib: Path):
    env = dict(os.environ, **{ENV_LIB: str(env_lib)}, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "edge_ssd", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_detect_reports_the_crash_in_one_line(libs, model, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("BACKGROUND\nthing\n")
    r = _cli("detect", "-m", model, SHARED / "data" / "photos" / "dog.jpg", "--labels", labels,
             env_lib=libs["crash"])
    assert r.returncode != 0
    err = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert len(err) == 1 and "crashed the process" in err[0] and "Traceback" not in r.stderr


def test_daemon_reports_the_crash_in_one_line(libs, model, tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"device: cam1\nmodel:\n  bundle: {model}\n  backend: edgetpu\n  edgetpu_device: usb:0\n"
                   f"sources:\n  - name: a\n    url: {SHARED / 'data' / 'photos' / 'dog.jpg'}\n")
    r = _cli("run", "--config", cfg, env_lib=libs["crash"])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "crashed the process that loaded it" in r.stderr and "(device usb:0)" in r.stderr


def _usb_coral(root: Path) -> None:
    d = root / "sys/bus/usb/devices/2-1"
    d.mkdir(parents=True)
    for k, v in (("idVendor", "18d1"), ("idProduct", "9302"), ("speed", "5000")):
        (d / k).write_text(v + "\n")


def test_doctor_uses_the_probe(libs, model, tmp_path):
    _usb_coral(tmp_path)
    crash = [c for c in doctor.check_edgetpu(tmp_path, lib=str(libs["crash"]), device="usb")
             if c.name == "libedgetpu"]
    assert [c.status for c in crash] == [FAIL]
    assert "crashed the process" in crash[0].message and "install.sh --coral" in crash[0].fix
    good = [c for c in doctor.check_edgetpu(tmp_path, lib=str(libs["delegate"])) if c.name == "libedgetpu"]
    assert [c.status for c in good] == [OK] and "loads and runs" in good[0].message
    # an Edge TPU bundle's model is run with the delegate too (the crash of an ABI-mismatched libedgetpu can
    # come when the delegate is applied to a graph)
    ran = doctor.check_edgetpu(tmp_path, lib=str(libs["delegate"]), device="crash", model_path=model)
    assert [c.status for c in ran if c.name == "libedgetpu"] == [FAIL]


def _w(p: Path, text: str) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _pci_coral(root: Path, addr: str = "0001:01:00.0") -> None:
    _w(root / f"sys/bus/pci/devices/{addr}/vendor", "0x1ac1\n")
    _w(root / f"sys/bus/pci/devices/{addr}/device", "0x089a\n")
    _w(root / "sys/bus/pci/devices/0001:00:00.0/vendor", "0x14e4\n")  # the Pi 5's own bridge: ignored
    _w(root / "sys/bus/pci/devices/0001:00:00.0/device", "0x2712\n")


def test_gasket_driver_missing_on_a_pi5(tmp_path):
    _pci_coral(tmp_path)
    _w(tmp_path / "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    _w(tmp_path / "boot/firmware/config.txt", "[all]\ndtparam=pciex1\n# kernel=kernel8.img\n")
    assert doctor.scan_pci_edgetpu(tmp_path) == ["0001:01:00.0"]
    checks = doctor.check_edgetpu(tmp_path)
    g = [c for c in checks if c.name == "gasket"]
    assert [c.status for c in g] == [FAIL]
    assert "0001:01:00.0" in g[0].message and "not loaded" in g[0].message
    assert "gasket-dkms" in g[0].fix and "kernel=kernel8.img" in g[0].fix and "pcie-32bit-dma-pi5" in g[0].fix
    assert "dtparam=pciex1 (" not in g[0].fix  # already there: not asked for again
    assert g[0].data["pi5_missing"] == ["kernel=kernel8.img", "dtoverlay=pcie-32bit-dma-pi5"]
    # no USB Coral and no /dev/apex: no delegate probe, and no "no Coral found" SKIP either
    assert [c.name for c in checks] == ["gasket"]


def test_gasket_loaded_without_device_node_then_ok(tmp_path, libs):
    _pci_coral(tmp_path)
    (tmp_path / "sys/module/apex").mkdir(parents=True)
    g = doctor.check_gasket(tmp_path)
    assert [c.status for c in g] == [FAIL] and "udev rule" in g[0].fix
    _w(tmp_path / "dev/apex_0", "")
    assert [c.status for c in doctor.check_gasket(tmp_path)] == [OK]
    checks = doctor.check_edgetpu(tmp_path, lib=str(libs["delegate"]), device="pci:0")
    assert [(c.name, c.status) for c in checks] == [("edgetpu", OK), ("libedgetpu", OK)]


def test_pci_device_configured_but_no_card(tmp_path):
    _w(tmp_path / "proc/device-tree/model", "Raspberry Pi 5 Model B Rev 1.0\x00")
    g = doctor.check_gasket(tmp_path, device="pci:0")
    assert [c.status for c in g] == [FAIL] and "no Coral is on the PCIe bus" in g[0].message
    assert "dtparam=pciex1" in g[0].fix
    assert doctor.check_gasket(tmp_path) == []  # nothing configured, nothing there: nothing to say


def test_config_edgetpu_device(tmp_path):
    from edge_ssd.daemon.config import ConfigError, parse_config

    base = "device: cam1\nmodel:\n  bundle: m.tflite\n  edgetpu_device: {}\nsources:\n  - name: a\n    url: x.jpg\n"
    for good in ("usb", "usb:0", "pci", "pci:1"):
        assert parse_config(base.format(good)).config.model.edgetpu_device == good
    with pytest.raises(ConfigError) as e:
        parse_config(base.format("usb0"), path="c.yaml")
    assert any("c.yaml:4: model.edgetpu_device" in p and "use usb, usb:N, pci or pci:N" in p for p in e.value.problems)
