"""Real Debian roots for tests: cached debootstrap minbase images, and chroot into them without leaking mounts.

API (used by tests/test_install_debian.py and the fleet's Ansible chroot test):

``unavailable() -> str | None``
    Why roots cannot be built here (not root, no debootstrap / unshare / chroot), or None. Use it to skip:
    ``if (why := _debroot.unavailable()): pytest.skip(why)``.

``mirror() -> str``
    The Debian mirror: ``$EDGE_SSD_DEBIAN_MIRROR``, else the first ``.../debian`` URI apt is configured with
    (/etc/apt/sources.list and sources.list.d, one-line or deb822), else http://deb.debian.org/debian.

``image(suite, packages=()) -> Path``
    The cached tarball of a ``debootstrap --variant=minbase`` root of ``suite`` ("bookworm", "trixie") with
    ``packages`` added (``--include``). Built on first use (about a minute per suite), then reused: the cache is
    ``$EDGE_SSD_CACHE/debroots`` (default ``~/.cache/edge-ssd/debroots``), one ``<suite>-<key>.tar.zst`` per
    suite + sorted package list + mirror + architecture. Concurrent callers wait on a lock file; a failed build
    leaves nothing behind.

``fresh_root(suite, dest, packages=()) -> Path``
    Unpacks ``image(suite, packages)`` into the empty or absent directory ``dest`` (a throw-away copy: a test
    may change anything in it), copies the host's /etc/resolv.conf so apt works inside, and returns ``dest``.

``chroot_run(root, argv, *, env=None, input=None, timeout=600, check=True, binds=None) -> CompletedProcess``
    Runs ``argv`` (a list; ``["sh", "-c", "..."]`` for a shell line) inside ``root`` with ``chroot``. /proc,
    /dev and /sys are mounted only inside a private mount namespace (``unshare --mount --propagation private``),
    so they vanish with the command: nothing stays mounted on the host, even when the command fails or times
    out. The environment is clean (PATH, HOME=/root, LANG=C.UTF-8, DEBIAN_FRONTEND=noninteractive) plus
    ``env``. Output is captured as text. With ``check`` a non-zero exit raises ``ChrootError`` carrying the
    command, its exit status and the tail of its output. ``binds`` ({host_dir: path_inside}) are bind-mounted
    read-only inside the same private namespace (a wheelhouse, a checkout), so nothing needs copying in.

``mounted_under(path) -> list[str]``
    The host's mount points at or below ``path`` (from /proc/self/mountinfo): ``[]`` after every chroot_run.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import platform
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
SUITES = ("bookworm", "trixie")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
_TOOLS = ("debootstrap", "unshare", "chroot", "tar", "zstd", "mount")


class ChrootError(RuntimeError):
    """A command inside a root failed: ``argv``, ``returncode`` and ``output`` (stdout + stderr)."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode} in the chroot:\n{output[-6000:]}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def unavailable() -> str | None:
    """None when Debian roots can be built and entered here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "Debian roots need root (debootstrap, chroot, mount namespaces)"
    missing = [t for t in _TOOLS if _which(t) is None]
    if missing:
        return f"missing {', '.join(missing)} (scripts/setup.sh installs debootstrap)"
    return None


def _apt_uris() -> list[str]:
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    uris: list[str] = []
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line) or re.match(r"URIs:\s*(.+)", line)
            if m:
                uris += m.group(1).split()
    return uris


def mirror() -> str:
    """The Debian mirror to bootstrap from: $EDGE_SSD_DEBIAN_MIRROR, apt's own, or deb.debian.org."""
    env = os.environ.get("EDGE_SSD_DEBIAN_MIRROR")
    if env:
        return env.rstrip("/")
    for uri in _apt_uris():
        if re.match(r"https?://", uri) and uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return DEFAULT_MIRROR


def cache_dir() -> Path:
    base = os.environ.get("EDGE_SSD_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edge-ssd") / "debroots"


def _key(suite: str, packages: Sequence[str]) -> str:
    spec = "\n".join([suite, _ARCH, mirror(), *sorted(set(packages))])
    return hashlib.sha256(spec.encode()).hexdigest()[:12]


