"""``edge-ssd doctor``: check that this machine can run the daemon, one line per check with a fix.

Each check returns :class:`Check` objects with a status ``OK`` / ``WARN`` / ``FAIL`` / ``SKIP`` (not
applicable here). ``FAIL`` means the daemon cannot run as configured; ``WARN`` means it runs, but slower or
less reliably than it could.

Every hardware probe reads files under a ``root`` directory (default ``/``): ``sys/bus/usb/devices``,
``sys/class/thermal``, ``dev/video*``, ``dev/apex_*``, ``proc/device-tree/model``, ``etc/group``. Tests build
such trees in a temporary directory to exercise the parsing of hardware that cannot exist on a CI machine;
``vcgencmd`` is found on ``PATH``.
"""

from __future__ import annotations

import grp
import importlib.util
import os
import platform
import pwd
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"
STATUSES = (OK, WARN, FAIL, SKIP)

MIN_PYTHON = (3, 11)
SERVICE_USER = "edge-ssd"
DEFAULT_CONFIG = "etc/edge-ssd/config.yaml"  # under root
# (idVendor, idProduct) -> what it is. The USB accelerator enumerates as 1a6e:089a until libedgetpu has
# loaded its firmware, then as 18d1:9302.
EDGETPU_USB_IDS = {
    ("1a6e", "089a"): "Coral USB Accelerator (firmware not loaded yet)",
    ("18d1", "9302"): "Coral USB Accelerator",
}
# vcgencmd get_throttled bits (Raspberry Pi firmware documentation)
THROTTLE_BITS = {
    0: "under-voltage detected",
    1: "ARM frequency capped",
    2: "currently throttled",
    3: "soft temperature limit active",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
TEMP_WARN_C = 70.0  # a Pi 4/5 starts soft-throttling at 80 C (60 C on a Pi 3B+ soft limit)
TEMP_HOT_C = 80.0
POWER_FIX = "under-voltage: use the official 5 V power supply (5 A on a Pi 5, 3 A on a Pi 4) and a short cable"
SPOOL_WARN_MB = 200
SPOOL_FAIL_MB = 20


@dataclass
class Check:
    name: str
    status: str
    message: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"bad status {self.status!r}")

    def line(self) -> str:
        s = f"{self.status:<4}  {self.name:<9} {self.message}"
        if self.fix and self.status in (WARN, FAIL):
            s += f"  -> fix: {self.fix}"
        return s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ helpers

def _rooted(root: str | Path, rel: str) -> Path:
    return Path(root) / rel.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _group_members(root: str | Path, group: str) -> tuple[int, set[str]] | None:
    """(gid, member names) of ``group``; from the NSS databases on the live root, else root/etc/group."""
    if str(root) == "/":
        try:
            g = grp.getgrnam(group)
        except KeyError:
            return None
        return g.gr_gid, set(g.gr_mem)
    text = _read(_rooted(root, "etc/group"))
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == group:
            return int(parts[2]), {m for m in parts[3].split(",") if m}
    return None


def _user_gid(root: str | Path, user: str) -> int | None:
    if str(root) == "/":
        try:
            return pwd.getpwnam(user).pw_gid
        except KeyError:
            return None
    text = _read(_rooted(root, "etc/passwd"))
    for line in (text or "").splitlines():
        parts = line.split(":")
        if len(parts) >= 4 and parts[0] == user:
            return int(parts[3])
    return None


def user_in_group(root: str | Path, user: str, group: str) -> bool | None:
    """True/False, or None when the user or the group does not exist."""
    g = _group_members(root, group)
    gid = _user_gid(root, user)
    if g is None or gid is None:
        return None
    return user in g[1] or gid == g[0]


def is_raspberry_pi(root: str | Path = "/") -> bool:
    model = _read(_rooted(root, "proc/device-tree/model")) or ""
    return "raspberry pi" in model.lower()


# ----------------------------------------------------------------------------------------------- checks

def check_python(version: tuple[int, ...] | None = None) -> Check:
    v = tuple(version or sys.version_info[:3])
    text = ".".join(str(x) for x in v[:3])
    if v[:2] < MIN_PYTHON:
        return Check("python", FAIL, f"Python {text} ({sys.executable}); edge-ssd needs >= 3.11",
                     "use Raspberry Pi OS Bookworm/Trixie (Python 3.11/3.13) or install python3.11, then re-run "
                     "deploy/install.sh")
    return Check("python", OK, f"Python {text} ({platform.machine()})", data={"version": text})


