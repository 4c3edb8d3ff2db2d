"""The device side of a bundle roll-out (docs/fleet.md).

A retained command on ``<prefix>/<device>/model/set`` (or fleet-wide on ``<prefix>/all/model/set``; the
device's own topic wins when both hold one) names ``{url, sha256, version}``. A worker thread downloads the
archive with the resumable fetch (``<store>/downloads/<sha256>.tar.part``, resumed with a Range request after
an interruption or a restart), checks its sha256, unpacks it into a new directory, checks the manifest's
Ed25519 signature when ``rollout.public_key`` is set and the model file's sha256, and hands the candidate to
the daemon's main loop. The daemon loads it, runs the pipeline on it, and after ``rollout.check_frames`` good
frames calls :meth:`Rollout.activate` (the store's ``state.json`` is replaced atomically: only then does a
restart use the new bundle); an error on those frames, or none within ``check_timeout``, puts the previous
bundle back (:meth:`Rollout.rolled_back`). Every step is reported, retained, on ``<prefix>/<device>/model/state``.

A bundle that failed verification or its first frames is not tried again when its retained command is
re-delivered (reconnects, restarts); publishing the command again (``edge-ssd push-bundle``) retries it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import UserError
from ..model.bundle import BundleError, load_manifest
from .archive import load_public_key, unpack_bundle, verify_signature

log = logging.getLogger("edge_ssd.rollout")

STATE_FILE = "state.json"
VERSION_RE = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"
ECHO_WINDOW = 30.0  # s: the same live command again this soon is a copy (a site bridge), not a re-push
STATES = ("downloading", "verifying", "active", "rolled-back", "failed")


class Command(BaseModel):
    """The roll-out command (JSON). Unknown keys are ignored so that newer pushers stay compatible."""

    model_config = ConfigDict(extra="ignore")
    url: str = Field(pattern=r"^https?://\S+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    version: str = Field(pattern=VERSION_RE)
    size: int | None = Field(default=None, ge=1)


def parse_command(payload: bytes) -> Command:
    """Raises ``UserError`` with one line naming what is wrong."""
    try:
        data = json.loads(payload)
    except ValueError:
        raise UserError("command is not JSON; send {\"url\", \"sha256\", \"version\"}") from None
    if not isinstance(data, dict):
        raise UserError("command is not a JSON object; send {\"url\", \"sha256\", \"version\"}")
    try:
        cmd = Command.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"]) or "command"
        raise UserError(f"command {where}: {err['msg']}") from None
    return cmd.model_copy(update={"sha256": cmd.sha256.lower()})


@dataclass(frozen=True)
class Candidate:
    command: Command
    path: Path


class BundleStore:
    """``<root>/downloads/`` (archives), ``<root>/<version>-<sha12>.bundle/`` (unpacked) and ``state.json``:
    ``{"active": entry, "previous": entry, "base": configured bundle, "failed": {sha256: reason}}`` with
    ``entry = {"version", "sha256", "dir"}``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.downloads = self.root / "downloads"
        try:
            self.downloads.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"rollout.dir {self.root}: cannot create it ({e.strerror}); fix rollout.dir or its "
                            "permissions") from None
        self.state = self._read()

    def _read(self) -> dict:
        p = self.root / STATE_FILE
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            return {"failed": {}}
        except (OSError, ValueError) as e:
            log.error("rollout: %s unreadable (%s); starting from the configured bundle", p, e)
            return {"failed": {}}
        data.setdefault("failed", {})
        return data

    def _write(self) -> None:
        p = self.root / STATE_FILE
        tmp = p.with_name(STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)

    def active(self, configured: str) -> dict | None:
        """The rolled-out bundle in use, or None (the configured bundle is used): a changed ``model.bundle``
        in the config wins over an earlier roll-out."""
        a = self.state.get("active")
        if not a or self.state.get("base") != configured:
            return None
        return a

    def bundle_dir(self, entry: dict) -> Path:
        return self.root / entry["dir"]

    def download(self, cmd: Command) -> Path:
        from ..nets.fetch import download

        return download(cmd.url, self.downloads / f"{cmd.sha256}.tar", expected_size=cmd.size, sha256=cmd.sha256,
                        retries=3, timeout=30.0, progress=False)

    def unpack(self, archive: Path, cmd: Command, verify) -> Path:
        """Unpack into a temporary directory, ``verify(dir)`` it there, then rename it into place."""
        name = f"{cmd.version}-{cmd.sha256[:12]}.bundle"
        tmp = self.root / f".incoming-{name}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            unpack_bundle(archive, tmp)
            verify(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.root / name
        if final.exists() and not self._in_use(name):
            shutil.rmtree(final)
        if not final.exists():
            os.replace(tmp, final)
        else:
            shutil.rmtree(tmp)
        return final

    def _in_use(self, name: str) -> bool:
        return any((self.state.get(k) or {}).get("dir") == name for k in ("active", "previous"))

    def commit(self, cand: Candidate, configured: str) -> None:
        st = self.state
        prev = st.get("active") if st.get("base") == configured else None
        st.update(active={"version": cand.command.version, "sha256": cand.command.sha256, "dir": cand.path.name},
                  previous=prev, base=configured)
        st["failed"].pop(cand.command.sha256, None)
        self._write()
        self._prune()

    def mark_failed(self, sha256: str, reason: str) -> None:
        self.state["failed"][sha256] = reason[:300]
        self._write()

    def _prune(self) -> None:
        """Keep the active and previous bundles; drop older ones and finished archives."""
        keep = {(self.state.get(k) or {}).get("dir") for k in ("active", "previous")}
        for p in self.root.glob("*.bundle"):
            if p.name not in keep:
                shutil.rmtree(p, ignore_errors=True)
        active_sha = self.state["active"]["sha256"]
        (self.downloads / f"{active_sha}.tar").unlink(missing_ok=True)


class Rollout:
    """Commands in (from the MQTT I/O thread), a download/verify worker thread, reports out (drained by the
    daemon's main loop, which also does the swap)."""

    def __init__(self, root: str | Path, public_key: str | None, configured: str):
        self.store = BundleStore(root)
        self.key = load_public_key(public_key) if public_key else None
        self.configured = configured
        self._lock = threading.Lock()
        self._commands: dict[str, Command | None] = {"device": None, "all": None}
        self._forced: set[str] = set()  # sha256s re-published live: retried even if they failed before
        self._last_live: dict[str, tuple[bytes, float]] = {}  # scope -> (payload, when): bridge echoes
        self._handled: set[str] = set()  # sha256s finished (either way) in this process
        self._reports: deque[dict] = deque()
        self._ready: Candidate | None = None
        self._trying: Candidate | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rollout", daemon=True)

    # -- the daemon's side ----------------------------------------------------------------------------------
    def start(self) -> Rollout:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def bundle_for(self) -> str:
        """The bundle to load at start: the committed roll-out if it still verifies, else the configured one."""
        entry = self.store.active(self.configured)
        if entry is None:
            return self.configured
        d = self.store.bundle_dir(entry)
        try:
            self._verify(d)
        except BundleError as e:
            log.error("rollout: active bundle %s fails its checks (%s); using the configured %s", d, e,
                      self.configured)
            return self.configured
        return str(d)

    def take_candidate(self) -> Candidate | None:
        with self._lock:
            cand, self._ready = self._ready, None
            self._trying = cand
            return cand

    def take_reports(self) -> list[dict]:
        with self._lock:
            out = list(self._reports)
            self._reports.clear()
            return out

    def activate(self, cand: Candidate) -> None:
        self.store.commit(cand, self.configured)
        self._finish(cand, "active", None)

    def rolled_back(self, cand: Candidate, reason: str) -> None:
        self.store.mark_failed(cand.command.sha256, reason)
        self._finish(cand, "rolled-back", reason)

    def failed(self, cand: Candidate, reason: str) -> None:
        self.store.mark_failed(cand.command.sha256, reason)
        self._finish(cand, "failed", reason)

    def _finish(self, cand: Candidate, state: str, reason: str | None) -> None:
        with self._lock:
            self._trying = None
            self._handled.add(cand.command.sha256)
        self._report(state, cand.command, reason)
        self._wake.set()  # a newer command may be waiting

    # -- commands (MQTT I/O thread) -------------------------------------------------------------------------
    def on_command(self, scope: str):
        """A callback for ``MqttPublisher.subscribe``: ``scope`` is "device" or "all"."""

        def handle(topic: str, payload: bytes, retained: bool) -> None:
            if not payload:
                with self._lock:
                    self._commands[scope] = None
                return
            try:
                cmd = parse_command(payload)
            except UserError as e:
                log.error("rollout: ignoring the command on %s: %s", topic, e)
                self._report("failed", None, f"bad command on {topic}: {e}")
                return
            now = time.monotonic()
            with self._lock:
                self._commands[scope] = cmd
                last = self._last_live.get(scope)
                echo = last is not None and last[0] == payload and now - last[1] < ECHO_WINDOW
                if not retained and not echo:  # published now (not a re-delivery): try it even if it failed
                    self._forced.add(cmd.sha256)
                    self._last_live[scope] = (payload, now)
            self._wake.set()

        return handle

    # -- worker ---------------------------------------------------------------------------------------------
    def _next(self) -> Command | None:
        with self._lock:
            if self._ready is not None or self._trying is not None:
                return None
            cmd = self._commands["device"] or self._commands["all"]
            if cmd is None:
                return None
            forced = cmd.sha256 in self._forced
            self._forced.discard(cmd.sha256)
        active = self.store.active(self.configured)
        if active and active["sha256"] == cmd.sha256:
            if forced or cmd.sha256 not in self._handled:
                self._handled.add(cmd.sha256)
                self._report("active", cmd, None)
            return None
        if not forced and (cmd.sha256 in self._handled or cmd.sha256 in self.store.state["failed"]):
            return None
        return cmd

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            cmd = self._next()
            if cmd is not None:
                self._prepare(cmd)

    def _prepare(self, cmd: Command) -> None:
        self._report("downloading", cmd, None)
        try:
            archive = self.store.download(cmd)
        except UserError as e:  # network or sha256: not remembered as failed, a re-delivery tries again
            with self._lock:
                self._handled.add(cmd.sha256)
            self._report("failed", cmd, str(e))
            return
        self._report("verifying", cmd, None)
        try:
            path = self.store.unpack(archive, cmd, self._verify)
        except (BundleError, OSError) as e:
            reason = f"bundle {cmd.version} rejected: {e}"
            (self.store.downloads / f"{cmd.sha256}.tar").unlink(missing_ok=True)
            self.store.mark_failed(cmd.sha256, reason)
            with self._lock:
                self._handled.add(cmd.sha256)
            self._report("failed", cmd, reason)
            return
        with self._lock:
            self._ready = Candidate(cmd, path)

    def _verify(self, path: Path) -> None:
        if self.key is not None:
            verify_signature(path, self.key)
        load_manifest(path, verify=True)

    def _report(self, state: str, cmd: Command | None, reason: str | None) -> None:
        active = self.store.active(self.configured)
        msg = {"schema": 1, "state": state, "ts": round(time.time(), 3),
               "version": cmd.version if cmd else None, "sha256": cmd.sha256 if cmd else None,
               "active": {"version": active["version"], "sha256": active["sha256"]} if active else
               {"version": None, "bundle": self.configured}}
        if reason:
            msg["reason"] = reason
        (log.info if state in ("downloading", "verifying", "active") else log.error)(
            "rollout: %s%s%s", state, f" {cmd.version}" if cmd else "", f": {reason}" if reason else "")
        with self._lock:
            self._reports.append(msg)
