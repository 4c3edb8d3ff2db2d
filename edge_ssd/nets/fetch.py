"""Download the author's pretrained pytorch-ssd models into a local cache, resumably.

Downloads go to ``<dest>.part`` and are resumed with an HTTP ``Range`` request after an interruption (in the
same run, with retries, or in a later run). The final size is checked against the server's Content-Length /
Content-Range and the known size, the sha256 when one is known or given, and only then is the ``.part``
renamed into place. Standard library only (urllib).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

log = logging.getLogger(__name__)

_BASE = "https://storage.googleapis.com/models-hao/"
VOC_LABELS_URL = _BASE + "voc-model-labels.txt"
USER_AGENT = "edge-ssd-fetch/1"
CHUNK = 1 << 16


@dataclass(frozen=True)
class ModelSpec:
    name: str
    arch: str
    url: str
    labels_url: str
    num_classes: int
    width_mult: float = 1.0
    size: int | None = None  # bytes, when known
    sha256: str | None = None  # when known
    note: str = ""


# the author's published VOC models (qfgaohao/pytorch-ssd README, "Pretrained Models")
MODELS: dict[str, ModelSpec] = {
    "mb1-ssd-voc": ModelSpec(
        "mb1-ssd-voc", "mb1-ssd", _BASE + "mobilenet-v1-ssd-mp-0_675.pth", VOC_LABELS_URL, 21,
        note="MobileNetV1 SSD, VOC, mAP 0.675",
    ),
    "mb2-ssd-lite-voc": ModelSpec(
        "mb2-ssd-lite-voc", "mb2-ssd-lite", _BASE + "mb2-ssd-lite-mp-0_686.pth", VOC_LABELS_URL, 21,
        note="MobileNetV2 SSD-Lite, VOC, mAP 0.686",
    ),
}  # fmt: skip


def cache_dir(cache: str | os.PathLike | None = None) -> Path:
    """``cache``, else ``$EDGE_SSD_CACHE/models``, else ``~/.cache/edge-ssd/models``."""
    if cache:
        return Path(cache).expanduser()
    env = os.environ.get("EDGE_SSD_CACHE")
    if env:
        return Path(env).expanduser() / "models"
    return Path.home() / ".cache" / "edge-ssd" / "models"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class _Retry(Exception):
    """A transient failure: the download may be resumed."""


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(getattr(e, "reason", e))
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed after {len(e.partial)} bytes of a chunk"
    return str(e) or type(e).__name__


def _total_from(resp, start: int) -> int | None:
    cr = resp.headers.get("Content-Range")
    if cr:
        m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", cr.strip())
        if m and m.group(3) != "*":
            return int(m.group(3))
    cl = resp.headers.get("Content-Length")
    if cl is not None and cl.strip().isdigit():
        return int(cl) + (start if resp.status == 206 else 0)
    return None


# complexity: one branch per HTTP outcome: retry, resume, restart or fail
def _attempt(url: str, part: Path, expected_size: int | None, timeout: float, progress: bool, desc: str) -> None:  # noqa: C901
    """One request: resume ``part`` from its current size. Raises _Retry for transient problems."""
    from tqdm import tqdm

    start = part.stat().st_size if part.exists() else 0
    if expected_size is not None and start > expected_size:
        part.unlink()
        start = 0
    headers = {"User-Agent": USER_AGENT}
    if start:
        headers["Range"] = f"bytes={start}-"
    req = urllib.request.Request(url, headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:
            # nothing left to send from `start`: complete if the server's total says so, else start over
            total = None
            m = re.search(r"/(\d+)", e.headers.get("Content-Range", "") or "")
            if m:
                total = int(m.group(1))
            if total is not None and total == start and (expected_size is None or expected_size == start):
                return
            part.unlink()
            raise _Retry("server refused the resume range; restarting from zero") from None
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(_reason(e)) from None
        raise UserError(f"cannot download {url}: {_reason(e)}; check the address or pass --url with a mirror") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_reason(e)) from None
    with resp:
        if start and resp.status != 206:
            start = 0  # server ignored Range: it sends the whole file again
        total = _total_from(resp, start)
        if expected_size is not None and total is not None and total != expected_size:
            raise UserError(
                f"{url} is {total} bytes but {desc} should be {expected_size}; the address serves another file - "
                "pass --url with the right one"
            )
        total = total if total is not None else expected_size
        mode = "ab" if start else "wb"
        bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                   disable=None if progress else True, leave=False)  # fmt: skip
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Retry(_reason(e)) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    size = part.stat().st_size
    if total is not None and size < total:
        raise _Retry(f"connection closed at {size} of {total} bytes")
    if total is not None and size > total:
        part.unlink()
        raise UserError(
            f"{url} sent {size} bytes but announced {total}; the server is misbehaving - try again later or use --url"
        )


def download(
    url: str,
    dest: str | os.PathLike,
    expected_size: int | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    backoff: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part`` with resume, size and optional sha256 checks.

    An existing ``dest`` that passes the checks is reused. Failures are one-line ``UserError``\\ s; a partial
    file is kept for the next run unless it is known to be wrong.
    """
    dest = Path(dest)
    desc = dest.name
    if dest.exists():
        ok = expected_size is None or dest.stat().st_size == expected_size
        ok = ok and (sha256 is None or sha256_of(dest) == sha256.lower())
        if ok:
            return dest
        log.warning("cached %s fails its size/sha256 check; downloading it again", dest)
        dest.unlink()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create cache directory {str(dest.parent)!r} ({e.strerror}); pass --cache DIR"
        ) from None
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _attempt(url, part, expected_size, timeout, progress, desc)
            break
        except _Retry as e:
            attempt += 1
            kept = part.stat().st_size if part.exists() else 0
            if attempt > retries:
                resume = f"; {kept} bytes kept in {part}, run again to resume" if kept else ""
                raise UserError(
                    f"cannot download {url}: {e} (after {attempt} attempts){resume}; check the network or pass --url "
                    "with a mirror"
                ) from None
            log.warning("download of %s interrupted (%s); retry %d/%d from byte %d", url, e, attempt, retries, kept)
            time.sleep(backoff * attempt)
    size = part.stat().st_size
    if expected_size is not None and size != expected_size:
        part.unlink()
        raise UserError(f"{url} gave {size} bytes, expected {expected_size}; run again or pass --url with a mirror")
    if sha256 is not None:
        got = sha256_of(part)
        if got != sha256.lower():
            part.unlink()
            raise UserError(
                f"sha256 of {url} is {got[:16]}..., expected {sha256.lower()[:16]}...; the download is corrupt or "
                "the file changed - run again, or check --sha256"
            )
    os.replace(part, dest)
    return dest


