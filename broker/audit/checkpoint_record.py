"""The signed checkpoint record: its one format, for every writer and reader.

The broker's audit key (``broker.audit.signing``) signs

    payload = {"kind": "checkpoint", "seq": N, "hash": hash of event N,
               "time": UTC ISO 8601, "prev": SHA-256 hex of the canonical bytes
               of the previous signed checkpoint record ("0" * 64 for the first)}

as ``{"payload": ..., "signature": ...}``, kept as one canonical JSON line.
The same line is written to the broker's checkpoint file, the database's
checkpoints table, the stdin of a `--checkpoint-command`, the control
message that hands an agent the checkpoint covering its consent, and the
agent's own ``checkpoints.jsonl`` — so any of those copies is a witness file
`audit verify --witness` reads as it is.

No I/O here (the agent imports it to check what it keeps).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nacl.signing

from broker.audit.chain import canonical_digest, canonical_json
from broker.audit.signing import sign_record, verify_record
from broker.errors import AuditError

__all__ = [
    "GENESIS_CHECKPOINT",
    "Checkpoint",
    "make_checkpoint",
    "parse_checkpoint",
    "record_digest",
    "row_digest",
]

# "prev" of the first checkpoint: there is no record before it.
GENESIS_CHECKPOINT = "0" * 64
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint: what it says, and the record that says it."""

    seq: int
    hash: str
    time: str
    prev: str
    record: dict[str, Any]
    digest: str  # `record_digest(record)`: what the next checkpoint's ``prev`` must be

    def line(self) -> bytes:
        """The record as one line of a checkpoint (or witness) file."""
        return canonical_json(self.record) + b"\n"

    def text(self) -> str:
        """The record as canonical JSON text, without the newline."""
        return canonical_json(self.record).decode()

    def verify_signature(self, public_key: nacl.signing.VerifyKey) -> None:
        """Raise AuditError ("signature does not verify ...") unless the
        audit key signed this record."""
        verify_record(public_key, self.record)


def record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of a signed checkpoint record."""
    return canonical_digest(dict(record))


def row_digest(text: str | bytes) -> str | None:
    """`record_digest` of a record kept as text (a file line, a table row);
    None if the text is not a JSON object."""
    try:
        data = json.loads(text)
        return record_digest(data) if isinstance(data, dict) else None
    except (ValueError, TypeError, AuditError):
        return None


def make_checkpoint(key: nacl.signing.SigningKey, *, seq: int, hash: str, time: str,
                    prev: str) -> Checkpoint:
    """Sign a checkpoint of event `seq` (whose hash is `hash`) chained on `prev`."""
    payload = {"kind": "checkpoint", "seq": seq, "hash": hash, "time": time, "prev": prev}
    record = sign_record(key, payload)
    return Checkpoint(seq, hash, time, prev, record, record_digest(record))


def parse_checkpoint(
    text: str | bytes, public_key: nacl.signing.VerifyKey | None = None
) -> Checkpoint:
    """Read one checkpoint record (a file line or a table row).

    Raises AuditError saying what is wrong with its shape; with `public_key`,
    also if the signature does not verify (the message then begins
    "signature does not verify").
    """
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuditError(f"not JSON ({exc})") from None
    if not isinstance(record, dict) or set(record) != {"payload", "signature"}:
        raise AuditError("not a signed record (expected payload and signature)")
    payload = record["payload"]
    if not isinstance(payload, dict) or payload.get("kind") != "checkpoint":
        raise AuditError("its payload is not a checkpoint")
    seq, digest, time, prev = (payload.get(k) for k in ("seq", "hash", "time", "prev"))
    if set(payload) != {"kind", "seq", "hash", "time", "prev"}:
        raise AuditError("its payload has missing or unexpected fields")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise AuditError("its seq is not a non-negative integer")
    if not _is_hex64(digest) or not _is_hex64(prev):
        raise AuditError("its hash or prev is not a SHA-256 hex digest")
    if not isinstance(time, str) or not isinstance(record["signature"], str):
        raise AuditError("its time or signature is not a string")
    checkpoint = Checkpoint(seq, str(digest), time, str(prev), record, record_digest(record))
    if public_key is not None:
        checkpoint.verify_signature(public_key)
    return checkpoint
