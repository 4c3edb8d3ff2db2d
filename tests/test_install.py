"""deploy/install.sh, run for real: --dry-run, and --root DIR (every file is written under a temporary root;
apt-get/useradd/systemctl start are printed, unit enabling uses `systemctl --root`). Every written file is
checked, the second run must change nothing (mtimes too), --uninstall removes what it created and keeps the
config, and one test really creates the venv and pip installs a wheel of this checkout offline."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
UNIT = REPO / "systemd" / "edge-ssd.service"
UNIT_AT = REPO / "systemd" / "edge-ssd@.service"
CONFIG_TEMPLATE = REPO / "deploy" / "config.example.yaml"
DOCS = sorted((REPO / "docs").glob("*.md"))
PYTHON = getattr(sys, "_base_executable", None) or sys.executable  # a real interpreter, not the test venv's
PREFIX = "/opt/es-test"


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "LC_ALL": "C"})
    if check and r.returncode != 0:
        raise AssertionError(f"install.sh {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def install(root: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return run("--root", str(root), "--prefix", PREFIX, "--python", PYTHON, "--skip-pip", *extra, check=check)


def changes(out: str) -> list[str]:
    return [line.strip() for line in out.splitlines() if line.strip().startswith(("[change]", "[dry-run]"))]


def tree(root: Path, skip_venv: bool = True) -> dict[str, os.stat_result]:
    """relative path -> lstat of everything under root (the venv's insides summarised by its top dir)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if skip_venv and rel.startswith(PREFIX.lstrip("/") + "/venv/"):
            continue
        out[rel] = p.lstat()
    return out


def rendered_units() -> dict[str, str]:
    out = {}
    for t in (UNIT, UNIT_AT):
        if t.exists():
            out[t.name] = re.sub(r"/opt/edge-ssd\b", PREFIX, t.read_text())
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    root = tmp_path_factory.mktemp("root")
    return root, install(root)


def test_templates_exist_and_unit_uses_default_prefix():
    assert UNIT.is_file() and CONFIG_TEMPLATE.is_file()
    # the installer rewrites /opt/edge-ssd for --prefix: the unit must run the venv's edge-ssd from there
    assert re.search(r"^ExecStart=/opt/edge-ssd/venv/bin/edge-ssd\b", UNIT.read_text(), re.M), UNIT.read_text()


def test_help_and_argument_errors(tmp_path):
    r = run("--help")
    for opt in ("--root", "--dry-run", "--uninstall", "--purge", "--coral", "--no-start", "--source", "--prefix"):
        assert opt in r.stdout
    bad = run("--frobnicate", check=False)
    assert bad.returncode != 0 and "unknown option '--frobnicate'" in bad.stderr
    assert "needs a value" in run("--prefix", check=False).stderr
    assert "absolute path" in run("--prefix", "opt/x", "--root", str(tmp_path), check=False).stderr
    assert "--purge only goes with --uninstall" in run("--purge", "--root", str(tmp_path), check=False).stderr
    assert "no such file" in run("--root", str(tmp_path), "--source", "./nope/x.whl", check=False).stderr


def test_shellcheck_clean():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    r = subprocess.run(["shellcheck", "-x", str(INSTALL)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_dry_run_writes_nothing(tmp_path):
    root = tmp_path / "r"
    r = run("--root", str(root), "--prefix", PREFIX, "--python", PYTHON, "--dry-run", "--coral")
    assert not root.exists(), "dry run created the root"
    out = r.stdout
    for what in (f"create venv {PREFIX}/venv", f"pip install {REPO}", "write /etc/edge-ssd/config.yaml",
                 "install /etc/systemd/system/edge-ssd.service", "enable edge-ssd.service",
                 "install /etc/udev/rules.d/99-edge-ssd-coral.rules", "create directory /var/lib/edge-ssd",
                 "apt-get install", "useradd --system", "systemctl daemon-reload", "systemctl start edge-ssd.service"):
        assert f"would {what}" in out or what in out, (what, out)
    assert all(line.startswith("[dry-run]") for line in changes(out))
    assert "[change]" not in out
    assert "dry run: nothing was changed" in out


def test_dry_run_on_live_system_changes_nothing():
    """--dry-run without --root looks at the real / and must not touch it."""
    watch = [Path("/opt/edge-ssd-dryrun-test"), Path("/etc/edge-ssd"), Path("/etc/systemd/system/edge-ssd.service"),
             Path("/var/lib/edge-ssd")]
    existed = {p: p.exists() for p in watch}
    r = run("--dry-run", "--prefix", "/opt/edge-ssd-dryrun-test", "--python", PYTHON, "--no-apt")
    assert "would create venv /opt/edge-ssd-dryrun-test/venv" in r.stdout
    assert "would enable edge-ssd.service" in r.stdout or "edge-ssd.service enabled" in r.stdout
    assert {p: p.exists() for p in watch} == existed
    assert "[change]" not in r.stdout and "[skip]" not in r.stdout


def test_every_written_file(installed):
    root, r = installed
    written = tree(root)
    units = rendered_units()
    expected = {
        "etc", "etc/edge-ssd", "etc/edge-ssd/config.yaml",
        "etc/systemd", "etc/systemd/system", "etc/systemd/system/multi-user.target.wants",
        "etc/systemd/system/multi-user.target.wants/edge-ssd.service",
        "opt", PREFIX.lstrip("/"), PREFIX.lstrip("/") + "/venv",
        "var", "var/lib", "var/lib/edge-ssd",
        *(f"etc/systemd/system/{n}" for n in units),
        *((PREFIX.lstrip("/") + "/docs", *(PREFIX.lstrip("/") + f"/docs/{d.name}" for d in DOCS)) if DOCS else ()),
    }
    assert set(written) == expected, sorted(set(written) ^ expected)
    # config: a byte-identical copy of the template, not world-readable (it may hold the MQTT password)
    cfg = root / "etc/edge-ssd/config.yaml"
    assert cfg.read_bytes() == CONFIG_TEMPLATE.read_bytes()
    assert oct(cfg.stat().st_mode & 0o777) == "0o640"
    # units: the templates with /opt/edge-ssd rewritten to the prefix
    for name, text in units.items():
        f = root / "etc/systemd/system" / name
        assert f.read_text() == text and oct(f.stat().st_mode & 0o777) == "0o644"
        assert "/opt/edge-ssd/" not in f.read_text()
    assert f"ExecStart={PREFIX}/venv/bin/edge-ssd" in (root / "etc/systemd/system/edge-ssd.service").read_text()
    link = root / "etc/systemd/system/multi-user.target.wants/edge-ssd.service"
    assert link.is_symlink() and os.readlink(link) == "/etc/systemd/system/edge-ssd.service"
    # the venv sees the system site packages (picamera2/libcamera come from apt)
    cfgv = (root / PREFIX.lstrip("/") / "venv/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", cfgv, re.M)
    assert (root / PREFIX.lstrip("/") / "venv/bin/python").exists()
    assert oct((root / "var/lib/edge-ssd").stat().st_mode & 0o777) == "0o750"
    assert oct((root / "etc/edge-ssd").stat().st_mode & 0o777) == "0o750"
    for d in DOCS:  # the units' Documentation= links
        assert (root / PREFIX.lstrip("/") / "docs" / d.name).read_bytes() == d.read_bytes()
    for u in units.values():
        for doc in re.findall(r"file://(\S+)", u):
            assert (root / doc.lstrip("/")).is_file(), doc
    # live-system commands were printed, not run
    for cmd in ("apt-get update", "apt-get install", "useradd --system", "systemctl daemon-reload"):
        assert re.search(rf"\[skip\].*{re.escape(cmd)}.*not run: --root", r.stdout), cmd
    # the untouched template config is not started (enabled, with what to edit)
    assert "systemctl start" not in r.stdout and "untouched template" in r.stderr
    assert "[change]" in r.stdout and "change(s)" in r.stdout


def test_second_run_changes_nothing(installed):
    root, _ = installed
    before = tree(root, skip_venv=False)
    r = install(root)
    assert changes(r.stdout) == []
    assert "nothing to do, everything is already in place" in r.stdout
    after = tree(root, skip_venv=False)
    assert after.keys() == before.keys()
    assert {k: v.st_mtime_ns for k, v in after.items()} == {k: v.st_mtime_ns for k, v in before.items()}


def test_config_is_never_overwritten_and_units_are_repaired(tmp_path):
    root = tmp_path / "r"
    install(root)
    cfg = root / "etc/edge-ssd/config.yaml"
    cfg.write_text("device: my-pi  # edited by the user\n")
    unit = root / "etc/systemd/system/edge-ssd.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    r = install(root)
    assert cfg.read_text() == "device: my-pi  # edited by the user\n"
    assert "config.yaml exists: kept (never overwritten)" in r.stdout
    assert unit.read_text() == rendered_units()["edge-ssd.service"]
    assert changes(r.stdout) == ["[change]  update /etc/systemd/system/edge-ssd.service"]
    assert "systemctl daemon-reload" in r.stdout
    unit.chmod(0o600)  # a wrong mode alone is repaired too
    assert changes(install(root).stdout) == ["[change]  chmod 644 /etc/systemd/system/edge-ssd.service"]


def test_no_start_and_coral(tmp_path):
    root = tmp_path / "r"
    r = install(root, "--no-start", "--coral")
    assert "not starting edge-ssd.service (--no-start)" in r.stdout and "systemctl start" not in r.stdout
    rules = (root / "etc/udev/rules.d/99-edge-ssd-coral.rules").read_text()
    assert 'ATTRS{idVendor}=="1a6e", ATTRS{idProduct}=="089a"' in rules
    assert 'ATTRS{idVendor}=="18d1", ATTRS{idProduct}=="9302"' in rules
    assert 'SUBSYSTEM=="apex"' in rules
    assert "udevadm control --reload-rules" in r.stdout
    apt = subprocess.run(["apt-cache", "policy", "libedgetpu1-std"], capture_output=True, text=True).stdout
    if "Candidate:" not in apt or "Candidate: (none)" in apt:
        assert "coral-edgetpu-stable" in r.stderr  # the repo hint
    assert changes(install(root, "--no-start", "--coral").stdout) == []


def test_uninstall_keeps_config_then_purge(tmp_path):
    root = tmp_path / "r"
    install(root, "--coral")
    (root / "var/lib/edge-ssd/spool.db").write_text("x")
    r = run("--root", str(root), "--prefix", PREFIX, "--uninstall")
    left = set(tree(root))
    assert left == {"etc", "etc/edge-ssd", "etc/edge-ssd/config.yaml", "etc/systemd", "etc/systemd/system",
                    "etc/udev", "etc/udev/rules.d", "opt", "var", "var/lib", "var/lib/edge-ssd",
                    "var/lib/edge-ssd/spool.db"}, sorted(left)
    assert (root / "etc/edge-ssd/config.yaml").read_bytes() == CONFIG_TEMPLATE.read_bytes()
    assert "kept /etc/edge-ssd" in r.stdout and "userdel edge-ssd" not in r.stdout  # no such user in this root
    again = run("--root", str(root), "--prefix", PREFIX, "--uninstall")
    assert changes(again.stdout) == [] and "nothing to do" in again.stdout
    purge = run("--root", str(root), "--prefix", PREFIX, "--uninstall", "--purge")
    assert not (root / "etc/edge-ssd").exists() and not (root / "var/lib/edge-ssd").exists()
    assert "remove /etc/edge-ssd" in purge.stdout


def test_uninstall_refuses_a_non_venv(tmp_path):
    root = tmp_path / "r"
    precious = root / PREFIX.lstrip("/") / "venv" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("not a venv")
    r = run("--root", str(root), "--prefix", PREFIX, "--uninstall", check=False)
    assert r.returncode != 0 and "not a venv" in r.stderr and precious.exists()


def test_real_venv_and_offline_pip_install(tmp_path):
    """The whole path with a real pip install: a wheel of this checkout, installed offline (--no-deps --no-index)
    into the venv, then importable from it; the second run sees the package stamp and skips pip."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "edge_ssd", src / "edge_ssd", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    (whl,) = wheels.glob("edge_ssd-*.whl")
    root = tmp_path / "r"
    args = ["--root", str(root), "--prefix", PREFIX, "--python", PYTHON, "--source", str(whl),
            "--pip-arg", "--no-deps", "--pip-arg", "--no-index"]
    r = run(*args)
    assert f"pip install {whl}" in r.stdout
    venv = root / PREFIX.lstrip("/") / "venv"
    probe = subprocess.run([str(venv / "bin/python"), "-c",
                            "import edge_ssd, sys; print(edge_ssd.__file__); print(sys.prefix)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    mod, prefix = probe.stdout.split()
    assert Path(mod).is_relative_to(venv) and Path(prefix) == venv
    script = venv / "bin/edge-ssd"
    assert script.exists() and script.read_text().splitlines()[0] == f"#!{venv}/bin/python"
    stamp = (venv / ".edge-ssd-install").read_text()
    assert str(whl) in stamp
    again = run(*args)
    assert "edge-ssd package up to date" in again.stdout and changes(again.stdout) == []
    again = run(*args, "--reinstall")
    assert changes(again.stdout) == [f"[change]  pip install {whl} into {PREFIX}/venv"]