def _name_from_url(url: str, default: str) -> str:
    tail = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return tail if re.fullmatch(r"[A-Za-z0-9._-]+", tail or "") else default


@dataclass
class Fetched:
    name: str
    arch: str
    weights: Path
    labels: Path
    num_classes: int
    width_mult: float


def cached_paths(name: str, cache: str | os.PathLike | None = None, url: str | None = None) -> tuple[Path, Path]:
    """Where ``fetch_model(name)`` puts the weights and the labels: ``<cache>/<name>/<file of the URL>`` and
    ``<cache>/<name>/labels.txt``."""
    folder = cache_dir(cache) / name
    return folder / _name_from_url(url or MODELS[name].url, "weights.pth"), folder / "labels.txt"


def fetch_model(
    name: str,
    cache: str | os.PathLike | None = None,
    url: str | None = None,
    labels_url: str | None = None,
    sha256: str | None = None,
    retries: int = 3,
    timeout: float = 30.0,
    progress: bool = True,
    verify: bool = True,
) -> Fetched:
    """Fetch a known model (weights + labels) into ``cache_dir(cache)/<name>/``; returns the paths.

    With ``verify`` the checkpoint is strictly loaded into the matching network (needs torch).
    """
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    spec = MODELS[name]
    w_url = url or spec.url
    w_dest, l_dest = cached_paths(name, cache, url)
    weights = download(
        w_url, w_dest,
        expected_size=spec.size if url is None else None,
        sha256=sha256 or (spec.sha256 if url is None else None),
        retries=retries, timeout=timeout, progress=progress,
    )  # fmt: skip
    l_url = labels_url or spec.labels_url
    labels = download(l_url, l_dest, retries=retries, timeout=timeout, progress=False)
    from .export import read_labels

    n = len(read_labels(labels))
    if n != spec.num_classes:
        raise UserError(
            f"{l_url} lists {n} classes, expected {spec.num_classes}; pass --labels-url with the right file"
        )
    if verify:
        from .build import create_net, load_weights

        try:
            load_weights(create_net(spec.arch, spec.num_classes, spec.width_mult), weights)
        except UserError as e:
            raise UserError(f"downloaded {weights} is not a usable {spec.arch} checkpoint: {e}") from None
    return Fetched(name, spec.arch, weights, labels, spec.num_classes, spec.width_mult)
