"""deploy/install.sh run for real inside Debian 12 (bookworm, Python 3.11, numpy 1.24 from apt as beside
picamera2) and Debian 13 (trixie, Python 3.13) roots built with debootstrap (tests/_debroot.py, cached between
runs), entered with chroot in a private mount namespace (nothing is left mounted).

pip gets the project's wheel and a local wheelhouse of its dependencies for the root's Python (downloaded once
from PyPI with ``pip download --python-version ... --only-binary :all:``, cached under
``$EDGE_SSD_CACHE/wheelhouse``), so the chroot needs no package index; apt inside the root uses the mirror the
root was bootstrapped from (install.sh runs ``apt-get update`` first).

Checked per suite: the run's output (apt-get update, not started on the untouched template), the venv imports
the runtime and runs ``edge-ssd detect`` on a bundle, the user, files and modes, the unit
(``systemd-analyze verify`` inside the root, enabled), a second run changes nothing, editing the config lets
the next run start it, ``--uninstall`` keeps the config and ``--uninstall --purge`` removes everything."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import _debroot
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FACES = SHARED / "data" / "faces"
CONSTRAINTS = REPO / "deploy" / "constraints-numpy1.txt"
BASE_PACKAGES = {"bookworm": ["python3", "python3-numpy", "systemd"], "trixie": ["python3", "systemd"]}
PYTHON_VERSION = {"bookworm": "3.11", "trixie": "3.13"}
CONSTRAINED = {"bookworm": CONSTRAINTS, "trixie": None}  # bookworm's system numpy is 1.24


@pytest.fixture(scope="module", autouse=True)
def _cached_roots_and_wheels():
    """Skip where roots cannot be built; else fill both caches at once (debootstrap and pip download are mostly
    network and disk: with a cold cache the four jobs take about as long as the slowest instead of their sum)."""
    why = _debroot.unavailable()
    if why:
        pytest.skip(why)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as ex:
        jobs = [ex.submit(_debroot.image, s, BASE_PACKAGES[s]) for s in BASE_PACKAGES]
        jobs += [ex.submit(wheelhouse, PYTHON_VERSION[s], CONSTRAINED[s]) for s in BASE_PACKAGES]
        for j in jobs:
            j.result()


def _platform_tags() -> list[str]:
    arch = platform.machine()
    return [f"manylinux_2_{m}_{arch}" for m in range(36, 16, -1)] + [f"manylinux2014_{arch}"]


def wheelhouse(pyver: str, constraints: Path | None) -> Path:
    """The project's runtime dependencies as wheels for Python ``pyver`` (cached, keyed by the requirements)."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    spec = "\n".join([pyver, platform.machine(), *deps, constraints.read_text() if constraints else ""])
    base = Path(os.environ.get("EDGE_SSD_CACHE") or Path.home() / ".cache" / "edge-ssd") / "wheelhouse"
    out = base / f"py{pyver}-{hashlib.sha256(spec.encode()).hexdigest()[:12]}"
    if (out / ".complete").exists():
        return out
    part = out.with_name(out.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    argv = [sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--only-binary", ":all:",
            "--python-version", pyver, "-d", str(part)]
    for tag in _platform_tags():
        argv += ["--platform", tag]
    if constraints:
        argv += ["-c", str(constraints)]
    r = subprocess.run([*argv, *deps], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        pytest.fail(f"pip download for Python {pyver} failed (needs PyPI):\n{r.stderr[-3000:]}")
    (part / ".complete").write_text(spec)
    os.replace(part, out)
    return out


@pytest.fixture(scope="module")
def project_wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edge_ssd", src / "edge_ssd", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("edge_ssd-*.whl")
    return whl


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A float32 face-detector bundle (onnx2tf, a few seconds) for `edge-ssd detect` inside the roots."""
    from _runtime_util import make_face_bundle

    return make_face_bundle(tmp_path_factory.mktemp("bundle"))


def _changes(out: str) -> list[str]:
    return [ln.strip() for ln in out.splitlines() if ln.strip().startswith("[change]")]


def _stat(root: Path, path: str) -> tuple[str, str, str]:
    """(mode, owner, group) of ``path`` inside ``root``, owners resolved by the root's own passwd."""
    r = _debroot.chroot_run(root, ["stat", "-c", "%a %U %G", path])
    mode, user, group = r.stdout.split()
    return mode, user, group


@dataclass
class Installed:
    """A root after the first real ``install.sh`` run: what the checks need."""

    root: Path
    binds: dict
    install: list[str]
    first: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def installed(tmp_path_factory, project_wheel, bundle):
    """The first install in both roots at once (apt and pip wait on the network and the disk much of the time:
    together they take well under the sum); each test then checks its own root."""
    from concurrent.futures import ThreadPoolExecutor

    base = tmp_path_factory.mktemp("debian")

    def first_install(suite: str) -> Installed:
        d = base / suite
        binds = {REPO: "/src", wheelhouse(PYTHON_VERSION[suite], CONSTRAINED[suite]): "/wheelhouse",
                 project_wheel.parent: "/project", bundle: "/bundle", FACES: "/faces"}
        root = _debroot.fresh_root(suite, d / "root", BASE_PACKAGES[suite])
        install = ["bash", "/src/deploy/install.sh", "--source", f"/project/{project_wheel.name}",
                   "--pip-arg", "--no-index", "--pip-arg", "--find-links=/wheelhouse"]
        return Installed(root, binds, install, _debroot.chroot_run(root, install, binds=binds, timeout=900))

    with ThreadPoolExecutor(len(BASE_PACKAGES)) as ex:
        jobs = {s: ex.submit(first_install, s) for s in BASE_PACKAGES}
        yield jobs


@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_install_sh_on_a_real_debian_root(suite, installed):
    pyver = PYTHON_VERSION[suite]
    it = installed[suite].result()
    root, binds, install, first = it.root, it.binds, it.install, it.first

    def sh(cmd: str, check: bool = True):
        return _debroot.chroot_run(root, ["bash", "-c", cmd], binds=binds, check=check, timeout=900)

    out = first.stdout + first.stderr
    assert "[change]  apt-get update" in out and "apt-get install" in out
    assert "not starting edge-ssd.service" in out and "untouched template" in out
    assert "[change]  start edge-ssd.service" not in out
    assert _debroot.mounted_under(root) == []

    # the venv: the runtime imports, numpy is the system's 1.x on bookworm (picamera2's), >= 2 on trixie
    probe = sh("/opt/edge-ssd/venv/bin/python -c 'import json, sys, numpy, cv2, ai_edge_litert, paho.mqtt, "
               "pydantic, yaml, edge_ssd; print(json.dumps({\"py\": \"%d.%d\" % sys.version_info[:2], "
               "\"numpy\": numpy.__version__, \"numpy_file\": numpy.__file__, \"edge_ssd\": edge_ssd.__file__}))'")
    info = json.loads(probe.stdout)
    assert info["py"] == pyver and info["edge_ssd"].startswith("/opt/edge-ssd/venv/")
    if CONSTRAINED[suite]:
        assert info["numpy"].startswith("1.24") and info["numpy_file"].startswith("/usr/lib/python3/")
        assert sh("cat /opt/edge-ssd/constraints.txt").stdout == CONSTRAINTS.read_text()
    else:
        assert int(info["numpy"].split(".")[0]) >= 2 and "/opt/edge-ssd/venv/" in info["numpy_file"]
    det = sh("/opt/edge-ssd/venv/bin/edge-ssd detect /faces --model /bundle --json --max-frames 3")
    frames = [json.loads(ln) for ln in det.stdout.splitlines()]
    assert len(frames) == 3 and sum(len(f["objects"]) for f in frames) > 0
    assert "Traceback" not in det.stderr

    # the user, the files and their modes
    user = sh("getent passwd edge-ssd").stdout.strip().split(":")
    assert user[5] == "/var/lib/edge-ssd" and user[6] == "/usr/sbin/nologin" and int(user[2]) < 1000
    assert _stat(root, "/etc/edge-ssd") == ("750", "root", "edge-ssd")
    assert _stat(root, "/etc/edge-ssd/config.yaml") == ("640", "root", "edge-ssd")
    assert _stat(root, "/var/lib/edge-ssd") == ("750", "edge-ssd", "edge-ssd")
    assert _stat(root, "/etc/systemd/system/edge-ssd.service") == ("644", "root", "root")
    assert (root / "etc/edge-ssd/config.yaml").read_bytes() == (REPO / "deploy/config.example.yaml").read_bytes()

    # the unit: valid for this root's systemd, enabled (starts at boot)
    verify = sh("systemd-analyze verify /etc/systemd/system/edge-ssd.service 2>&1", check=False)
    assert verify.returncode == 0, verify.stdout
    assert sh("systemctl is-enabled edge-ssd.service").stdout.strip() == "enabled"

    # idempotent: nothing to do, no apt, no pip
    again = _debroot.chroot_run(root, install, binds=binds, timeout=900)
    assert _changes(again.stdout) == [] and "nothing to do" in again.stdout

    # once the config is edited, the next run starts the service (without a running systemd: says it would)
    cfg = root / "etc/edge-ssd/config.yaml"
    cfg.write_text(cfg.read_text().replace("device: pi-garage", "device: pi-test"))
    edited = _debroot.chroot_run(root, install, binds=binds, timeout=900)
    assert _changes(edited.stdout) == [] and "untouched template" not in edited.stdout + edited.stderr
    assert "[skip]    start edge-ssd.service: systemctl start edge-ssd.service" in edited.stdout

    # uninstall keeps the config and the state; --purge removes them
    un = _debroot.chroot_run(root, [*install[:2], "--uninstall"], binds=binds)
    assert "kept /etc/edge-ssd" in un.stdout
    assert not (root / "opt/edge-ssd").exists() and not (root / "etc/systemd/system/edge-ssd.service").exists()
    assert sh("getent passwd edge-ssd", check=False).returncode == 2
    assert (root / "etc/edge-ssd/config.yaml").exists() and (root / "var/lib/edge-ssd").is_dir()
    assert not list((root / "etc/systemd/system").rglob("edge-ssd*"))
    _debroot.chroot_run(root, [*install[:2], "--uninstall", "--purge"], binds=binds)
    assert not (root / "etc/edge-ssd").exists() and not (root / "var/lib/edge-ssd").exists()
    assert _debroot.mounted_under(root) == []


@pytest.mark.parametrize("suite", ["trixie"])
def test_root_runs_commands_and_leaves_nothing_mounted(suite, tmp_path):
    root = _debroot.fresh_root(suite, tmp_path / "root", BASE_PACKAGES[suite])
    (tmp_path / "share").mkdir()
    (tmp_path / "share" / "hello.txt").write_text("hi\n")
    r = _debroot.chroot_run(root, ["sh", "-c", "python3 -V; test -e /proc/self/status; test -c /dev/null; "
                                   "cat /share/hello.txt; touch /share/x 2>/dev/null && echo writable || echo ro"],
                            binds={tmp_path / "share": "/share"})
    assert f"Python {PYTHON_VERSION[suite]}." in r.stdout
    assert "hi" in r.stdout and r.stdout.strip().endswith("ro")
    assert _debroot.mounted_under(root) == []
    with pytest.raises(_debroot.ChrootError) as e:
        _debroot.chroot_run(root, ["sh", "-c", "exit 7"])
    assert e.value.returncode == 7
    assert _debroot.mounted_under(root) == []
