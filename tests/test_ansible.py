"""deploy/ansible/edge-ssd.yml run for real with ansible-playbook (its own cached venv, deploy/ansible/
requirements.txt) against a Debian 12 root built with debootstrap (tests/_debroot.py), over the chroot connection:
install, config from the template, bundle copy, restart handler; the second run changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import _debroot
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
PLAYBOOK = REPO / "deploy" / "ansible" / "edge-ssd.yml"
REQUIREMENTS = REPO / "deploy" / "ansible" / "requirements.txt"
# what deploy/install.sh wants from apt, present in the image so that no run needs the network
PACKAGES = ["python3", "python3-venv", "python3-pip", "mosquitto-clients", "ca-certificates", "libgomp1", "systemd"]
# the chroot connection does not mount anything: ansible-playbook runs in a private mount namespace in which the
# root has /proc and /dev (they vanish with it, as in _debroot.chroot_run)
_ENTER = 'set -e; r=$1; shift; mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; exec "$@"'


@pytest.fixture(scope="module", autouse=True)
def _needs_debootstrap():
    why = _debroot.unavailable()
    if why:
        pytest.skip(why)


@pytest.fixture(scope="module")
def ansible_bin() -> Path:
    """A venv with deploy/ansible/requirements.txt, cached per version of that file."""
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    venv = _debroot.cache_dir().parent / f"ansible-{key}"
    if not (venv / ".complete").exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(REQUIREMENTS)],
                           capture_output=True, text=True, timeout=1200)
        if r.returncode != 0:
            pytest.fail(f"cannot install {REQUIREMENTS}: {r.stderr[-2000:]}")
        (venv / ".complete").write_text(key)
    return venv / "bin"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("edge_ssd-*.whl")
    return whl


def make_bundle(d: Path) -> Path:
    from edge_ssd.model.bundle import InputSpec, Manifest, OutputSpec, Postprocess, sha256_file, write_manifest

    d.mkdir(parents=True)
    (d / "model.tflite").write_bytes(os.urandom(4096))
    write_manifest(d, Manifest(model_sha256=sha256_file(d / "model.tflite"), target="float",
                               input=InputSpec(name="input", shape=[1, 240, 320, 3]),
                               scores=OutputSpec(name="s", shape=[1, 4, 2]),
                               boxes=OutputSpec(name="b", shape=[1, 4, 4]),
                               postprocess=Postprocess(box_encoding="corners"), labels=["bg", "face"]))
    return d


def playbook(bin_dir: Path, root: Path, tmp: Path, extra: dict) -> tuple[str, dict]:
    inv = tmp / "inventory.ini"
    inv.write_text(f"[edge_ssd]\n{root} ansible_connection=community.general.chroot "
                   "ansible_python_interpreter=/usr/bin/python3\n")
    env = dict(os.environ, ANSIBLE_HOME=str(tmp / "ansible-home"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCAL_TEMP=str(tmp / "ansible-tmp"), PATH=f"{bin_dir}:{os.environ['PATH']}")
    argv = [str(bin_dir / "ansible-playbook"), "-i", str(inv), str(PLAYBOOK), "-e", json.dumps(extra)]
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "enter", str(root),
                        *argv], capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    recap = re.search(r"ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", r.stdout)
    assert recap, r.stdout[-3000:]
    ok, changed, unreachable, failed = map(int, recap.groups())
    return r.stdout, {"ok": ok, "changed": changed, "unreachable": unreachable, "failed": failed}


def test_playbook_installs_configures_copies_the_bundle_and_is_idempotent(tmp_path, ansible_bin, wheel):
    root = _debroot.fresh_root("bookworm", tmp_path / "root", PACKAGES)
    bundle = make_bundle(tmp_path / "face.bundle")
    keys = tmp_path / "keys"
    from edge_ssd.fleet.archive import keygen

    _, pub = keygen(keys)
    extra = {"edge_ssd_wheel": str(wheel), "edge_ssd_bundle": str(bundle), "edge_ssd_mqtt_host": "broker.lan",
             "edge_ssd_sources": [{"name": "door", "url": "rtsp://cam.lan/1", "max_fps": 5}],
             "edge_ssd_rollout_public_key": str(pub), "edge_ssd_validate": False,
             # offline: the wheel without its dependencies (the test root has no index to install them from)
             "edge_ssd_install_args": ["--pip-arg", "--no-deps", "--pip-arg", "--no-index"]}
    out1, r1 = playbook(ansible_bin, root, tmp_path, extra)
    assert r1["failed"] == 0 and r1["changed"] >= 5
    assert "RUNNING HANDLER [Restart edge-ssd]" in out1  # notified (skipped: no systemd running in a chroot)
    # what is on the device
    venv = root / "opt/edge-ssd/venv"
    assert (venv / "bin/edge-ssd").exists()
    assert (root / "etc/systemd/system/multi-user.target.wants/edge-ssd.service").is_symlink()
    copied = root / "var/lib/edge-ssd/models/face.bundle"
    assert (copied / "model.tflite").read_bytes() == (bundle / "model.tflite").read_bytes()
    assert (root / "etc/edge-ssd/bundle-signing.pub").read_bytes() == pub.read_bytes()
    conf = root / "etc/edge-ssd/config.yaml"
    assert oct(conf.stat().st_mode & 0o777) == "0o640"
    # the templated config is valid for edge-ssd (checked here: the offline test venv lacks the dependencies)
    from edge_ssd.daemon.config import parse_config

    text = conf.read_text().replace("/var/lib/edge-ssd/models/face.bundle", str(copied))
    text = text.replace("/etc/edge-ssd/bundle-signing.pub", str(pub))
    cfg = parse_config(text, conf).config
    assert cfg.device == "root" and cfg.mqtt.host == "broker.lan" and cfg.sources[0].max_fps == 5
    assert cfg.rollout.enabled and cfg.rollout.public_key == str(pub)
    # the second run changes nothing and restarts nothing
    out2, r2 = playbook(ansible_bin, root, tmp_path, extra)
    assert r2["changed"] == 0 and r2["failed"] == 0, out2[-4000:]
    assert "RUNNING HANDLER" not in out2
    # a changed variable changes the config only, and notifies the restart
    out3, r3 = playbook(ansible_bin, root, tmp_path, {**extra, "edge_ssd_mqtt_host": "broker2.lan"})
    assert r3["changed"] == 1 and "RUNNING HANDLER [Restart edge-ssd]" in out3
    assert "host: broker2.lan" in conf.read_text()
    assert _debroot.mounted_under(root) == []
