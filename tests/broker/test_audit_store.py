"""The audit store: hash chain, append-only, encryption of personal data, fail closed."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path

import pytest

from broker.audit.chain import GENESIS_HASH
from broker.audit.store import AuditLog
from broker.errors import AuditError, AuditWriteError
from tests.broker.helpers import both_backends, raw

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
DEVICE = "dev-5b1f0c3e-8d7a-4c2e-9f00-aa11bb22cc33"


@both_backends
async def test_append_and_read_back(log: AuditLog) -> None:
    seq1 = await log.append(
        "agent_connected", now=T0, subject=DEVICE, body={"shared": []},
        personal={"alias": "Grandma's PC", "ip": "192.0.2.7"},
    )
    seq2 = await log.append(
        "session_started", now=T0 + dt.timedelta(seconds=1), session="s-1",
        actor="alice", subject=DEVICE, body={"scope": ["view", "control"]},
    )
    assert (seq1, seq2) == (1, 2)
    first, second = await log.events()
    assert first.seq == 1
    assert first.time == "2025-03-01T12:00:00.123456Z"
    assert first.type == "agent_connected"
    assert first.subject == log.pseudonym(DEVICE) != DEVICE
    assert first.personal == {"alias": "Grandma's PC", "ip": "192.0.2.7"}
    assert first.body == {"shared": []}
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert (second.session, second.actor, second.personal) == ("s-1", "alice", None)
    assert await log.verify_chain() is None


@both_backends
async def test_time_is_stored_in_utc(log: AuditLog) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    await log.append("tick", now=dt.datetime(2025, 3, 1, 13, 0, tzinfo=paris))
    (event,) = await log.events()
    assert event.time == "2025-03-01T12:00:00.000000Z"
    with pytest.raises(AuditError, match="timezone-aware"):
        await log.append("tick", now=dt.datetime(2025, 3, 1))


@both_backends
async def test_hash_follows_the_documented_formula(log: AuditLog) -> None:
    await log.append("a", now=T0, body={"é": 1, "b": [1, 2]}, subject=DEVICE)
    await log.append("b", now=T0, session="s", actor="x")
    prev = "0" * 64
    for event in await log.events():
        row = [event.seq, event.time, event.type, event.session, event.actor,
               event.subject, event.body]
        canonical = json.dumps(row, sort_keys=True, separators=(",", ":"),
                               ensure_ascii=False).encode("utf-8")
        assert event.prev_hash == prev
        assert event.hash == hashlib.sha256(prev.encode("ascii") + canonical).hexdigest()
        prev = event.hash


async def test_triggers_refuse_update_and_delete(log: AuditLog, tmp_path: Path) -> None:
    await log.append("a", now=T0, body={"n": 1})
    conn = raw(tmp_path)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET body = '{\"n\":2}' WHERE seq = 1")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 1")
    finally:
        conn.close()
    (event,) = await log.events()
    assert event.body == {"n": 1}


async def test_verify_names_the_first_edited_or_deleted_row(
    log: AuditLog, tmp_path: Path
) -> None:
    for n in range(1, 6):
        await log.append("tick", now=T0, body={"n": n})
    conn = raw(tmp_path)
    try:
        # Someone with file access removes the guard first.
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("UPDATE events SET body = '{\"n\":33}' WHERE seq = 3")
        assert await log.verify_chain() == 3
        conn.execute("UPDATE events SET body = '{\"n\":3}' WHERE seq = 3")
        assert await log.verify_chain() is None
        conn.execute("DELETE FROM events WHERE seq = 2")
        assert await log.verify_chain() == 3
    finally:
        conn.close()


async def test_personal_fields_are_never_in_clear_on_disk(
    log: AuditLog, tmp_path: Path
) -> None:
    marker = "alias-marker-7f3a9c"
    ip = "203.0.113.199"
    await log.append("agent_connected", now=T0, subject=DEVICE,
                     personal={"alias": marker, "ip": ip, "hostname": "host-marker-q9z"})
    for _ in range(3):
        await log.append("tick", now=T0, subject=DEVICE)
    (first, *_) = await log.events()
    assert first.personal is not None and first.personal["alias"] == marker

    def disk_bytes() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())

    assert (tmp_path / "audit.db-wal").exists()  # the bytes may live here until checkpoint
    data = disk_bytes()
    assert b"agent_connected" in data  # the search does find what is in clear
    assert marker.encode() not in data
    assert ip.encode() not in data
    assert b"host-marker-q9z" not in data
    assert DEVICE.encode() not in data  # only the pseudonym is stored
    await log.close()
    data = disk_bytes()
    assert marker.encode() not in data
    assert DEVICE.encode() not in data


async def test_file_modes(log: AuditLog, tmp_path: Path) -> None:
    await log.append("a", now=T0)
    key = tmp_path / "master.key"
    assert len(key.read_bytes()) == 32
    for path in (key, tmp_path / "audit.db", tmp_path / "audit.db-wal"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_pseudonyms_are_stable_and_distinct(tmp_path: Path) -> None:
    first = await AuditLog.open(tmp_path)
    p1 = first.pseudonym(DEVICE)
    await first.close()
    second = await AuditLog.open(tmp_path)
    try:
        assert second.pseudonym(DEVICE) == p1
        assert second.pseudonym("another-device") != p1
        assert len(p1) == 32 and int(p1, 16) >= 0
    finally:
        await second.close()
    # A different master key (another deployment) gives unlinkable pseudonyms.
    other = await AuditLog.open(tmp_path / "other")
    try:
        assert other.pseudonym(DEVICE) != p1
    finally:
        await other.close()


async def test_closed_log_fails_closed(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.append("a", now=T0)
    await audit.close()
    with pytest.raises(AuditWriteError, match="audit log could not be written"):
        await audit.append("b", now=T0)


async def test_locked_database_fails_closed_then_recovers(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path, busy_timeout=0.1)
    try:
        await audit.append("a", now=T0)
        blocker = raw(tmp_path)
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(AuditWriteError, match="audit log could not be written"):
                await audit.append("b", now=T0, subject=DEVICE, personal={"alias": "x"})
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # Nothing half-written, and the connection is usable again.
        assert await audit.append("c", now=T0) == 2
        assert [e.type for e in await audit.events()] == ["a", "c"]
        assert await audit.verify_chain() is None
    finally:
        await audit.close()


@both_backends
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"body": [1, 2]}, "must be a JSON object"),
        ({"body": {"blob": "x" * 9000}}, "more than the limit"),
        ({"body": {"when": dt.datetime.now(dt.UTC)}}, "not plain JSON"),
        ({"body": {"x": float("nan")}}, "not plain JSON"),
        ({"personal": {"alias": "no subject"}}, "need a subject"),
        ({"subject": DEVICE, "personal": {"alias": 3}}, "must be a string"),
    ],
)
async def test_invalid_events_are_refused(
    log: AuditLog, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(AuditError, match=message):
        await log.append("a", now=T0, **kwargs)  # type: ignore[arg-type]
    assert await log.events() == []


@pytest.mark.parametrize("event_type", ["", "Agent", "with space", "x" * 65, "a-b"])
@both_backends
async def test_invalid_types_are_refused(log: AuditLog, event_type: str) -> None:
    with pytest.raises(AuditError, match="invalid audit event type"):
        await log.append(event_type, now=T0)


@both_backends
async def test_concurrent_appends_chain(log: AuditLog) -> None:
    seqs = await asyncio.gather(*(log.append("tick", now=T0, body={"n": n}) for n in range(50)))
    assert sorted(seqs) == list(range(1, 51))
    assert await log.verify_chain() is None


async def test_two_writers_on_one_file_chain(tmp_path: Path) -> None:
    # The running broker and the admin CLI append to the same file.
    broker, cli = await AuditLog.open(tmp_path), await AuditLog.open(tmp_path)
    try:
        for n in range(10):
            await (broker if n % 2 else cli).append("tick", now=T0, body={"n": n})
        assert [e.body["n"] for e in await broker.events()] == list(range(10))
        assert await cli.verify_chain() is None
    finally:
        await broker.close()
        await cli.close()


@both_backends
async def test_cancelled_append_leaves_the_log_usable(log: AuditLog) -> None:
    task = asyncio.create_task(log.append("a", now=T0, subject=DEVICE, personal={"ip": "x"}))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await log.append("b", now=T0)
    assert await log.verify_chain() is None
    assert [e.type for e in await log.events()][-1] == "b"


@both_backends
async def test_filters_and_limit(log: AuditLog) -> None:
    for n in range(6):
        await log.append("even" if n % 2 == 0 else "odd", now=T0,
                         session=f"s{n % 3}", body={"n": n})
    assert [e.body["n"] for e in await log.events(type="odd")] == [1, 3, 5]
    assert [e.body["n"] for e in await log.events(session="s0")] == [0, 3]
    assert [e.body["n"] for e in await log.events(session="s1", type="odd")] == [1]
    # limit: the newest N, still oldest first.
    assert [e.seq for e in await log.events(limit=2)] == [5, 6]
    assert [e.body["n"] for e in await log.events(type="even", limit=2)] == [2, 4]


async def test_erased_subject_key_shreds_personal_data(log: AuditLog, tmp_path: Path) -> None:
    await log.append("agent_connected", now=T0, subject=DEVICE, personal={"alias": "old"})
    conn = raw(tmp_path)
    try:
        conn.execute("UPDATE subjects SET wrapped_key = NULL, erased = 'now'")
    finally:
        conn.close()
    (event,) = await log.events()
    assert event.personal is None
    assert await log.verify_chain() is None
    # The device comes back: new data is readable, the old stays shredded.
    await log.append("agent_connected", now=T0, subject=DEVICE, personal={"alias": "new"})
    assert [e.personal for e in await log.events()] == [None, {"alias": "new"}]


async def test_moved_ciphertext_is_not_shown_as_another_events(
    log: AuditLog, tmp_path: Path
) -> None:
    await log.append("a", now=T0, subject=DEVICE, personal={"alias": "one"})
    await log.append("b", now=T0, subject=DEVICE, personal={"alias": "two"})
    conn = raw(tmp_path)
    try:
        (ct,) = conn.execute("SELECT ciphertext FROM personal WHERE seq = 1").fetchone()
        conn.execute("UPDATE personal SET ciphertext = ? WHERE seq = 2", (ct,))
    finally:
        conn.close()
    assert [e.personal for e in await log.events()] == [{"alias": "one"}, None]


async def test_missing_master_key_with_existing_data_is_refused(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.append("a", now=T0)
    await audit.close()
    (tmp_path / "master.key").unlink()
    with pytest.raises(AuditError, match=r"master key .* is missing"):
        await AuditLog.open(tmp_path)


async def test_master_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.close()
    os.chmod(tmp_path / "master.key", 0o644)
    with pytest.raises(AuditError, match="chmod 600"):
        await AuditLog.open(tmp_path)


async def test_pragmas(log: AuditLog, tmp_path: Path) -> None:
    await log.append("a", now=T0)
    conn = raw(tmp_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


async def test_concurrent_appends_are_group_committed_and_chain(tmp_path: Path) -> None:
    """Many writers at once: every append returns its own seq only once it is
    durable, and the chain they form verifies."""
    import asyncio as _asyncio
    import datetime as _dt

    log = await AuditLog.open(tmp_path)
    try:
        seqs = await _asyncio.gather(*(
            log.append("session_ended", now=_dt.datetime.now(_dt.UTC), actor="alice",
                       subject=f"device{i % 3}", body={"n": i},
                       personal={"alias": f"desk {i}"} if i % 2 else None)
            for i in range(60)))
        assert sorted(seqs) == list(range(1, 61))
        assert await log.verify_chain() is None
        events = await log.events()
        assert {e.body["n"] for e in events} == set(range(60))
    finally:
        await log.close()
