"""Signed integrity hashes: an HMAC over the artefacts' sha256, with a key from settings.

A sha256 tag alone proves nothing against someone who can write tags: change the
file, then the tag. So every set of hashes is signed (HMAC-SHA256 over the
canonical JSON of what is bound together: the artefact hashes and what they
belong to) and a signature that does not verify is refused exactly like a changed
byte. The same manifest guards a Tune checkpoint between the trial that wrote it
and the registration that reads it.

The key: ``registry.signing_key`` (``MLOPS_REGISTRY__SIGNING_KEY``) when set, else
the file ``registry.signing_key_file`` (default ``$MLOPS_HOME/keys/registry.key``),
created with 32 random bytes, mode 0600, on first use. On a cluster the home is on
shared storage, so every node signs and verifies with the same key; keep that
folder readable by the platform's processes only.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from cluster.errors import MlopsError

MANIFEST = "mlops_manifest.json"
SIGNATURE_TAG = "mlops.signature"


class IntegrityError(MlopsError):
    """An artefact's bytes, or the signed hashes recorded for them, were changed."""


def sha256(blob: bytes | str) -> str:
    return hashlib.sha256(blob.encode() if isinstance(blob, str) else blob).hexdigest()


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


def signing_key(settings=None, home: Path | None = None) -> bytes:
    """The HMAC key of these settings (see the module docstring); ``home`` overrides
    the settings' home for the default key file."""
    from cluster.config import get_settings
    settings = settings or get_settings()
    reg = settings.registry
    if reg.signing_key is not None:
        return reg.signing_key.get_secret_value().encode()
    path = Path(reg.signing_key_file or Path(home or settings.home) / "keys" / "registry.key")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:    # O_EXCL: of two processes creating it at once, one writes, both read it
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    key = path.read_text().strip()
    if len(key) < 32:
        raise IntegrityError(f"signing key file {path} holds {len(key)} characters; it needs "
                             "at least 32 (delete it to have a new one made, then re-register)")
    return key.encode()


def sign(key: bytes, payload: dict) -> str:
    return hmac.new(key, _canonical(payload), hashlib.sha256).hexdigest()


def check(key: bytes, payload: dict, signature: str | None, what: str) -> None:
    """Refuse ``payload`` unless ``signature`` is its HMAC under ``key``."""
    if not signature:
        raise IntegrityError(f"{what} carries no signature; refusing it (register it again "
                             "so that its hashes are signed)")
    if not hmac.compare_digest(sign(key, payload), str(signature)):
        raise IntegrityError(f"{what}: the signature of its recorded hashes does not verify "
                             "(a hash was changed, or it was signed with another key); "
                             "refusing it")


# -- a folder of files with a signed manifest (Tune checkpoints) -----------------
def write_manifest(folder: Path, names, key: bytes) -> dict:
    """Hash ``names`` in ``folder`` and write the signed manifest beside them."""
    folder = Path(folder)
    hashes = {name: sha256((folder / name).read_bytes()) for name in sorted(names)}
    manifest = {"files": hashes, "signature": sign(key, {"files": hashes})}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify_folder(folder: Path, key: bytes, what: str = "checkpoint") -> dict[str, bytes]:
    """The files the manifest names, after checking the manifest's signature and every
    file's hash; raises IntegrityError otherwise (a missing manifest included)."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"{what} {folder} has no readable {MANIFEST} ({exc}); "
                             "refusing to use it") from None
    hashes = manifest.get("files") or {}
    check(key, {"files": hashes}, manifest.get("signature"), f"{what} {folder}")
    blobs = {}
    for name, expected in hashes.items():
        blob = (folder / name).read_bytes()
        if sha256(blob) != expected:
            raise IntegrityError(f"{what} {folder}: {name} sha256 {sha256(blob)[:16]}... does "
                                 f"not match its signed manifest ({expected[:16]}...); "
                                 "refusing it")
        blobs[name] = blob
    return blobs
