"""deploy/install.sh run for real inside Debian 12 (bookworm) and 13 (trixie) roots built with debootstrap
(tests/_debroot.py, cached between runs): chroot in a private mount namespace, nothing left mounted."""

from __future__ import annotations

import _debroot
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE_PACKAGES = {"bookworm": ["python3", "python3-numpy", "systemd"], "trixie": ["python3", "systemd"]}
PYTHON_VERSION = {"bookworm": "3.11", "trixie": "3.13"}


@pytest.fixture(scope="module", autouse=True)
def _needs_debootstrap():
    why = _debroot.unavailable()
    if why:
        pytest.skip(why)


@pytest.mark.parametrize("suite", sorted(BASE_PACKAGES))
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
