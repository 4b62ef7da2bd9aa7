"""The seams a second audit backend builds on: the one row hash and chain
walk (`broker.audit.chain`), the one builder and checker of each signed
record, and the store interface (`broker.audit.interface`) that `AuditLog`
implements."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
from pathlib import Path

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.audit.chain import (
    GENESIS_HASH,
    ChainWalk,
    StoredRow,
    canonical_digest,
    canonical_json,
    check_body,
    event_hash,
    stored_row_hash,
)
from broker.audit.checkpoint_record import make_checkpoint, parse_checkpoint, row_digest
from broker.audit.interface import AuditStore
from broker.audit.purge_record import PURGE_EVENT, check_purge_body, purge_covers
from broker.audit.retention import purge
from broker.audit.store import AuditLog
from broker.errors import AuditError

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)

_text = st.text(max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**60, 2**60) | _text
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(seq=st.integers(1, 2**40), time=_text, type_=_text, session=st.none() | _text,
       actor=st.none() | _text, subject=st.none() | _text,
       body=st.dictionaries(_text, _json, max_size=4))
def test_the_stored_row_hash_is_the_event_hash(
        seq: int, time: str, type_: str, session: str | None, actor: str | None,
        subject: str | None, body: dict[str, object]) -> None:
    """What the store hashes as it appends (the canonical body text spliced
    in) is the chain's definition of the hash, for any body."""
    _, body_bytes = check_body(body)
    assert stored_row_hash(GENESIS_HASH, seq, time, type_, session, actor, subject,
                           body_bytes.decode()) == event_hash(
        GENESIS_HASH, seq, time, type_, session, actor, subject, body)


def test_canonical_digest_is_the_digest_of_canonical_json() -> None:
    value = {"b": [1, 2.5, None], "a": "Zoë \u2028", "c": {"z": 1, "y": True}}
    assert canonical_digest(value) == hashlib.sha256(canonical_json(value)).hexdigest()
    with pytest.raises(AuditError, match="not plain JSON"):
        canonical_digest({"x": float("nan")})


def _rows(count: int) -> list[StoredRow]:
    rows: list[StoredRow] = []
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        body = canonical_json({"n": seq}).decode()
        digest = stored_row_hash(prev, seq, "t", "tick", None, None, None, body)
        rows.append((seq, "t", "tick", None, None, None, body, prev, digest))
        prev = digest
    return rows


def test_the_chain_walk_stops_at_the_first_break_across_batches() -> None:
    rows = _rows(6)
    walk = ChainWalk()
    assert walk.first_break(rows[:3]) is None
    assert walk.first_break(rows[3:]) is None
    assert walk.expected_seq == 7

    edited = list(rows)
    edited[4] = (*rows[4][:6], canonical_json({"n": 99}).decode(), *rows[4][7:])
    walk = ChainWalk()
    assert walk.first_break(edited[:3]) is None
    assert walk.first_break(edited[3:]) == 1  # seq 5
    # Left at the last good row, for the caller to say why the next breaks.
    assert (walk.expected_seq, walk.expected_prev) == (5, rows[3][8])
    assert walk.before_previous == rows[3][7]

    gap = rows[:2] + rows[3:]
    assert ChainWalk().first_break(gap) == 2


def test_a_non_canonical_body_is_decided_by_the_event_hash() -> None:
    """A row whose body text is not canonical (another writer's spacing) still
    holds if its hash is the event hash of what it says."""
    body = {"b": 1, "a": [1, 2]}
    digest = event_hash(GENESIS_HASH, 1, "t", "tick", None, None, None, body)
    row: StoredRow = (1, "t", "tick", None, None, None, '{"b": 1, "a": [1, 2]}',
                      GENESIS_HASH, digest)
    assert ChainWalk().first_break([row]) is None


def test_the_checkpoint_builder_and_checker_round_trip() -> None:
    key = nacl.signing.SigningKey.generate()
    made = make_checkpoint(key, seq=3, hash="a" * 64, time="2025-03-01T12:00:00.000000Z",
                           prev="0" * 64)
    read = parse_checkpoint(made.line(), key.verify_key)
    assert read == made and row_digest(made.text()) == made.digest
    read.verify_signature(key.verify_key)
    with pytest.raises(AuditError, match="signature does not verify"):
        read.verify_signature(nacl.signing.SigningKey.generate().verify_key)
    assert row_digest("[1, 2]") is None and row_digest("not json") is None


async def test_retention_writes_the_purge_record_the_verifier_checks(tmp_path: Path) -> None:
    key = nacl.signing.SigningKey.generate()
    log = await AuditLog.open(tmp_path)
    try:
        for n in range(4):
            await log.append("tick", now=T0 + dt.timedelta(days=n))
        await purge(log, now=T0 + dt.timedelta(days=10), pii_days=1, event_days=8,
                    signing_key=key)
        events = await log.events()
    finally:
        await log.close()
    (record,) = [e for e in events if e.type == PURGE_EVENT]
    checked = check_purge_body(record.body, key.verify_key)
    assert (checked.through_seq, checked.count, checked.before) == (2, 2, "2025-03-03")
    assert purge_covers(checked, events[0].seq, events[0].prev_hash)


def test_the_sqlite_log_implements_every_call_of_the_store_interface() -> None:
    """mypy checks the signatures (the broker passes an `AuditLog` where an
    `AuditStore` is wanted); this names a member the class lacks outright."""
    store_type: type[AuditStore] = AuditLog  # the static check
    members = {name for name, _ in inspect.getmembers(AuditStore)
               if not name.startswith("_")}
    assert members >= {"append", "query", "scan", "maintenance", "verify_chain", "path"}
    missing = {name for name in members if not hasattr(store_type, name)} - {"path"}
    assert not missing