def image(suite: str, packages: Sequence[str] = ()) -> Path:
    """The cached minbase tarball of ``suite`` + ``packages``; built (under a lock) when absent."""
    if suite not in SUITES:
        raise ValueError(f"suite {suite!r}: use one of {', '.join(SUITES)}")
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    out = d / f"{suite}-{_key(suite, packages)}.tar.zst"
    with open(d / f".{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not out.exists():
            _build(suite, packages, out)
    return out


def _build(suite: str, packages: Sequence[str], out: Path) -> None:
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".build-{suite}-") as tmp:
        target = Path(tmp) / "root"
        argv = ["debootstrap", "--variant=minbase", f"--arch={_ARCH}"]
        if packages:
            argv.append("--include=" + ",".join(sorted(set(packages))))
        argv += [suite, str(target), mirror()]
        # debootstrap mounts /proc and /sys in the target itself: a private namespace makes sure none survive
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", *argv],
                           capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            log = target / "debootstrap" / "debootstrap.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise ChrootError(argv, r.returncode, r.stdout + r.stderr + tail)
        subprocess.run(["chroot", str(target), "apt-get", "clean"], check=True, capture_output=True)
        part = Path(tmp) / "image.tar.zst"
        subprocess.run(["tar", "--numeric-owner", "--zstd", "-cpf", str(part), "-C", str(target), "."],
                       check=True, capture_output=True)
        os.replace(part, out)


def fresh_root(suite: str, dest: Path, packages: Sequence[str] = ()) -> Path:
    """A throw-away copy of the cached ``suite`` root at ``dest`` (empty or absent), ready for apt."""
    tar = image(suite, packages)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    subprocess.run(["tar", "--numeric-owner", "--zstd", "-xpf", str(tar), "-C", str(dest)],
                   check=True, capture_output=True)
    resolv = dest / "etc" / "resolv.conf"
    if resolv.is_symlink():
        resolv.unlink()
    if Path("/etc/resolv.conf").exists():
        shutil.copyfile("/etc/resolv.conf", resolv)
    return dest


_ENTER = r"""
set -e
r=$1; shift
mount -t proc proc "$r/proc"
mount --rbind /dev "$r/dev"
mount --rbind /sys "$r/sys"
while [ "$1" != "--" ]; do
  mkdir -p "$r$2"; mount --bind "$1" "$r$2"; mount -o remount,bind,ro "$r$2"; shift 2
done
shift
exec chroot "$r" "$@"
"""


def chroot_run(root: Path, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
               input: str | None = None, timeout: float = 600, check: bool = True,
               binds: Mapping[str | Path, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``argv`` inside ``root`` (chroot in a private mount namespace: /proc, /dev, /sys and the read-only
    ``binds`` {host_dir: inside_path} exist only for this command)."""
    root = Path(root).resolve()
    if not (root / "bin").exists() and not (root / "usr" / "bin").exists():
        raise FileNotFoundError(f"{root} is not a Debian root (see fresh_root)")
    base_env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
                "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "TERM": "dumb"}
    pairs: list[str] = []
    for host, inside in (binds or {}).items():
        if not str(inside).startswith("/"):
            raise ValueError(f"bind target {inside!r} must be an absolute path inside the root")
        pairs += [str(Path(host).resolve()), str(inside)]
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _ENTER, "enter", str(root), *pairs,
           "--", "/usr/bin/env", "-i", *[f"{k}={v}" for k, v in {**base_env, **(env or {})}.items()], *argv]
    # its own process group: a timeout kills everything it started, and the namespace (with its mounts) goes
    with subprocess.Popen(cmd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True) as p:
        try:
            out, err = p.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            raise ChrootError(argv, -9, f"timed out after {timeout} s\n{out}{err}") from None
    r = subprocess.CompletedProcess(argv, p.returncode, out, err)
    if check and r.returncode != 0:
        raise ChrootError(argv, r.returncode, r.stdout + r.stderr)
    return r


def mounted_under(path: Path) -> list[str]:
    """Host mount points at or below ``path`` (empty when nothing leaked)."""
    p = str(Path(path).resolve())
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == p or mp.startswith(p.rstrip("/") + "/"):
            out.append(mp)
    return out
