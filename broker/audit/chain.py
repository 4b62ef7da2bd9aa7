"""The audit log's hash chain: canonical bytes of an event and its hash.

Pure functions, no I/O, so a verifier (the admin console, an exported JSON
Lines file checked offline) can recompute the chain with exactly the same
rules as the writer.

    hash(n) = SHA-256( ascii(prev_hash(n)) ||
                       canonical([seq, time, type, session, actor, subject, body]) )
    prev_hash(1) = "0" * 64;  prev_hash(n) = hash(n - 1)

where `canonical` is JSON with sorted keys, no whitespace, UTF-8, non-ASCII
kept as is, and `body` is the event's JSON object (not its text), so the hash
does not depend on how the body happened to be serialised. Personal data is
deliberately outside the hash: it must be erasable without breaking the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from broker.errors import AuditError

__all__ = [
    "GENESIS_HASH",
    "MAX_BODY_BYTES",
    "canonical_json",
    "check_body",
    "event_hash",
    "format_time",
]

GENESIS_HASH = "0" * 64
# Bodies are small metadata ("what was allowed, how long, bytes each way");
# anything bigger is almost certainly content that must not be logged.
MAX_BODY_BYTES = 8 * 1024


def canonical_json(value: Any) -> bytes:
    """Serialise `value` canonically; AuditError if it is not plain JSON data."""
    try:
        text = json.dumps(
            value,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit data is not plain JSON: {exc}") from exc
    return text.encode("utf-8")


def check_body(body: Mapping[str, Any] | None) -> tuple[dict[str, Any], bytes]:
    """Validate an event body; return it as a dict and its canonical bytes."""
    if body is None:
        body = {}
    if not isinstance(body, Mapping):
        raise AuditError(f"an audit body must be a JSON object, got {type(body).__name__}")
    as_dict = dict(body)
    if not all(isinstance(key, str) for key in as_dict):
        raise AuditError("audit body keys must be strings")
    data = canonical_json(as_dict)
    if len(data) > MAX_BODY_BYTES:
        raise AuditError(
            f"audit body is {len(data)} bytes, more than the limit of {MAX_BODY_BYTES}"
        )
    return as_dict, data


def event_hash(
    prev_hash: str,
    seq: int,
    time: str,
    type: str,
    session: str | None,
    actor: str | None,
    subject: str | None,
    body: Mapping[str, Any],
) -> str:
    """The SHA-256 hex digest chaining one event to the one before it."""
    row = canonical_json([seq, time, type, session, actor, subject, body])
    return hashlib.sha256(prev_hash.encode("ascii") + row).hexdigest()


def format_time(now: dt.datetime) -> str:
    """UTC ISO 8601 with microseconds and a Z, e.g. 2025-01-31T09:00:00.000000Z."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise AuditError("audit times must be timezone-aware")
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
