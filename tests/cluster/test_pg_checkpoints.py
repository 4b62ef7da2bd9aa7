"""Signed checkpoints of the PostgreSQL audit log (broker.audit.pg_checkpoints):
written by the cluster's leader only, chained across leaders in the table,
found by every node for its agents' receipts, checked by `verify_store`,
and held against the log before a node serves."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import nacl.signing
import pytest

from broker.audit.checkpoint_record import make_checkpoint, parse_checkpoint
from broker.audit.checkpoints import PG_CHECKPOINT_FILE, Checkpointer
from broker.audit.pg_store import PgAuditLog, redacted_url
from broker.audit.ratchet import RATCHET_NAME
from broker.audit.retention import purge
from broker.audit.signing import AUDIT_KEY_FILE, load_or_create_signing_key
from broker.audit.verify_store import verify_store
from broker.cluster.leader import LEADER_LOCK, Leader
from broker.errors import AuditError
from tests.e2e.conftest import Deployment

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
WAIT = 20.0  # a bound on every wait below, never a timing assertion


def node_dirs(root: Path, *, same_audit_key: bool = True) -> tuple[Path, Path]:
    """Two nodes' data directories with one master key (and one audit key)."""
    a, b = root / "a", root / "b"
    a.mkdir(mode=0o700)
    b.mkdir(mode=0o700)
    load_or_create_signing_key(a)
    if same_audit_key:
        shutil.copy2(a / AUDIT_KEY_FILE, b / AUDIT_KEY_FILE)
    return a, b


@pytest.fixture
async def logs(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[PgAuditLog, PgAuditLog]]:
    a_dir, b_dir = node_dirs(tmp_path)
    a = await PgAuditLog.open(database_url, a_dir)
    for name in ("master.key", RATCHET_NAME):  # made by the first node's open
        shutil.copy2(a_dir / name, b_dir / name)
    b = await PgAuditLog.open(database_url, b_dir)
    yield a, b
    await b.close()
    await a.close()


