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

import hashlib
import json
import json.encoder
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.signing

from broker.audit.chain import canonical_json
from broker.audit.signing import sign_record, verify_record
from broker.errors import AuditError

__all__ = [
    "GENESIS_CHECKPOINT",
    "Checkpoint",
    "make_checkpoint",
    "parse_checkpoint",
    "record_digest",
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


def _canonical_encoder() -> Callable[[Any], bytes]:
    """`chain.canonical_json`'s encoding, with the C encoder made once:
    json.dumps builds a new one per call, and a verifier digests every line
    of a checkpoint file that grows by some 500,000 lines a year."""
    # Private and untyped in typeshed, hence getattr and the annotation: the
    # encoder it makes takes (value, indent level) and gives the text as chunks.
    make: Callable[..., Callable[[Any, int], Iterable[str]]] | None = getattr(
        json.encoder, "c_make_encoder", None)

    def refuse(value: object) -> object:
        raise TypeError(f"{type(value).__name__} is not plain JSON")

    if make is None:  # pragma: no cover - CPython has it
        return canonical_json
    encode = make(None, refuse, json.encoder.encode_basestring, None, ":", ",",
                  True, False, False)
    return lambda value: "".join(encode(value, 0)).encode("utf-8")


_canonical = _canonical_encoder()


def record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of a signed checkpoint record."""
    try:
        return hashlib.sha256(_canonical(dict(record))).hexdigest()
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit data is not plain JSON: {exc}") from exc


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
    if public_key is not None:
        verify_record(public_key, record)
    return Checkpoint(seq, str(digest), time, str(prev), record, record_digest(record))