def check_runtime(backends: list[dict] | None = None) -> Check:
    """Which TFLite runtime the daemon would use, and its speed class."""
    if backends is None:
        from .runtime.backends import available_backends

        backends = available_backends()
    avail = {b["name"]: b for b in backends if b.get("available")}
    data = {"backends": backends}
    if "litert" in avail:
        return Check("runtime", OK, f"ai-edge-litert {avail['litert'].get('version') or ''} (fast: XNNPACK int8)",
                     data=data | {"runtime": "litert", "speed": "fast"})
    if "tflite_runtime" in avail:
        return Check("runtime", WARN, f"tflite_runtime {avail['tflite_runtime'].get('version') or ''} only: "
                     "runs, but about 10x slower than ai-edge-litert on int8 SSD models",
                     "pip install ai-edge-litert (in the edge-ssd venv: /opt/edge-ssd/venv/bin/pip install "
                     "ai-edge-litert)", data=data | {"runtime": "tflite_runtime", "speed": "slow"})
    if "tensorflow" in avail:
        return Check("runtime", WARN, "only full TensorFlow (tensorflow.lite) found: works, but heavy",
                     "pip install ai-edge-litert", data=data | {"runtime": "tensorflow", "speed": "ok"})
    return Check("runtime", FAIL, "no TFLite runtime installed: the daemon cannot run a bundle",
                 "pip install ai-edge-litert (64-bit OS, Python >= 3.9; old images: pip install tflite-runtime)",
                 data=data | {"runtime": None, "speed": None})


def measure_invoke(model_path: str | Path, threads: int | None = None, runs: int = 5,
                   backend: str = "auto") -> Check:
    """Load the model and time a few invokes on a zero input (after one warm-up run)."""
    import numpy as np

    from .errors import UserError
    from .runtime.backends import open_backend

    try:
        b = open_backend(model_path, backend=backend, threads=threads)
    except UserError as e:
        return Check("invoke", FAIL, f"cannot load {Path(model_path).name}: {e}",
                     "check the runtime line above and re-copy the bundle")
    x = np.zeros(b.input.shape, dtype=b.input.dtype)
    try:
        b.run(x)
        times = []
        for _ in range(max(1, runs)):
            t0 = time.perf_counter()
            b.run(x)
            times.append((time.perf_counter() - t0) * 1000.0)
    except Exception as e:  # noqa: BLE001 - an interpreter error at invoke time, of any type, is the finding
        return Check("invoke", FAIL, f"{b.describe()}: invoke failed: {str(e).splitlines()[0] if str(e) else e!r}",
                     "re-run `edge-ssd convert` for this device")
    med = statistics.median(times)
    return Check("invoke", OK, f"{b.describe()}: {med:.2f} ms median of {len(times)} invokes "
                 f"(input {'x'.join(map(str, b.input.shape))} {b.input.dtype})",
                 data={"median_ms": med, "times_ms": times, "backend": b.name})


