"""deploy/install.sh --coral --libedgetpu-deb: installs the given libedgetpu instead of Coral's 2021 package, and
probes the delegate only on the live system (under --root the probe is skipped with a pointer to doctor)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
PYTHON = getattr(sys, "_base_executable", None) or sys.executable


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LC_ALL": "C"})


def test_libedgetpu_deb_must_be_a_deb(tmp_path):
    r = run("--root", str(tmp_path / "r"), "--coral", "--libedgetpu-deb", str(tmp_path / "nope.deb"))
    assert r.returncode != 0 and "not a .deb file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_libedgetpu_deb_is_installed_and_probe_deferred(tmp_path):
    deb = tmp_path / "libedgetpu1-std_16.0tf2.17.1-1.bookworm_arm64.deb"
    deb.write_bytes(b"!<arch>\n")
    root = tmp_path / "r"
    r = run("--root", str(root), "--prefix", "/opt/es-test", "--python", PYTHON, "--skip-pip", "--no-start",
            "--libedgetpu-deb", str(deb))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"apt-get install -y -q --no-install-recommends {deb}" in r.stdout  # printed under --root, not run
    assert "Edge TPU delegate probe skipped" in r.stdout and "edge-ssd doctor" in r.stdout
    assert "coral-edgetpu-stable" not in r.stderr  # no hint to add Coral's repository: the .deb replaces it
    assert (root / "etc/udev/rules.d/99-edge-ssd-coral.rules").is_file()  # --libedgetpu-deb implies --coral