async def table_records(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        return [str(r[0]) for r in await conn.fetch("SELECT record FROM checkpoints ORDER BY id")]
    finally:
        await conn.close()


def file_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def test_only_the_leader_writes_and_the_next_leader_chains_on_its_checkpoints(
        database_url: str, logs: tuple[PgAuditLog, PgAuditLog]) -> None:
    a, b = logs
    cp_a = Checkpointer(a, a.path, every_events=3, poll=0.05)
    cp_b = Checkpointer(b, b.path, every_events=3, poll=0.05)
    lead_a = Leader(database_url, [cp_a.lead], try_every=0.1)
    lead_b = Leader(database_url, [cp_b.lead], try_every=0.1)
    watcher = await asyncpg.connect(database_url)
    try:
        lead_a.start()
        await asyncio.wait_for(lead_a.leading.wait(), WAIT)
        lead_b.start()
        # Events from both nodes; the leader sees b's at the chain head.
        seqs = [await (a if n % 2 else b).append("tick", now=T0, body={"n": n})
                for n in range(6)]
        # b does not lead: its agents' receipts come from a's checkpoints.
        covering = await cp_b.covering(seqs[-1], WAIT)
        assert covering is not None and covering.seq >= seqs[-1]
        assert not lead_b.leading.is_set() and not cp_b.running
        assert covering.text() in file_lines(a.path / PG_CHECKPOINT_FILE)
        assert file_lines(b.path / PG_CHECKPOINT_FILE) == []

        # a's lock connection dies (its node was killed): b leads and chains on.
        await watcher.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = $1::bigint % 4294967296 AND granted", LEADER_LOCK)
        await asyncio.wait_for(lead_b.leading.wait(), WAIT)
        seq = await a.append("tick", now=T0, body={"n": 6})
        covering = await cp_a.covering(seq, WAIT)
        assert covering is not None and covering.seq >= seq
        # (That one may be a's last, written as its job ended; b seals it too.)
        async with asyncio.timeout(WAIT):
            while not any(parse_checkpoint(line).seq >= seq
                          for line in file_lines(b.path / PG_CHECKPOINT_FILE)):
                await asyncio.sleep(0.05)
    finally:
        await watcher.close()
        await lead_a.stop()
        await lead_b.stop()
    # One chain in the table, each node's file a part of it (a witness).
    records = await table_records(database_url)
    key = load_or_create_signing_key(a.path).verify_key
    chain = [parse_checkpoint(r, key) for r in records]
    assert all(later.prev == earlier.digest for earlier, later in itertools.pairwise(chain))
    in_files = (file_lines(a.path / PG_CHECKPOINT_FILE)
                + file_lines(b.path / PG_CHECKPOINT_FILE))
    assert set(in_files) <= set(records) and len(in_files) == len(set(in_files))
    report = await verify_store(a, public_key=key)
    assert report.ok, [p.message for p in report.problems]
    assert report.checkpoints == len(records) and report.unsealed == 0


async def single_node_with_checkpoints(log: PgAuditLog) -> None:
    """Five events on a log sealed by a node that leads alone."""
    cp = Checkpointer(log, log.path)
    await cp.start()
    try:
        for n in range(5):
            await log.append("tick", now=T0, body={"n": n})
        await cp.checkpoint()
    finally:
        await cp.stop()


async def test_verify_and_every_node_refuse_a_checkpoint_signed_by_another_key(
        database_url: str, logs: tuple[PgAuditLog, PgAuditLog]) -> None:
    a, _ = logs
    await single_node_with_checkpoints(a)
    key = load_or_create_signing_key(a.path).verify_key
    report = await verify_store(a, public_key=key)
    assert report.ok and report.checkpoints >= 2, [p.message for p in report.problems]

    # Someone with the owner's rights adds a checkpoint signed with their own key.
    newest = parse_checkpoint((await table_records(database_url))[-1])
    forged = make_checkpoint(nacl.signing.SigningKey.generate(), seq=newest.seq,
                             hash=newest.hash, time="2025-03-02T00:00:00Z", prev=newest.digest)
    conn = await asyncpg.connect(database_url)
    try:
        forged_id = await conn.fetchval(
            "INSERT INTO checkpoints (seq, record) VALUES ($1, $2) RETURNING id",
            forged.seq, forged.text())
    finally:
        await conn.close()
    report = await verify_store(a, public_key=key)
    assert not report.ok
    assert any(f"database checkpoint #{forged_id}: not a checkpoint signed by the audit key"
               in p.message for p in report.problems), [p.message for p in report.problems]
    with pytest.raises(AuditError, match="every node of a cluster must have the same audit key"):
        await Checkpointer(a, a.path).check()


async def test_a_node_with_another_audit_key_refuses_to_start(
        database_url: str, tmp_path: Path, logs: tuple[PgAuditLog, PgAuditLog]) -> None:
    a, _ = logs
    await single_node_with_checkpoints(a)
    stranger = tmp_path / "c"
    stranger.mkdir(mode=0o700)
    for name in ("master.key", RATCHET_NAME):
        shutil.copy2(a.path / name, stranger / name)
    c = await PgAuditLog.open(database_url, stranger)
    try:
        with pytest.raises(AuditError, match=r"copy audit.key from a node"):
            await Checkpointer(c, stranger).check()
    finally:
        await c.close()


async def test_verify_and_start_catch_events_cut_from_the_end(
        database_url: str, logs: tuple[PgAuditLog, PgAuditLog]) -> None:
    a, b = logs
    await single_node_with_checkpoints(a)
    # The owner turns the guards off and removes the newest two events
    # (and winds the chain head back, so that appends would go on).
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM events WHERE seq > 3")
            await conn.execute("UPDATE chain_head SET seq = 3, "
                               "hash = (SELECT hash FROM events WHERE seq = 3)")
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
    finally:
        await conn.close()
    key = load_or_create_signing_key(a.path).verify_key
    report = await verify_store(a, public_key=key)
    assert [p.message for p in report.problems if "truncated" in p.message], [
        p.message for p in report.problems]
    assert report.first_bad_seq == 4
    # Neither node serves on it, nor does a leader seal over it.
    for log in (a, b):
        with pytest.raises(AuditError, match="covers seq 5: events were deleted from the end"):
            await Checkpointer(log, log.path).check()
    with pytest.raises(AuditError, match="no checkpoint written"):
        await Checkpointer(b, b.path).checkpoint()


async def test_a_node_on_a_cut_log_refuses_to_start_with_one_line(
        database_url: str, deployment: Deployment) -> None:
    log = await PgAuditLog.open(database_url, deployment.data_dir)
    try:
        await single_node_with_checkpoints(log)
    finally:
        await log.close()
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM events WHERE seq > 2")
            await conn.execute("UPDATE chain_head SET seq = 2, "
                               "hash = (SELECT hash FROM events WHERE seq = 2)")
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
    finally:
        await conn.close()
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "broker", "serve", "--listen", "127.0.0.1:0",
         "--database-url", database_url, "--node-url", "wss://127.0.0.1:9",
         "--cert", str(deployment.pki.cert), "--key", str(deployment.pki.key),
         "--data-dir", str(deployment.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "the audit log ends at seq 2 but the checkpoint" in result.stderr
    assert "events were deleted from the end" in result.stderr
    assert "Traceback" not in result.stderr
    assert redacted_url(database_url) in result.stderr  # the table's, its password hidden
    assert database_url not in result.stdout + result.stderr


async def test_checkpoints_of_purged_events_still_verify(
        logs: tuple[PgAuditLog, PgAuditLog]) -> None:
    a, _ = logs
    cp = Checkpointer(a, a.path)
    await cp.start()
    try:
        for day in range(4):
            for n in range(3):
                await a.append("tick", now=T0 + dt.timedelta(days=day, minutes=n),
                               body={"day": day, "n": n})
            await cp.checkpoint()
        report = await purge(a, now=T0 + dt.timedelta(days=3, hours=12), event_days=2,
                             signing_key=load_or_create_signing_key(a.path))
        assert report.events_purged == 6  # days 0 and 1
    finally:
        await cp.stop()
    key = load_or_create_signing_key(a.path).verify_key
    result = await verify_store(a, public_key=key)
    assert result.ok, [p.message for p in result.problems]
    assert (result.first_seq, result.purged_through, result.unsealed) == (7, 6, 0)
    await Checkpointer(a, a.path).check()  # and a node starts on it


async def test_a_witness_kept_elsewhere_catches_a_cut_the_table_no_longer_shows(
        database_url: str, logs: tuple[PgAuditLog, PgAuditLog], tmp_path: Path) -> None:
    a, _ = logs
    await single_node_with_checkpoints(a)
    witness = tmp_path / "elsewhere.jsonl"  # the leader's own file, shipped away
    shutil.copy2(a.path / PG_CHECKPOINT_FILE, witness)
    key = load_or_create_signing_key(a.path).verify_key
    report = await verify_store(a, public_key=key, witnesses=[witness])
    assert report.ok and report.witness_checkpoints >= 2, [p.message for p in report.problems]
    # The owner cuts the newest events, and every checkpoint that says so.
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
            await conn.execute("ALTER TABLE checkpoints DISABLE TRIGGER USER")
            await conn.execute("DELETE FROM events WHERE seq > 3")
            await conn.execute("DELETE FROM checkpoints")
            await conn.execute("UPDATE chain_head SET seq = 3, "
                               "hash = (SELECT hash FROM events WHERE seq = 3)")
            await conn.execute("ALTER TABLE checkpoints ENABLE TRIGGER USER")
            await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
    finally:
        await conn.close()
    alone = await verify_store(a, public_key=key)
    assert alone.ok  # the table no longer says anything was sealed
    report = await verify_store(a, public_key=key, witnesses=[witness])
    assert not report.ok
    assert any("covers seq 5 but the log ends at seq 3: the log was cut" in p.message
               for p in report.problems), [p.message for p in report.problems]