def check_camera(root: str | Path = "/", user: str = SERVICE_USER) -> list[Check]:
    out: list[Check] = []
    pi = is_raspberry_pi(root)
    if importlib.util.find_spec("picamera2") is not None:
        try:
            importlib.import_module("picamera2")
            out.append(Check("picamera2", OK, "picamera2 importable (CSI camera via libcamera)"))
        except Exception as e:  # noqa: BLE001 - any import failure (e.g. a numpy ABI mismatch) is the finding
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            out.append(Check("picamera2", FAIL if pi else WARN, f"picamera2 is installed but fails to import: {msg}",
                             "keep the venv's numpy at the system version (pip install 'numpy<2' when Raspberry Pi "
                             "OS ships numpy 1.x), or re-run deploy/install.sh"))
    elif pi:
        out.append(Check("picamera2", WARN, "picamera2 not importable: CSI cameras (libcamera) unavailable; USB "
                         "cameras still work through OpenCV",
                         "sudo apt install python3-picamera2, and create the venv with --system-site-packages "
                         "(deploy/install.sh does)"))
    else:
        out.append(Check("picamera2", SKIP, "not a Raspberry Pi: CSI camera support not needed (USB/RTSP via OpenCV)"))

    devs = sorted(_rooted(root, "dev").glob("video*"), key=lambda p: (len(p.name), p.name))
    if not devs:
        out.append(Check("camera", WARN, "no /dev/video* device: no local camera (fine for rtsp://, http:// or "
                         "file sources)", "plug in the camera / enable it (libcamera: check `rpicam-hello "
                         "--list-cameras`), then reboot"))
    else:
        unreadable = [p.name for p in devs if not os.access(p, os.R_OK | os.W_OK)]
        names = ", ".join(p.name for p in devs)
        if unreadable:
            out.append(Check("camera", WARN, f"{len(devs)} video device(s) ({names}); not readable by this user "
                             f"({os.getuid()}): {', '.join(unreadable)}", f"sudo usermod -aG video {_me()} and log in "
                             "again", data={"devices": [p.name for p in devs], "unreadable": unreadable}))
        else:
            out.append(Check("camera", OK, f"{len(devs)} video device(s), readable: {names}",
                             data={"devices": [p.name for p in devs]}))
    member = user_in_group(root, user, "video")
    if member is True:
        out.append(Check("video-grp", OK, f"user {user} is in group video"))
    elif member is False:
        out.append(Check("video-grp", WARN, f"user {user} is not in group video: the service cannot open cameras",
                         f"sudo usermod -aG video {user} && sudo systemctl restart edge-ssd"))
    elif _user_gid(root, user) is None:
        out.append(Check("video-grp", SKIP, f"no user {user} here (installed by deploy/install.sh)"))
    else:
        out.append(Check("video-grp", SKIP, "no group video on this system"))
    return out


def _me() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def scan_usb_edgetpu(root: str | Path = "/") -> list[dict]:
    """Coral USB accelerators under root/sys/bus/usb/devices: id, description, speed (Mb/s) and sysfs path."""
    found = []
    base = _rooted(root, "sys/bus/usb/devices")
    if not base.is_dir():
        return found
    for d in sorted(base.iterdir()):
        vid, pid = _read(d / "idVendor"), _read(d / "idProduct")
        if vid is None or pid is None:
            continue
        key = (vid.lower(), pid.lower())
        if key in EDGETPU_USB_IDS:
            speed_s = _read(d / "speed")
            try:
                speed = float(speed_s) if speed_s else None
            except ValueError:
                speed = None
            found.append({"id": f"{key[0]}:{key[1]}", "what": EDGETPU_USB_IDS[key], "speed_mbps": speed,
                          "path": d.name})
    return found


CORAL_PCI_ID = ("0x1ac1", "0x089a")  # Global Unichip Corp. Coral Edge TPU (M.2 / Mini PCIe)
# the Pi 5 lines (boot/firmware/config.txt) a PCIe/M.2 Coral needs, and why
PI5_CORAL_CONFIG = {
    "dtparam=pciex1": "enables the external PCIe connector",
    "kernel=kernel8.img": "the apex driver needs the 4 KB-page kernel (the Pi 5 default kernel_2712 uses 16 KB)",
    "dtoverlay=pcie-32bit-dma-pi5": "the Coral can only DMA to 32-bit addresses",
}
GASKET_FIX = ("build and load the gasket/apex driver: `sudo apt install dkms linux-headers-$(uname -r)` and the "
              "gasket-dkms package (Coral apt repo; on kernels >= 6.x the maintained fork github.com/feranick/"
              "gasket-driver), then `sudo modprobe apex` (or reboot)")


def scan_pci_edgetpu(root: str | Path = "/") -> list[str]:
    """PCI addresses of Coral PCIe/M.2 Edge TPUs under root/sys/bus/pci/devices."""
    base = _rooted(root, "sys/bus/pci/devices")
    if not base.is_dir():
        return []
    return [d.name for d in sorted(base.iterdir())
            if ((_read(d / "vendor") or "").lower(), (_read(d / "device") or "").lower()) == CORAL_PCI_ID]


def _pi5_missing_config(root: str | Path) -> dict[str, str]:
    text = _read(_rooted(root, "boot/firmware/config.txt")) or ""
    lines = {ln.split("#")[0].strip() for ln in text.splitlines()}
    return {k: why for k, why in PI5_CORAL_CONFIG.items() if k not in lines}


