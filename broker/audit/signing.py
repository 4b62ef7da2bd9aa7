"""The broker's audit signing key, and records signed with it.

The key lives outside the database (data dir, ``audit.key``, mode 0600), so
someone who can rewrite ``audit.db`` cannot also re-sign checkpoints or purge
records. ``consentry-broker audit pubkey`` prints the public half for
auditors to keep elsewhere; ``verify --pubkey`` checks against that copy.

A signed record is canonical JSON: ``{"payload": {...}, "signature": b64}``,
the signature over the canonical bytes of the payload alone.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing

from broker.audit.chain import canonical_json
from broker.errors import AuditError

AUDIT_KEY_FILE = "audit.key"
_PUBLIC_PREFIX = "consentry-audit-ed25519:"

__all__ = [
    "AUDIT_KEY_FILE",
    "load_or_create_signing_key",
    "parse_public_key",
    "public_key_text",
    "sign_record",
    "verify_record",
]


def load_or_create_signing_key(data_dir: Path) -> nacl.signing.SigningKey:
    """The audit key, made on first use; refused if others can read it."""
    path = data_dir / AUDIT_KEY_FILE
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        seed = bytes(nacl.signing.SigningKey.generate())
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, seed)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another process just made
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise AuditError(f"{path} is readable by other users (mode {mode:o}); "
                         f"run: chmod 600 {path}")
    seed = path.read_bytes()
    if len(seed) != 32:
        raise AuditError(f"{path} is not an audit signing key (wrong length)")
    return nacl.signing.SigningKey(seed)


def public_key_text(key: nacl.signing.SigningKey | nacl.signing.VerifyKey) -> str:
    verify = key.verify_key if isinstance(key, nacl.signing.SigningKey) else key
    return _PUBLIC_PREFIX + base64.b64encode(bytes(verify)).decode()


def parse_public_key(text: str) -> nacl.signing.VerifyKey:
    """Read what `public_key_text` wrote (surrounding whitespace allowed)."""
    text = text.strip()
    if not text.startswith(_PUBLIC_PREFIX):
        raise AuditError("not a consentry audit public key (expected "
                         f"'{_PUBLIC_PREFIX}...', as printed by `audit pubkey`)")
    try:
        raw = base64.b64decode(text[len(_PUBLIC_PREFIX):], validate=True)
        return nacl.signing.VerifyKey(raw)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise AuditError("the audit public key is damaged") from exc


def sign_record(key: nacl.signing.SigningKey, payload: dict[str, Any]) -> dict[str, Any]:
    signature = key.sign(canonical_json(payload)).signature
    return {"payload": payload, "signature": base64.b64encode(signature).decode()}


def verify_record(key: nacl.signing.VerifyKey, record: dict[str, Any]) -> dict[str, Any]:
    """Return the payload if the signature holds; raise `AuditError` if not."""
    try:
        payload = record["payload"]
        signature = base64.b64decode(record["signature"], validate=True)
        key.verify(canonical_json(payload), signature)
    except (KeyError, TypeError, binascii.Error, ValueError,
            nacl.exceptions.BadSignatureError) as exc:
        raise AuditError("signature does not verify with the audit public key") from exc
    if not isinstance(payload, dict):
        raise AuditError("signed record has no payload object")
    return payload
