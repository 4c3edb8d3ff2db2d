"""Bundle archives and signatures.

A bundle travels as an uncompressed tar of its files (flat: ``manifest.json``, the model file, optional
``report.json`` and ``manifest.sig``). The roll-out command names the archive's sha256, so the bytes the device
unpacks are exactly the bytes that were pushed.

Signature: ``manifest.sig`` holds the base64 Ed25519 signature of the exact bytes of ``manifest.json``. The
manifest names the model file's sha256 (checked by :func:`~edge_ssd.model.bundle.load_manifest`), so a valid
signature covers the model, its priors, labels and post-processing. Keys are PEM files (PKCS#8 private key,
SubjectPublicKeyInfo public key) made by ``edge-ssd keygen``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import DependencyError, UserError
from ..model.bundle import MANIFEST, BundleError, load_manifest

SIGNATURE = "manifest.sig"
MAX_MEMBERS = 16


@dataclass(frozen=True)
class Packed:
    path: Path
    sha256: str
    size: int


def _crypto():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise DependencyError("bundle signatures need the 'cryptography' package: pip install cryptography") from None
    return serialization, ed25519


def keygen(out_dir: str | Path, name: str = "bundle-signing") -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``<name>.key`` (private, mode 0600) and ``<name>.pub``."""
    serialization, ed25519 = _crypto()
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    priv, pub = d / f"{name}.key", d / f"{name}.pub"
    for p in (priv, pub):
        if p.exists():
            raise UserError(f"{p} already exists; remove it or choose another directory (keys are never overwritten)")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def _load_key(path: str | Path, private: bool):
    serialization, ed25519 = _crypto()
    p = Path(path)
    kind = "private" if private else "public"
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read the {kind} key {p}: {e.strerror} (check the path)") from None
    try:
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (ValueError, TypeError):
        raise UserError(f"{p} is not a PEM {kind} key; make one with `edge-ssd keygen DIR`") from None
    want = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, want):
        raise UserError(f"{p} is not an Ed25519 {kind} key; make one with `edge-ssd keygen DIR`")
    return key


def load_public_key(path: str | Path):
    return _load_key(path, private=False)


def sign_bundle(bundle: str | Path, private_key: str | Path) -> Path:
    """Write ``manifest.sig`` into ``bundle`` (a bundle directory); returns its path."""
    d = Path(bundle)
    _check_bundle(d)
    key = _load_key(private_key, private=True)
    sig = key.sign((d / MANIFEST).read_bytes())
    out = d / SIGNATURE
    tmp = d / (SIGNATURE + ".tmp")
    tmp.write_text(base64.b64encode(sig).decode() + "\n")
    tmp.replace(out)
    return out


def verify_signature(bundle: str | Path, public_key) -> None:
    """Raise ``BundleError`` unless ``manifest.sig`` is a valid signature of ``manifest.json`` by ``public_key``
    (a key object from :func:`load_public_key`)."""
    from cryptography.exceptions import InvalidSignature

    d = Path(bundle)
    sig_path = d / SIGNATURE
    if not sig_path.is_file():
        raise BundleError("bundle is not signed (no manifest.sig) but a public key is configured; sign it with "
                          "`edge-ssd sign-bundle BUNDLE --key KEY`")
    try:
        sig = base64.b64decode(sig_path.read_text().strip(), validate=True)
    except ValueError:
        raise BundleError("manifest.sig is not base64; sign the bundle again") from None
    try:
        public_key.verify(sig, (d / MANIFEST).read_bytes())
    except InvalidSignature:
        raise BundleError("signature does not verify with the configured public key (signed with another key, "
                          "or the manifest was changed after signing)") from None


def _check_bundle(d: Path) -> None:
    try:
        load_manifest(d, verify=True)
    except BundleError as e:
        raise UserError(str(e)) from None


def pack_bundle(bundle: str | Path, out: str | Path) -> Packed:
    """Tar the bundle directory's files (sorted, fixed metadata: the same bundle gives the same bytes)."""
    d = Path(bundle)
    _check_bundle(d)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    files = sorted(p for p in d.iterdir() if p.is_file() and not p.name.endswith(".tmp"))
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for p in files:
            info = tarfile.TarInfo(p.name)
            info.size = p.stat().st_size
            info.mode = 0o644
            with open(p, "rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)
    with open(out, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return Packed(out, digest, out.stat().st_size)


def unpack_bundle(archive: str | Path, dest: str | Path) -> Path:
    """Extract a bundle archive into the new directory ``dest`` (flat regular files only); raises BundleError."""
    dest = Path(dest)
    try:
        with tarfile.open(archive, "r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise BundleError(f"archive has {len(members)} entries; a bundle has a few files")
            for m in members:
                if not m.isfile() or "/" in m.name or m.name in ("", ".", ".."):
                    raise BundleError(f"archive entry {m.name!r} is not a plain file at the top level")
            dest.mkdir(parents=True)
            for m in members:
                src = tar.extractfile(m)
                if src is None:
                    raise BundleError(f"archive entry {m.name!r} cannot be read")
                with src, open(dest / m.name, "wb") as f:
                    while chunk := src.read(1 << 20):
                        f.write(chunk)
    except (tarfile.TarError, EOFError) as e:
        raise BundleError(f"not a bundle archive ({e})") from None
    return dest