def check_gasket(root: str | Path = "/", device: str | None = None) -> list[Check]:
    """A PCIe/M.2 Coral needs the gasket + apex kernel drivers (which make /dev/apex_N); on a Pi 5 also the
    PCIe connector, the 4 KB-page kernel and 32-bit DMA (boot/firmware/config.txt)."""
    pci = scan_pci_edgetpu(root)
    apex = sorted(_rooted(root, "dev").glob("apex_*"))
    model = (_read(_rooted(root, "proc/device-tree/model")) or "").lower()
    pi5 = "raspberry pi 5" in model
    missing = _pi5_missing_config(root) if pi5 else {}
    pi5_fix = "; in /boot/firmware/config.txt add " + ", ".join(f"{k} ({why})" for k, why in missing.items()) \
        if missing else ""
    if not pci:
        if device and device.startswith("pci"):
            return [Check("gasket", FAIL, f"edgetpu_device is {device} but no Coral is on the PCIe bus (no "
                           f"{CORAL_PCI_ID[0]}:{CORAL_PCI_ID[1]} in /sys/bus/pci/devices)",
                          ("seat the M.2/Mini PCIe card and its cable" + pi5_fix + ", then reboot") if pi5
                          else "seat the M.2/Mini PCIe card (check `lspci -nn | grep 089a`), or use a USB Coral")]
        return []
    where = f"Coral PCIe/M.2 Edge TPU at {', '.join(pci)}"
    if apex:
        return [Check("gasket", OK, f"{where}: apex driver loaded ({', '.join(p.name for p in apex)})")]
    loaded = _rooted(root, "sys/module/apex").is_dir()
    if not loaded:
        return [Check("gasket", FAIL, f"{where} but the gasket/apex kernel driver is not loaded (no /dev/apex_0)",
                      GASKET_FIX + pi5_fix + (", then reboot" if pi5_fix else ""),
                      data={"pci": pci, "pi5_missing": list(missing)})]
    return [Check("gasket", FAIL, f"{where}: the apex driver is loaded but made no /dev/apex_0",
                  "install the udev rule for /dev/apex_* (`sudo deploy/install.sh --coral`) and reboot"
                  + pi5_fix, data={"pci": pci, "pi5_missing": list(missing)})]


def check_edgetpu(root: str | Path = "/", required: bool = False, lib: str | None = None,
                  device: str | None = None, model_path: str | Path | None = None) -> list[Check]:
    """Coral USB (ids + link speed) / PCIe (/dev/apex_N, the gasket driver) presence, and whether the Edge TPU
    delegate loads (and runs ``model_path``, an Edge TPU bundle's model, with it): probed in a child process, so a
    libedgetpu that crashes is reported, not fatal."""
    from .runtime.edgetpu_probe import edgetpu_lib, probe_edgetpu

    out: list[Check] = []
    usb = scan_usb_edgetpu(root)
    apex = sorted(p.name for p in _rooted(root, "dev").glob("apex_*"))
    for dev in usb:
        sp = dev["speed_mbps"]
        where = f"{dev['what']} ({dev['id']}) at usb {dev['path']}"
        if sp is None:
            out.append(Check("edgetpu", OK, f"{where}, link speed unknown", data=dev))
        elif sp < 5000:
            out.append(Check("edgetpu", WARN, f"{where} on a USB 2 link ({sp:g} Mb/s): inference several times "
                             "slower (model transfer and I/O bound)",
                             "plug the Coral into a USB 3 port (blue) with a USB 3 cable", data=dev))
        else:
            out.append(Check("edgetpu", OK, f"{where} on a USB 3 link ({sp:g} Mb/s)", data=dev))
    for name in apex:
        out.append(Check("edgetpu", OK, f"Coral PCIe/M.2 Edge TPU /dev/{name}", data={"device": name}))
    gasket = check_gasket(root, device)
    out.extend(c for c in gasket if c.status != OK)
    present = bool(usb or apex)
    if not present:
        if gasket:
            return out
        if required:
            out.append(Check("edgetpu", FAIL, "the model/config targets the Edge TPU but no Coral is connected "
                             "(no USB 1a6e:089a / 18d1:9302, no /dev/apex_0)",
                             "plug in the Coral (and for PCIe install gasket-dkms), or use a CPU bundle"))
        else:
            out.append(Check("edgetpu", SKIP, "no Coral Edge TPU found (CPU inference)"))
        return out
    probe = probe_edgetpu(device, model_path=model_path, lib=lib or edgetpu_lib())
    if probe.ok:
        out.append(Check("libedgetpu", OK, probe.message(), data={"status": probe.status}))
    else:
        out.append(Check("libedgetpu", FAIL, probe.message(), probe.fix(), data={"status": probe.status}))
    return out


