"""`verify_store`: the chain check through a store's own reads, the one
`audit verify --database-url` runs, on both backends; and the session-id
prefix search both stores answer."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pytest

from broker.audit.interface import AuditStore
from broker.audit.pg_store import PgAuditLog
from broker.audit.purge_record import PURGE_EVENT, purge_body
from broker.audit.signing import load_or_create_signing_key
from broker.audit.verify_store import verify_store
from tests.broker.helpers import both_backends, raw

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


async def fill(log: AuditStore, count: int) -> None:
    for n in range(count):
        await log.append("tick", now=T0 + dt.timedelta(seconds=n), session=f"s-{n % 3}",
                         actor="alice", body={"n": n})


async def tamper(log: AuditStore, request: pytest.FixtureRequest, sql: str) -> None:
    """Run `sql` on the events with their guard off, as their owner could."""
    if isinstance(log, PgAuditLog):
        # The test's own database, the one the `log` fixture opened.
        conn = await asyncpg.connect(request.getfixturevalue("database_url"))
        try:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute(sql)
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
        finally:
            await conn.close()
        return
    db = raw(request.getfixturevalue("tmp_path"))
    try:
        db.execute("DROP TRIGGER events_no_update")
        db.execute("DROP TRIGGER events_no_delete")
        db.execute(sql)
    finally:
        db.close()


@both_backends
async def test_an_intact_log_verifies(log: AuditStore) -> None:
    await fill(log, 1200)  # more than one page
    report = await verify_store(log, public_key=None)
    assert report.ok, report.problems
    assert (report.events, report.first_seq, report.last_seq) == (1200, 1, 1200)
    assert "no checkpoints" in report.notes[0]


@both_backends
async def test_an_empty_log_verifies(log: AuditStore) -> None:
    report = await verify_store(log, public_key=None)
    assert report.ok and report.events == 0


@both_backends
@pytest.mark.parametrize(("sql", "expected"), [
    ("UPDATE events SET actor = 'mallory' WHERE seq = 7", "seq 7: contents changed"),
    ("DELETE FROM events WHERE seq = 7", "seq 8: does not follow seq 6"),
    ("DELETE FROM events WHERE seq <= 3", "seq 4: the log starts here"),
])
async def test_a_changed_log_is_named_at_its_first_bad_seq(
        log: AuditStore, request: pytest.FixtureRequest, sql: str, expected: str) -> None:
    await fill(log, 10)
    await tamper(log, request, sql)
    report = await verify_store(log, public_key=None)
    assert not report.ok
    assert expected in report.problems[0].message
    assert report.first_bad_seq == int(expected.split()[1].rstrip(":"))


async def test_a_start_purged_under_a_signed_record_verifies(
        database_url: str, tmp_path: Path) -> None:
    log = await PgAuditLog.open(database_url, tmp_path)
    try:
        await fill(log, 6)
        key = load_or_create_signing_key(tmp_path)
        last = (await log.scan(after_seq=3, through_seq=4))[0]
        async with log.maintenance() as work:
            await work.append(PURGE_EVENT, now=T0, body=purge_body(
                key, through_seq=4, last_hash=last.hash, before="2025-03-01", count=4))
            await work.purge_events(4)
        report = await verify_store(log, public_key=key.verify_key)
        assert report.ok, report.problems
        assert (report.first_seq, report.purged_through) == (5, 4)
        # Without the key the record cannot be trusted.
        unchecked = await verify_store(log, public_key=None)
        assert not unchecked.ok and "no audit public key" in unchecked.problems[0].message
    finally:
        await log.close()


@both_backends
async def test_session_ids_by_prefix(log: AuditStore) -> None:
    for session in ("ab-1", "ab-2", "abc", "b", "ab-1"):
        await log.append("tick", now=T0, session=session)
    assert await log.sessions_starting("ab") == ["ab-1", "ab-2", "abc"]
    assert await log.sessions_starting("ab-", limit=1) == ["ab-1"]
    assert await log.sessions_starting("") == []
