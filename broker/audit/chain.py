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

Both the store (as it appends) and the verifier (as it walks a whole log) hash
a row with `stored_row_hash`: the canonical row with the body spliced in as
the store keeps it, which is exactly `event_hash` for every body the store
wrote (it keeps the canonical text, `check_body`). `ChainWalk` is the one
walk over stored rows, for `AuditLog.verify_chain` and `broker.audit.verify`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import json.encoder
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from broker.errors import AuditError

__all__ = [
    "GENESIS_HASH",
    "MAX_BODY_BYTES",
    "ChainWalk",
    "StoredRow",
    "canonical_digest",
    "canonical_json",
    "check_body",
    "event_hash",
    "format_time",
    "row_hash",
    "stored_row_hash",
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


# The encoder's call: (value, indent level) -> the JSON text as chunks.
_ChunkEncoder = Callable[[Any, int], Iterable[str]]


def _refuse(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not plain JSON")


def _c_encoder(*, sort_keys: bool) -> _ChunkEncoder:
    """`canonical_json`'s encoding with the C encoder made once: json.dumps
    builds a new one per call, a third of the time per row when a verifier
    hashes every event (and digests every checkpoint line) of a long log."""
    # Private and untyped in typeshed, hence getattr and the annotation.
    make: Callable[..., _ChunkEncoder] | None = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython has it
        slow = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"),
                                ensure_ascii=False, allow_nan=False)
        return lambda value, _indent: (slow.encode(value),)
    return make(None, _refuse, json.encoder.encode_basestring, None, ":", ",",
                sort_keys, False, False)


# Scalars only (the row's columns), so no key order to keep.
_SCALARS = _c_encoder(sort_keys=False)
_CANONICAL = _c_encoder(sort_keys=True)


def canonical_digest(value: Any) -> str:
    """SHA-256 hex of `canonical_json(value)`, with the encoder made once;
    AuditError if `value` is not plain JSON data."""
    try:
        data = "".join(_CANONICAL(value, 0)).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit data is not plain JSON: {exc}") from exc
    return hashlib.sha256(data).hexdigest()


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


def stored_row_hash(prev_hash: str, seq: int, time: str, type: str, session: str | None,
                    actor: str | None, subject: str | None, body_text: str) -> str:
    """`event_hash` of a row whose body is kept as `body_text`, without parsing it.

    The canonical row with the body text spliced in as it is: the same digest
    as `event_hash` whenever `body_text` is the body's canonical JSON (what
    the store keeps). A row whose body text is not canonical gets a digest
    that differs from its `event_hash`, never a false match: the digest
    covers the exact stored bytes.
    """
    head = "".join(_SCALARS((seq, time, type, session, actor, subject), 0))
    return hashlib.sha256(f"{prev_hash}{head[:-1]},{body_text}]".encode()).hexdigest()


# A stored event as the store's events table holds it:
# (seq, time, type, session, actor, subject, body text, prev_hash, hash).
StoredRow = tuple[int, str, str, str | None, str | None, str | None, str, str, str]


def row_hash(row: StoredRow, seq: int | None = None) -> str | None:
    """The `event_hash` of a stored row's contents (as event `seq`, if given:
    where a moved row belongs); None if its body is not a JSON object."""
    stored_seq, time, type_, session, actor, subject, body, prev_hash, _ = row
    try:
        body_obj = json.loads(body)
        if not isinstance(body_obj, dict):
            return None
        return event_hash(prev_hash, stored_seq if seq is None else seq, time, type_,
                          session, actor, subject, body_obj)
    except (TypeError, ValueError, AuditError):
        return None


class ChainWalk:
    """The chain check over stored rows, fed in seq order a batch at a time.

    A row holds if its seq follows the last good one, its ``prev_hash`` is
    that row's hash, and its hash is recomputed from its contents (by
    `stored_row_hash`, and for a row that misses that way by `row_hash`).
    After a break the walk stays at the last good row, so the caller can
    say why the next one does not follow.
    """

    def __init__(self, first_seq: int = 1, first_prev: str = GENESIS_HASH) -> None:
        self.expected_seq = first_seq
        self.expected_prev = first_prev
        # The prev_hash of the last good row: what a row slipped in before
        # it would have had to follow.
        self.before_previous: str | None = None

    def first_break(self, rows: Sequence[StoredRow]) -> int | None:
        """Walk `rows`; the index of the first that does not hold, else None."""
        expected_seq, expected_prev = self.expected_seq, self.expected_prev
        before_previous, hash_of = self.before_previous, stored_row_hash
        broken: int | None = None
        for index, row in enumerate(rows):
            seq, prev_hash, stored = row[0], row[7], row[8]
            if seq != expected_seq or prev_hash != expected_prev or (
                    hash_of(prev_hash, *row[:7]) != stored and row_hash(row) != stored):
                broken = index
                break
            before_previous, expected_prev, expected_seq = expected_prev, stored, seq + 1
        self.expected_seq, self.expected_prev = expected_seq, expected_prev
        self.before_previous = before_previous
        return broken


def format_time(now: dt.datetime) -> str:
    """UTC ISO 8601 with microseconds and a Z, e.g. 2025-01-31T09:00:00.000000Z."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise AuditError("audit times must be timezone-aware")
    return now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