# complexity: one branch per connection failure, each its own message
def check_broker(host: str, port: int = 1883, username: str | None = None, password: str | None = None,  # noqa: C901
                 tls: Any = None, timeout: float = 5.0, client_id: str | None = None,
                 keepalive: int = 30) -> Check:
    """Connect with paho and report the CONNACK: OK, bad credentials / not authorised, or unreachable."""
    import paho.mqtt.client as mqtt

    url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"edge-ssd-doctor-{os.getpid()}",
                         protocol=mqtt.MQTTv311)
    client.connect_timeout = timeout
    if username:
        client.username_pw_set(username, password)
    if tls:
        try:
            client.tls_set(ca_certs=getattr(tls, "ca", None), certfile=getattr(tls, "cert", None),
                           keyfile=getattr(tls, "key", None))
        except (OSError, ssl.SSLError) as e:
            return Check("mqtt", FAIL, f"{url}: TLS setup failed: {e}", "check mqtt.tls.ca/cert/key paths")
        if getattr(tls, "insecure", False):
            client.tls_insecure_set(True)
    result: dict[str, Any] = {}

    def on_connect(_c, _u, _flags, reason_code, _props):
        result["rc"] = reason_code

    def on_disconnect(_c, _u, _flags, reason_code, _props):
        result.setdefault("disconnect", reason_code)

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    unreachable_fix = (f"start the broker or fix mqtt.host/port in the config (test: mosquitto_sub -h {host} "
                       f"-p {port} -t '#' -C 1)")
    t0 = time.monotonic()
    try:
        client.connect(host, port, keepalive)
    except ConnectionRefusedError:
        return Check("mqtt", FAIL, f"{url}: connection refused (nothing listens there)", unreachable_fix,
                     data={"reason": "refused"})
    except socket.gaierror as e:
        return Check("mqtt", FAIL, f"{url}: cannot resolve host {host!r} ({e.strerror})",
                     "fix mqtt.host (hostname or IP of the broker)", data={"reason": "dns"})
    except TimeoutError:
        return Check("mqtt", FAIL, f"{url}: no answer within {timeout:g} s (firewall or wrong host)", unreachable_fix,
                     data={"reason": "timeout"})
    except ssl.SSLError as e:
        return Check("mqtt", FAIL, f"{url}: TLS handshake failed ({e.reason or e})",
                     "check mqtt.tls.ca matches the broker's certificate (and the port is the TLS one)",
                     data={"reason": "tls"})
    except OSError as e:
        return Check("mqtt", FAIL, f"{url}: cannot connect ({e.strerror or e})", unreachable_fix,
                     data={"reason": "oserror"})
    deadline = t0 + timeout
    try:
        while "rc" not in result and "disconnect" not in result and time.monotonic() < deadline:
            client.loop(timeout=0.1)
    finally:
        try:
            client.disconnect()
        except Exception:  # noqa: BLE001 - already closed by the broker
            pass
    ms = (time.monotonic() - t0) * 1000.0
    rc = result.get("rc")
    if rc is None:
        why = "closed the connection" if "disconnect" in result else f"sent no CONNACK within {timeout:g} s"
        return Check("mqtt", FAIL, f"{url}: the broker {why} (not an MQTT port, or TLS expected?)",
                     "check mqtt.port (1883 plain, 8883 TLS) and mqtt.tls", data={"reason": "no-connack"})
    code = getattr(rc, "value", rc)
    who = f" as {username!r}" if username else " anonymously"
    if not rc.is_failure:
        return Check("mqtt", OK, f"{url}: connected{who} (CONNACK: {rc}, {ms:.0f} ms)",
                     data={"reason": "ok", "connack": code, "ms": ms})
    if code in (134, 135, 140):  # bad user name or password / not authorized / bad authentication method
        fix = ("set mqtt.username and mqtt.password_file (or EDGE_SSD_MQTT_PASSWORD) to an account of the broker"
               if not username else "check mqtt.username and the password (password_file / EDGE_SSD_MQTT_PASSWORD)")
        return Check("mqtt", FAIL, f"{url}: the broker rejected the login{who}: {rc} (CONNACK reason code {code})", fix,
                     data={"reason": "credentials", "connack": code})
    return Check("mqtt", FAIL, f"{url}: connection refused by the broker: {rc} (CONNACK reason code {code})",
                 "see the broker's log for the reason", data={"reason": "refused-by-broker", "connack": code})


