"""`audit migrate --to postgresql://…`: a single node's SQLite log (sessions,
personal data, a retention purge with its signed record, checkpoints) copied
exactly into an empty PostgreSQL log, which `audit verify --database-url`
then passes; a target that already holds a log, and a SQLite log that is
not intact, are refused with nothing written."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import asyncssh
import pytest

from broker.audit import migrate
from broker.audit.checkpoints import Checkpointer
from broker.audit.keys import AuditKeys
from broker.audit.pg_store import PgAuditLog
from broker.audit.retention import purge
from broker.audit.rotation import rotate_wrapping
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.audit_cli.migrate import Progress
from broker.cli import main
from broker.registry import REGISTRY_FILE, Registry, device_digest

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
DEVICE = "dev-5b1f0c3e-8d7a-4c2e-9f00-aa11bb22cc33"
ALIAS = "Grandma's PC"


def day(n: float) -> dt.datetime:
    return T0 + dt.timedelta(days=n)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    # The CLI runs its own event loop: a thread, since the test has one too.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, list(args)).result()
    out, err = capsys.readouterr()
    return code, out, err


async def seed_single_node(data_dir: Path) -> None:
    """What a node's log holds after a few weeks: old events purged by
    retention (a signed events_purged record), a session with the device's
    personal data, and signed checkpoints in the table and the file."""
    audit = await AuditLog.open(data_dir)
    try:
        for n in range(3):
            await audit.append("engineer_login", now=day(0) + dt.timedelta(minutes=n),
                               actor="alice", body={"role": "engineer"})
        await audit.append("agent_connected", now=day(20), subject=DEVICE,
                           body={"shared": ["hostname"]},
                           personal={"alias": ALIAS, "ip": "192.0.2.7", "hostname": "pc1"})
        story: list[tuple[str, dict[str, Any]]] = [
                ("join_requested", {"wants": ["view"]}),
                ("session_started", {"granted": ["view"]}),
                ("session_ended", {"reason": "engineer_left", "duration_s": 60,
                                   "bytes_to_agent": 10, "bytes_to_console": 2000})]
        for offset, (type_, body) in enumerate(story, 1):
            await audit.append(type_, now=day(20) + dt.timedelta(minutes=offset),
                               session="s-0123456789abcdef", actor="alice", subject=DEVICE,
                               body=body)
        # The device's key is wrapped under the ring's first generation
        # (audit-wrap.keys), not the master key's: a rotation ran.
        await rotate_wrapping(audit, now=day(20) + dt.timedelta(hours=1))
        key = load_or_create_signing_key(data_dir)
        checkpointer = Checkpointer(audit, data_dir)
        await checkpointer.checkpoint()
        await purge(audit, now=day(21), pii_days=14, event_days=10, signing_key=key)
        await checkpointer.checkpoint()
    finally:
        await audit.close()


async def pg_counts(url: str) -> tuple[int, int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        if await conn.fetchval("SELECT to_regclass('events')") is None:
            return (0, 0, 0, 0)
        row = await conn.fetchrow(
            "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM subjects), "
            "(SELECT COUNT(*) FROM personal), (SELECT COUNT(*) FROM checkpoints)")
        assert row is not None
        return (int(row[0]), int(row[1]), int(row[2]), int(row[3]))
    finally:
        await conn.close()


def sqlite_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(data_dir / "audit.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def head_trigger_is_on(url: str) -> bool:
    """Whether the chain head's guard is on (migrate turns it off inside its
    transaction only)."""
    (row,) = await pg_rows(url, "SELECT tgenabled::text FROM pg_trigger "
                                "WHERE tgname = 'events_follow_head'")
    return bool(row[0] == "O")


async def pg_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in await conn.fetch(sql)]
    finally:
        await conn.close()


async def test_a_purged_checkpointed_log_moves_exactly_and_verifies(
        tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of two: the copy's paging (events, then their personal rows)
    # is what runs, as on a log of millions.
    monkeypatch.setattr(migrate, "BATCH", 2)
    data = tmp_path / "data"
    await seed_single_node(data)
    events = sqlite_rows(data, "SELECT seq, time, type, session, actor, subject, body, "
                               "prev_hash, hash FROM events ORDER BY seq")
    assert events[0][0] > 1  # retention purged the oldest: the chain starts later

    code, out, err = cli(capsys, "audit", "migrate", "--to", database_url,
                         "--data-dir", str(data))
    assert code == 0, err
    assert f"{len(events)} events (seq {events[0][0]}-{events[-1][0]})" in out
    assert "master.key" in out and "audit-ratchet.key" in out and "audit.key" in out
    assert "audit verify --database-url" in out
    assert database_url.split("//", 1)[1].split("@")[0].split(":")[1] not in out + err

    # Row for row: events, subjects, personal rows, checkpoints; then the
    # migration's own record, chained after them.
    copied = await pg_rows(database_url, "SELECT seq, time, type, session, actor, subject, "
                                         "body, prev_hash, hash FROM events ORDER BY seq")
    assert copied[:-1] == events
    assert copied[-1][2] == "audit_migrated" and copied[-1][7] == events[-1][8]
    # Each subject key is the same key, wrapped anew under the cluster's
    # wrapping key (the ratchet's generation, not the SQLite ring's).
    sql = "SELECT pseudonym, wrapped_key, created, erased FROM subjects ORDER BY pseudonym"
    before, after = sqlite_rows(data, sql), await pg_rows(database_url, sql)
    assert [(r[0], r[2], r[3]) for r in after] == [(r[0], r[2], r[3]) for r in before]
    assert any(r[1] is not None and AuditKeys.generation_of(r[1]) >= 1 for r in before)
    sqlite_keys = migrate._sqlite_keys(data)
    log = await PgAuditLog.open(database_url, data)
    try:
        async with log.maintenance() as work:
            for (_, old, _, _), (_, new, _, _) in zip(before, after, strict=True):
                if old is None:
                    assert new is None
                    continue
                assert new != old and AuditKeys.generation_of(new) >= 1
                assert work.keys.unwrap(new) == sqlite_keys.unwrap(old)
    finally:
        await log.close()
    for table, columns, order in (
            ("personal", "seq, pseudonym, created, ciphertext, alias_tag", "seq"),
            ("checkpoints", "seq, record", "id")):
        sql = f"SELECT {columns} FROM {table} ORDER BY {order}"
        assert await pg_rows(database_url, sql) == sqlite_rows(data, sql), table
    assert sqlite_rows(data, "SELECT COUNT(*) FROM checkpoints")[0][0] >= 1
    assert await head_trigger_is_on(database_url)

    # The copied checkpoints are checked there too: signatures, their links,
    # and the events they sealed; only the migration's record is unsealed.
    code, out, err = cli(capsys, "audit", "verify", "--database-url", database_url,
                         "--data-dir", str(data), "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["ok"] and report["purged_through"] == events[0][0] - 1
    assert report["checkpoints"] == 2 and report["unsealed"] == 1


async def test_a_second_migrate_into_a_log_that_holds_events_writes_nothing(
        tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    await seed_single_node(data)
    assert cli(capsys, "audit", "migrate", "--to", database_url, "--data-dir", str(data))[0] == 0
    before = await pg_counts(database_url)

    code, _out, err = cli(capsys, "audit", "migrate", "--to", database_url,
                         "--data-dir", str(data))
    assert code != 0
    assert "already holds an audit log" in err and "nothing was written" in err
    assert "Traceback" not in err
    assert await pg_counts(database_url) == before


async def test_a_broken_sqlite_chain_is_not_copied(
        tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    await seed_single_node(data)
    conn = sqlite3.connect(data / "audit.db", isolation_level=None)
    try:
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("UPDATE events SET body = '{\"role\":\"admin\"}' "
                     "WHERE seq = (SELECT MAX(seq) FROM events WHERE type = 'session_ended')")
    finally:
        conn.close()

    code, _out, err = cli(capsys, "audit", "migrate", "--to", database_url,
                         "--data-dir", str(data))
    assert code != 0
    assert "is not intact, so it is not copied" in err and "Traceback" not in err
    assert await pg_counts(database_url) == (0, 0, 0, 0)


async def test_a_failure_during_the_copy_leaves_the_target_empty(
        tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # A row PostgreSQL refuses (text cannot hold NUL), late in the copy:
    # everything before it is rolled back with it.
    data = tmp_path / "data"
    await seed_single_node(data)
    audit = await AuditLog.open(data)
    try:
        await audit.append("engineer_login", now=day(21), actor="bob\x00", body={})
    finally:
        await audit.close()

    code, _out, err = cli(capsys, "audit", "migrate", "--to", database_url,
                         "--data-dir", str(data))
    assert code != 0
    assert "nothing was written" in err and "Traceback" not in err
    assert (await pg_counts(database_url))[0] == 0
    assert await head_trigger_is_on(database_url)
    (head,) = await pg_rows(database_url, "SELECT seq FROM chain_head")
    assert head == (0,)


async def test_the_broker_role_cannot_migrate(
        tmp_path: Path, database_url: str, broker_role_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    # The schema installed by its owner, as a cluster's is; the broker role
    # may only append, so it may not move the head nor write subjects' keys.
    data = tmp_path / "data"
    await seed_single_node(data)
    owner = await PgAuditLog.open(database_url, data)
    await owner.close()
    code, _out, err = cli(capsys, "audit", "migrate", "--to", broker_role_url,
                          "--data-dir", str(data))
    assert code != 0
    assert "database owner's URL" in err and "nothing was written" in err
    assert await pg_counts(database_url) == (0, 0, 0, 0)
    assert await head_trigger_is_on(database_url)


def test_migrate_needs_a_postgresql_url(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "audit", "migrate", "--to", "sqlite:///x.db",
                       "--data-dir", str(tmp_path))
    assert code != 0 and "postgresql://" in err


def test_progress_is_shown_every_few_percent_of_a_big_log(
        capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress()
    for copied in range(2000, 200_001, 2000):
        progress(copied, 200_000)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "copied 10000/200000 events" and lines[-1] == "copied 200000/200000 events"
    assert len(lines) == 20
    small = Progress()
    small(50, 50)
    assert capsys.readouterr().err == ""  # a small log is copied without a word


async def test_the_registry_moves_too_but_never_replaces_what_the_cluster_has(
        tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    await seed_single_node(data)
    registry = Registry(data / REGISTRY_FILE)
    alice_key, bob_key = (asyncssh.generate_private_key("ssh-ed25519").export_public_key()
                          .decode().strip() for _ in range(2))
    registry.add("alice", alice_key, display="Alice Example", now=day(0))
    registry.add("bob", bob_key, role="admin", now=day(0))
    assert registry.bind_device("pseudonym-of-pc1", b"device key", now=day(20))
    # The cluster already knows a "bob" (added there before the move), with
    # another key: the cluster's stays.
    log = await PgAuditLog.open(database_url, data)
    await log.close()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("INSERT INTO engineers (name, display, role, public_key, added) "
                           "VALUES ('bob', 'Bob (cluster)', 'engineer', 'ssh-ed25519 AAAAother', "
                           "'2025-03-01T00:00:00Z')")
    finally:
        await conn.close()

    code, out, err = cli(capsys, "audit", "migrate", "--to", database_url,
                         "--data-dir", str(data))
    assert code == 0, err
    assert ("registry: 1 engineer(s) and 1 device binding(s) copied into the cluster's "
            "(1 the cluster already had, kept as it has them)") in out
    engineers = await pg_rows(database_url, "SELECT name, display, role, public_key "
                                            "FROM engineers ORDER BY name")
    assert engineers == [("alice", "Alice Example", "engineer", alice_key),
                         ("bob", "Bob (cluster)", "engineer", "ssh-ed25519 AAAAother")]
    assert await pg_rows(database_url, "SELECT pseudonym, key_sha256 FROM devices") == [
        ("pseudonym-of-pc1", device_digest(b"device key"))]
    [(body,)] = await pg_rows(database_url,
                              "SELECT body FROM events WHERE type = 'audit_migrated'")
    assert json.loads(body)["engineers"] == 1 and json.loads(body)["devices"] == 1
