"""The signed purge record: its one format, for the retention purge that
writes it and the verifier that checks it.

When retention removes the oldest events it appends an ``events_purged``
event whose body is

    {"through_seq": N, "last_hash": hash of event N, "before": "YYYY-MM-DD",
     "count": events removed,
     "record": {"payload": {"kind": "events_purged", ...the four fields},
                "signature": "<base64 Ed25519>"}}

signed with the audit key (``broker.audit.signing``). A verifier accepts a
log that starts at seq N + 1 only if such a record, intact in the chain,
accounts for exactly the events before it (`purge_covers`).

No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nacl.signing

from broker.audit.signing import sign_record, verify_record
from broker.errors import AuditError

__all__ = [
    "PURGE_EVENT",
    "PurgeRecord",
    "check_purge_body",
    "purge_body",
    "purge_covers",
]

PURGE_EVENT = "events_purged"
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_FIELDS = ("through_seq", "last_hash", "before", "count")


@dataclass(frozen=True)
class PurgeRecord:
    """The signed statement that events 1..through_seq were removed."""

    through_seq: int
    last_hash: str  # hash of event `through_seq`, so prev_hash of the first kept event
    before: str  # the day (YYYY-MM-DD, UTC) before which events were removed
    count: int


def purge_body(key: nacl.signing.SigningKey, *, through_seq: int, last_hash: str,
               before: str, count: int) -> dict[str, Any]:
    """The body of an ``events_purged`` event: the fields, and a signed record
    of them (its payload also says ``"kind": "events_purged"``, so it can
    never be mistaken for another record the audit key signs)."""
    fields: dict[str, Any] = {"through_seq": through_seq, "last_hash": last_hash,
                              "before": before, "count": count}
    return {**fields, "record": sign_record(key, {"kind": PURGE_EVENT, **fields})}


def check_purge_body(body: Mapping[str, Any],
                     public_key: nacl.signing.VerifyKey) -> PurgeRecord:
    """The purge record in an ``events_purged`` body, if signed by the audit key.

    Raises AuditError saying what is wrong: a bad signature, signed fields
    that differ from the body's, or fields of the wrong shape.
    """
    record = body.get("record")
    if not isinstance(record, dict):
        raise AuditError("it carries no signed purge record")
    payload = dict(verify_record(public_key, record))
    # "kind" is optional: the bare four fields are signed purge records too.
    if payload.pop("kind", PURGE_EVENT) != PURGE_EVENT:
        raise AuditError("its signed record is not a purge record")
    if set(payload) != set(_FIELDS):
        raise AuditError("its signed record is not a purge record")
    if any(body.get(name) != payload[name] for name in _FIELDS):
        raise AuditError("its fields differ from the ones signed")
    through, last_hash, before, count = (payload[name] for name in _FIELDS)
    if (not isinstance(through, int) or isinstance(through, bool) or through < 1
            or not isinstance(count, int) or isinstance(count, bool) or count < 0
            or not isinstance(last_hash, str) or len(last_hash) != 64
            or not isinstance(before, str) or not _DATE_RE.fullmatch(before)):
        raise AuditError("its signed fields are malformed")
    return PurgeRecord(through, last_hash, before, count)


def purge_covers(purge: PurgeRecord, first_seq: int, first_prev_hash: str) -> bool:
    """Whether `purge` accounts for every event before `first_seq`, the first kept one."""
    return purge.through_seq == first_seq - 1 and purge.last_hash == first_prev_hash