def check_bundle(path: str | Path) -> tuple[Check, Any]:
    """Manifest valid and model sha256 matching; returns (check, manifest or None)."""
    from .model.bundle import BundleError, load_manifest

    try:
        m, model_path = load_manifest(path, verify=True)
    except BundleError as e:
        return Check("bundle", FAIL, str(e), "copy the bundle directory again (or re-run `edge-ssd convert`)",
                     data={"path": str(path)}), None
    size = model_path.stat().st_size
    return Check("bundle", OK, f"{path}: {m.target} model {m.input.width}x{m.input.height} {m.input.dtype}, "
                 f"{len(m.labels)} labels, sha256 {m.model_sha256[:12]} verified ({size / 1e6:.1f} MB)",
                 data={"path": str(path), "model": str(model_path), "target": m.target}), (m, model_path)


def check_password_file(path: str | Path, user: str = SERVICE_USER) -> Check:
    """The MQTT password file must not be readable by others, nor by a group other than the service user's."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        return Check("secrets", FAIL, f"{p}: cannot read the MQTT password file ({e.strerror})",
                     f"create it: install -m 0640 -o root -g {user} /dev/null {p}, then write the password into it")
    fix = f"sudo chown root:{user} {p} && sudo chmod 0640 {p}"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    if st.st_mode & 0o004:
        return Check("secrets", FAIL, f"{p}: the MQTT password file is readable by every user (mode "
                     f"{st.st_mode & 0o777:04o})", fix)
    if st.st_mode & 0o040 and group != user:
        return Check("secrets", WARN, f"{p}: the MQTT password file is readable by group {group} (mode "
                     f"{st.st_mode & 0o777:04o})", fix)
    return Check("secrets", OK, f"{p}: MQTT password file mode {st.st_mode & 0o777:04o}, group {group}")


def check_space(path: str | Path, warn_mb: float = SPOOL_WARN_MB, fail_mb: float = SPOOL_FAIL_MB) -> Check:
    p = Path(path)
    base = p
    while not base.exists() and base != base.parent:
        base = base.parent
    where = str(p) if base == p else f"{p} (not created yet; {base})"
    if not base.is_dir():
        return Check("spool", FAIL, f"{where}: {base} is not a directory",
                     "move the file away or set spool.dir to a directory", data={"path": str(p)})
    if os.statvfs(base).f_flag & os.ST_RDONLY:
        return Check("spool", FAIL, f"{where}: on a read-only file system: the offline spool cannot be written",
                     "remount it read-write, or set spool.dir to a writable place (e.g. /var/lib/edge-ssd/spool)",
                     data={"path": str(p), "checked": str(base)})
    du = shutil.disk_usage(base)
    if du.total == 0:  # /proc, /sys: "0 MB free" would send the user to apt-get clean for nothing
        return Check("spool", FAIL, f"{where}: not on a disk ({base} is a virtual file system)",
                     "set spool.dir to a directory on the disk (default /var/lib/edge-ssd/spool)",
                     data={"path": str(p), "checked": str(base)})
    free_mb = du.free / 1e6
    data = {"path": str(p), "checked": str(base), "free_mb": free_mb}
    if free_mb < fail_mb:
        return Check("spool", FAIL, f"{where}: only {free_mb:.0f} MB free: the offline spool cannot hold messages",
                     "free disk space (sudo apt-get clean; journalctl --vacuum-size=50M)", data=data)
    if free_mb < warn_mb:
        return Check("spool", WARN, f"{where}: {free_mb:.0f} MB free (< {warn_mb} MB): a long broker outage may "
                     "fill the disk", "free disk space or lower spool.max_bytes", data=data)
    if p.exists() and not os.access(p, os.W_OK):
        return Check("spool", WARN, f"{where}: {free_mb:.0f} MB free, but not writable by {_me()}",
                     "run the daemon as the edge-ssd user (the systemd unit does) or chown the directory", data=data)
    return Check("spool", OK, f"{where}: {free_mb:.0f} MB free", data=data)


def decode_throttled(value: int) -> list[str]:
    return [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]


def check_thermal(root: str | Path = "/", vcgencmd: str | None = None) -> list[Check]:
    out: list[Check] = []
    raw = _read(_rooted(root, "sys/class/thermal/thermal_zone0/temp"))
    if raw is None:
        out.append(Check("cpu-temp", SKIP, "no thermal zone (/sys/class/thermal/thermal_zone0)"))
    else:
        try:
            c = int(raw) / 1000.0
        except ValueError:
            out.append(Check("cpu-temp", WARN, f"unreadable temperature {raw!r}", "check the thermal driver"))
        else:
            data = {"celsius": c}
            if c >= TEMP_HOT_C:
                out.append(Check("cpu-temp", WARN, f"CPU at {c:.1f} C: the firmware throttles the clock from "
                                 f"{TEMP_HOT_C:.0f} C", "add a heatsink and a fan (or the official case fan)",
                                 data=data))
            elif c >= TEMP_WARN_C:
                out.append(Check("cpu-temp", WARN, f"CPU at {c:.1f} C: close to the throttling point "
                                 f"({TEMP_HOT_C:.0f} C)", "improve cooling (heatsink / fan / airflow)", data=data))
            else:
                out.append(Check("cpu-temp", OK, f"CPU at {c:.1f} C", data=data))
    exe = vcgencmd or shutil.which("vcgencmd")
    if not exe:
        if is_raspberry_pi(root):
            out.append(Check("throttle", WARN, "vcgencmd not found: cannot read the throttling state",
                             "sudo apt install libraspberrypi-bin (Bookworm) / raspi-utils (Trixie)"))
        return out
    try:
        r = subprocess.run([exe, "get_throttled"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired) as e:
        out.append(Check("throttle", WARN, f"vcgencmd get_throttled failed: {e}", "run it by hand to see why"))
        return out
    text = (r.stdout or "").strip()
    if r.returncode != 0 or "=" not in text:
        err = (r.stderr or text).strip().splitlines()
        out.append(Check("throttle", WARN, f"vcgencmd get_throttled: {err[0] if err else 'no output'}",
                         "add the user to group video (vcgencmd needs /dev/vchiq)"))
        return out
    try:
        value = int(text.split("=", 1)[1], 16)
    except ValueError:
        out.append(Check("throttle", WARN, f"cannot parse vcgencmd output {text!r}", "run vcgencmd get_throttled"))
        return out
    flags = decode_throttled(value)
    data = {"value": value, "flags": flags}
    now = [f for b, f in THROTTLE_BITS.items() if b < 16 and value & (1 << b)]
    if not flags:
        out.append(Check("throttle", OK, "not throttled, no under-voltage since boot (0x0)", data=data))
    elif now:
        power = value & 0x1
        out.append(Check("throttle", WARN, f"0x{value:x}: now {', '.join(now)}"
                         + (f"; since boot: {', '.join(f for f in flags if f not in now)}" if len(flags) > len(now)
                            else ""),
                         POWER_FIX if power else "improve cooling (heatsink and fan)", data=data))
    else:
        power = value & (1 << 16)
        out.append(Check("throttle", WARN, f"0x{value:x}: since boot: {', '.join(flags)}",
                         POWER_FIX if power
                         else "improve cooling (heatsink and fan)", data=data))
    return out


# ---------------------------------------------------------------------------------------------- runner

@dataclass
class Report:
    checks: list[Check]

    @property
    def exit_code(self) -> int:
        return 1 if any(c.status == FAIL for c in self.checks) else 0

    def counts(self) -> dict[str, int]:
        return {s.lower(): sum(c.status == s for c in self.checks) for s in STATUSES}

    def as_dict(self) -> dict[str, Any]:
        return {"checks": [c.as_dict() for c in self.checks], "summary": self.counts(), "exit_code": self.exit_code}

    def text(self) -> str:
        lines = [c.line() for c in self.checks]
        n = self.counts()
        verdict = ("FAIL: the daemon cannot run as configured" if n["fail"] else
                   "OK with warnings" if n["warn"] else "OK")
        lines.append(f"{verdict} ({n['ok']} ok, {n['warn']} warnings, {n['fail']} failures, {n['skip']} skipped)")
        return "\n".join(lines)


def run_checks(config: str | Path | None = None, bundle: str | Path | None = None, root: str | Path = "/",
               user: str = SERVICE_USER, timeout: float = 5.0, invoke_runs: int = 5,
               spool_dir: str | Path | None = None) -> Report:
    """All checks, in order. ``config`` defaults to root/etc/edge-ssd/config.yaml when it exists."""
    checks: list[Check] = [check_python()]
    loaded = None
    cfg_path = Path(config) if config else _rooted(root, DEFAULT_CONFIG)
    if config or cfg_path.is_file():
        from .daemon.config import load_config
        from .errors import UserError

        try:
            loaded = load_config(cfg_path)
            checks.append(Check("config", OK, f"{cfg_path}: valid (device {loaded.config.device})"))
        except UserError as e:
            problems = list(getattr(e, "problems", None) or [str(e)])
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            checks.append(Check("config", FAIL, "; ".join(problems[:3]) + more,
                                "fix the config (edge-ssd config check shows every problem)",
                                data={"problems": problems}))
    else:
        checks.append(Check("config", SKIP, f"no config at {cfg_path} (pass --config FILE)"))
    cfg = loaded.config if loaded else None

    bundle_path = Path(bundle) if bundle else None
    if bundle_path is None and cfg is not None:
        b = Path(cfg.model.bundle)
        if not b.is_absolute() and not b.exists():
            b = cfg_path.parent / b
        bundle_path = b
    required_tpu = bool(cfg and cfg.model.backend == "edgetpu")
    bundle_info = None
    if bundle_path is not None:
        from .model.bundle import is_bundle

        if is_bundle(bundle_path) or bundle:
            chk, bundle_info = check_bundle(bundle_path)
            checks.append(chk)
            if bundle_info and bundle_info[0].target == "edgetpu":
                required_tpu = True
        else:
            checks.append(Check("bundle", SKIP if bundle_path.is_file() else FAIL,
                                f"{bundle_path}: not a bundle directory" + (" (a plain model file: no manifest to "
                                                                            "verify)" if bundle_path.is_file() else
                                                                            " and no such file"),
                                "set model.bundle to a directory written by `edge-ssd convert`"))
    else:
        checks.append(Check("bundle", SKIP, "no bundle given (pass --model BUNDLE or a config)"))

    rt = check_runtime()
    checks.append(rt)
    if bundle_info and rt.status != FAIL:
        threads = cfg.model.threads if cfg else None
        checks.append(measure_invoke(bundle_info[1], threads=threads, runs=invoke_runs))
    tpu_model = bundle_info[1] if bundle_info and bundle_info[0].target == "edgetpu" else None
    checks.extend(check_edgetpu(root, required=required_tpu, device=cfg.model.edgetpu_device if cfg else None,
                                model_path=tpu_model))
    checks.extend(check_camera(root, user=user))

    if cfg is not None and cfg.mqtt is not None and cfg.mqtt.password_file:
        pf = Path(os.path.expandvars(cfg.mqtt.password_file)).expanduser()
        checks.append(check_password_file(pf if pf.is_absolute() else cfg_path.parent / pf, user=user))
    for w in loaded.warnings if loaded else []:
        checks.append(Check("secrets", WARN, w, "move the password out of the config file"))
    if cfg is not None and cfg.mqtt is not None:
        m = cfg.mqtt
        checks.append(check_broker(m.host, m.port, m.username, loaded.password, tls=m.tls, timeout=timeout,
                                   keepalive=m.keepalive))
    else:
        checks.append(Check("mqtt", SKIP, "no mqtt section configured (detections go to stdout/file only)"))

    if spool_dir is None:
        # a configured path is taken as written; the default lives under root (the fake tree in tests)
        spool_dir = cfg.spool.resolved_dir() if cfg else _rooted(root, "var/lib/edge-ssd/spool")
    checks.append(check_space(spool_dir))
    checks.extend(check_thermal(root))
    return Report(checks)
