"""Rotating the key that wraps subject keys on a PostgreSQL log that several
nodes share (`broker.audit.ratchet`, `broker.audit.rotation`): the leader
rotates while the others keep reading and writing, every node forgets the
old generation once the database moves on, and a subject key copied out of
the database before the rotation (an old backup, WAL, row versions) opens
with nobody's files afterwards."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from broker.audit.keys import AuditKeys, SubjectKeyDestroyed, load_or_create_master_key
from broker.audit.pg_store import RESTORED_EVENT, PgAuditLog
from broker.audit.ratchet import RATCHET_NAME, Ratchet, check_value, next_generation
from broker.audit.retention import _rotate_if_due, purge, retention_loop
from broker.audit.rotation import ROTATION_EVENT, rotate_wrapping
from broker.audit.signing import load_or_create_signing_key
from broker.errors import AuditError
from tests.e2e.conftest import Deployment

T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
WAIT = 20.0


def copy_keys(source: Path, target: Path) -> None:
    """What an operator does for a new node: master.key and audit-ratchet.key."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name in ("master.key", RATCHET_NAME):
        shutil.copy(source / name, target / name)
        (target / name).chmod(0o600)


@pytest.fixture
async def nodes(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[PgAuditLog, PgAuditLog]]:
    """Two nodes of one cluster, each with its own data directory."""
    first = await PgAuditLog.open(database_url, tmp_path / "node1")
    copy_keys(tmp_path / "node1", tmp_path / "node2")
    try:
        second = await PgAuditLog.open(database_url, tmp_path / "node2")
    except BaseException:
        await first.close()
        raise
    yield first, second
    await second.close()
    await first.close()


async def owner_fetch(database_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def wrapped_keys(database_url: str) -> dict[str, bytes]:
    rows = await owner_fetch(
        database_url, "SELECT pseudonym, wrapped_key FROM subjects WHERE wrapped_key IS NOT NULL")
    return {str(r[0]): bytes(r[1]) for r in rows}


def keys_from_files(data_dir: Path) -> AuditKeys:
    """What anyone holding this node's files today can open."""
    return AuditKeys(load_or_create_master_key(data_dir / "master.key"),
                     Ratchet.load(data_dir / RATCHET_NAME))


async def aliases(audit: PgAuditLog) -> list[str]:
    return sorted((e.personal or {}).get("alias", "-") for e in await audit.events()
                  if e.type == "agent_connected")


async def test_the_leader_rotates_while_another_node_keeps_reading_and_writing(
        nodes: tuple[PgAuditLog, PgAuditLog], database_url: str, tmp_path: Path) -> None:
    leader, other = nodes
    await leader.append("agent_connected", now=T0, subject="dev-1",
                        personal={"alias": "front desk"})
    await other.append("agent_connected", now=T0, subject="dev-2",
                       personal={"alias": "Ana's laptop"})
    before = await wrapped_keys(database_url)
    assert {AuditKeys.generation_of(w) for w in before.values()} == {1}
    old_file = (tmp_path / "node2" / RATCHET_NAME).read_bytes()

    report = await rotate_wrapping(leader, now=T0 + dt.timedelta(days=14), actor="broker")
    assert (report.generation, report.subjects) == (2, 2)
    after = await wrapped_keys(database_url)
    assert {AuditKeys.generation_of(w) for w in after.values()} == {2}
    assert leader.ratchet.current.number == 2
    (rotated,) = [e for e in await leader.events() if e.type == ROTATION_EVENT]
    assert rotated.body == {"generation": 2, "subjects": 2} and rotated.personal is None

    # The other node has not looked yet; meeting the newer keys, it steps.
    assert other.ratchet.current.number == 1
    assert await aliases(other) == ["Ana's laptop", "front desk"]
    assert other.ratchet.current.number == 2
    new_file = (tmp_path / "node2" / RATCHET_NAME).read_bytes()
    assert json.loads(new_file)["generation"] == 2 and new_file != old_file
    assert stat.S_IMODE((tmp_path / "node2" / RATCHET_NAME).stat().st_mode) == 0o600

    # New data from either node is readable by the other.
    await other.append("agent_connected", now=T0, subject="dev-3",
                       personal={"alias": "reception"})
    await leader.append("agent_connected", now=T0, subject="dev-1",
                        personal={"alias": "front desk, again"})
    assert await aliases(leader) == await aliases(other) == [
        "Ana's laptop", "front desk", "front desk, again", "reception"]
    assert await leader.verify_chain() is None


async def test_a_node_that_only_writes_steps_before_making_a_key(
        nodes: tuple[PgAuditLog, PgAuditLog], database_url: str) -> None:
    leader, other = nodes
    await rotate_wrapping(leader, now=T0)
    # Its first key after the rotation is wrapped under the new generation
    # (the database would refuse one under the old).
    await other.append("agent_connected", now=T0, subject="dev-9",
                       personal={"alias": "lab"})
    assert other.ratchet.current.number == 2
    assert {AuditKeys.generation_of(w) for w in (await wrapped_keys(database_url)).values()} \
        == {2}
    assert await aliases(leader) == ["lab"]


async def test_an_idle_node_forgets_the_old_generation_by_itself(
        database_url: str, tmp_path: Path) -> None:
    leader = await PgAuditLog.open(database_url, tmp_path / "node1")
    copy_keys(tmp_path / "node1", tmp_path / "node2")
    idle = await PgAuditLog.open(database_url, tmp_path / "node2", follow_every=0.05)
    try:
        await rotate_wrapping(leader, now=T0)
        async with asyncio.timeout(WAIT):
            while json.loads((tmp_path / "node2" / RATCHET_NAME).read_text())[
                    "generation"] != 2:
                await asyncio.sleep(0.05)
        assert idle.ratchet.current.number == 2
    finally:
        await idle.close()
        await leader.close()


async def test_an_erased_key_copied_before_a_rotation_opens_with_nobodys_files(
        nodes: tuple[PgAuditLog, PgAuditLog], database_url: str, tmp_path: Path) -> None:
    leader, other = nodes
    await leader.append("agent_connected", now=T0, subject="dev-gone",
                        personal={"alias": "erased desk"})
    later = T0 + dt.timedelta(days=10)
    await other.append("agent_connected", now=later, subject="dev-kept",
                       personal={"alias": "kept desk"})
    gone = leader.pseudonym("dev-gone")
    # A backup taken now holds dev-gone's wrapped key...
    copied = (await wrapped_keys(database_url))[gone]
    # ... which retention then shreds (its personal data is past 14 days).
    signing_key = load_or_create_signing_key(tmp_path / "node1")
    report = await purge(leader, now=T0 + dt.timedelta(days=15), pii_days=14,
                         signing_key=signing_key)
    assert report.subjects_shredded == 1
    assert gone not in await wrapped_keys(database_url)
    # Until the rotation, today's files still open the old copy: the hole.
    assert keys_from_files(tmp_path / "node2").opened(copied) is not None

    await rotate_wrapping(leader, now=T0 + dt.timedelta(days=15))
    await other.follow_rotation()
    for node in ("node1", "node2"):
        keys = keys_from_files(tmp_path / node)
        with pytest.raises(SubjectKeyDestroyed):
            keys.unwrap(copied)
    # What was not erased reads on both nodes.
    assert await aliases(other) == ["-", "kept desk"]
    assert await aliases(leader) == ["-", "kept desk"]


async def test_keys_from_before_the_ratchet_are_rewrapped_by_the_first_rotation(
        database_url: str, tmp_path: Path) -> None:
    audit = await PgAuditLog.open(database_url, tmp_path)
    try:
        await audit.append("agent_connected", now=T0, subject="dev-1",
                           personal={"alias": "old desk"})
        # As a log written before the ratchet existed: the same subject key,
        # wrapped by the master-derived key (generation 0).
        master = AuditKeys(load_or_create_master_key(tmp_path / "master.key"))
        (wrapped,) = (await wrapped_keys(database_url)).values()
        legacy = master.wrap(keys_from_files(tmp_path).unwrap(wrapped))
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE subjects SET wrapped_key = $1", legacy)
        finally:
            await conn.close()
        assert await aliases(audit) == ["old desk"]

        await rotate_wrapping(audit, now=T0)
        assert {AuditKeys.generation_of(w) for w in (await wrapped_keys(database_url)).values()} \
            == {2}
        assert await aliases(audit) == ["old desk"]
        # The master key, which never changes, no longer opens the old copy.
        with pytest.raises(SubjectKeyDestroyed):
            keys_from_files(tmp_path).unwrap(legacy)
    finally:
        await audit.close()


async def test_a_node_with_a_wrong_or_missing_wrapping_key_refuses_to_start(
        database_url: str, tmp_path: Path) -> None:
    first = await PgAuditLog.open(database_url, tmp_path / "node1")
    try:
        await first.append("agent_connected", now=T0, subject="dev-1", personal={"alias": "a"})
        copy_keys(tmp_path / "node1", tmp_path / "node2")
        (tmp_path / "node2" / RATCHET_NAME).unlink()
        with pytest.raises(AuditError, match=r"missing.*copy audit-ratchet\.key from a running"):
            await PgAuditLog.open(database_url, tmp_path / "node2")
        # Another cluster's file (same master key, another first generation).
        (tmp_path / "elsewhere").mkdir()
        other_cluster = Ratchet.load_or_create(tmp_path / "elsewhere" / RATCHET_NAME, now=T0)
        shutil.copy(other_cluster.path, tmp_path / "node2" / RATCHET_NAME)
        with pytest.raises(AuditError, match="not the one the audit database"):
            await PgAuditLog.open(database_url, tmp_path / "node2")
        # A file readable by others is refused, as master.key is.
        copy_keys(tmp_path / "node1", tmp_path / "node2")
        (tmp_path / "node2" / RATCHET_NAME).chmod(0o644)
        with pytest.raises(AuditError, match="other users"):
            await PgAuditLog.open(database_url, tmp_path / "node2")
        # A copy from before a rotation steps forward when the node starts.
        copy_keys(tmp_path / "node1", tmp_path / "node2")
        await rotate_wrapping(first, now=T0)
        late = await PgAuditLog.open(database_url, tmp_path / "node2")
        try:
            assert late.ratchet.current.number == 2
            assert await aliases(late) == ["a"]
        finally:
            await late.close()
        # A database at an older generation that this ratchet never had.
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute("UPDATE audit_wrap SET generation = 1, check_value = 'ab'")
        finally:
            await conn.close()
        with pytest.raises(AuditError, match="belongs to another cluster"):
            await PgAuditLog.open(database_url, tmp_path / "node2")
    finally:
        await first.close()


async def test_a_database_restored_from_before_a_rotation_starts_with_those_keys_erased(
        database_url: str, tmp_path: Path) -> None:
    first = await PgAuditLog.open(database_url, tmp_path / "node1")
    try:
        await first.append("agent_connected", now=T0, subject="dev-1", personal={"alias": "a"})
        # The rows a backup taken now would bring back.
        conn = await asyncpg.connect(database_url)
        try:
            backup_wrap = await conn.fetchrow("SELECT * FROM audit_wrap")
            assert backup_wrap is not None
            backup_keys = await conn.fetch("SELECT pseudonym, wrapped_key FROM subjects")
            await rotate_wrapping(first, now=T0)
            await rotate_wrapping(first, now=T0)
            # Restored: the subject keys and the generation as they were.
            await conn.executemany("UPDATE subjects SET wrapped_key = $2 WHERE pseudonym = $1",
                                   [tuple(r) for r in backup_keys])
            await conn.execute("UPDATE audit_wrap SET generation = $1, check_value = $2, "
                               "since = $3", *tuple(backup_wrap)[1:])
        finally:
            await conn.close()
    finally:
        await first.close()
    copy_keys(tmp_path / "node1", tmp_path / "node2")
    restored = await PgAuditLog.open(database_url, tmp_path / "node2")
    try:
        assert restored.ratchet.current.number == 3
        # What the backup held is erased, as it was before the restore...
        assert await aliases(restored) == ["-"]
        assert await wrapped_keys(database_url) == {}
        (record,) = await restored.events(type=RESTORED_EVENT)
        assert record.body == {"database_generation": 1, "generation": 3,
                               "subjects_erased": 1}
        # ... and the log works: new data reads, the chain verifies.
        await restored.append("agent_connected", now=T0, subject="dev-1",
                              personal={"alias": "b"})
        assert await aliases(restored) == ["-", "b"]
        assert await restored.verify_chain() is None
    finally:
        await restored.close()
    # The first node, restarted, agrees (its file is at the same generation).
    again = await PgAuditLog.open(database_url, tmp_path / "node1")
    await again.close()


async def test_rotation_is_due_once_a_retention_period_after_the_last(
        nodes: tuple[PgAuditLog, PgAuditLog]) -> None:
    leader, other = nodes
    since = await leader.wrapping_since()
    await _rotate_if_due(leader, since + dt.timedelta(days=13, hours=23), 14)
    assert leader.ratchet.current.number == 1
    await _rotate_if_due(leader, since + dt.timedelta(days=14), 14)
    assert leader.ratchet.current.number == 2
    # The clock starts again at the rotation, which every node sees.
    assert await other.wrapping_since() == since + dt.timedelta(days=14)
    await _rotate_if_due(other, since + dt.timedelta(days=27), 14)
    assert await other.wrapping_since() == since + dt.timedelta(days=14)
    await _rotate_if_due(other, since + dt.timedelta(days=28), 14)
    assert other.ratchet.current.number == 3


async def test_the_retention_loop_rotates_on_postgresql(
        nodes: tuple[PgAuditLog, PgAuditLog], tmp_path: Path) -> None:
    # The loop is the leader's job (server.py: `cluster.lead([retain, ...])`).
    leader, other = nodes
    since = await leader.wrapping_since()
    loop = asyncio.create_task(retention_loop(
        leader, signing_key=load_or_create_signing_key(tmp_path / "node1"), pii_days=14,
        interval=3600, clock=lambda: since + dt.timedelta(days=15)))
    try:
        async with asyncio.timeout(WAIT):
            while leader.ratchet.current.number != 2:
                await asyncio.sleep(0.05)
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop
    assert await other.follow_rotation()
    assert [e.body["generation"] for e in await other.events(type=ROTATION_EVENT)] == [2]


def test_the_ratchet_steps_one_way_and_checks_without_revealing(tmp_path: Path) -> None:
    ratchet = Ratchet.load_or_create(tmp_path / RATCHET_NAME, now=T0)
    first = ratchet.current
    second = next_generation(first, T0)
    third = next_generation(second, T0)
    assert len({first.key, second.key, third.key}) == 3
    assert check_value(first) != check_value(second)
    assert first.key.hex() not in check_value(first)
    assert not ratchet.advance(1, check_value(first), T0)
    with pytest.raises(AuditError, match="not the one"):
        ratchet.advance(3, check_value(second), T0)
    assert ratchet.current == first  # a refused step changes nothing
    assert ratchet.advance(3, check_value(third), T0)  # two rotations missed
    assert Ratchet.load(tmp_path / RATCHET_NAME).current.key == third.key
    with pytest.raises(AuditError, match="older than a key rotation"):
        ratchet.advance(2, check_value(second), T0)


async def test_appends_from_another_node_during_a_rotation_all_land_and_read(
        nodes: tuple[PgAuditLog, PgAuditLog], database_url: str) -> None:
    leader, other = nodes
    for n in range(5):
        await leader.append("agent_connected", now=T0, subject=f"dev-{n}",
                            personal={"alias": f"desk {n}"})

    async def write(n: int) -> int:
        return await other.append("agent_connected", now=T0, subject=f"dev-{n}",
                                  personal={"alias": f"desk {n}"})

    # New subjects and known ones, on the other node, while the leader rotates.
    writes = [asyncio.create_task(write(n)) for n in range(5, 45)]
    await rotate_wrapping(leader, now=T0)
    await asyncio.gather(*writes)
    assert {AuditKeys.generation_of(w) for w in (await wrapped_keys(database_url)).values()} \
        == {2}
    expected = sorted(f"desk {n}" for n in range(45))
    assert await aliases(leader) == await aliases(other) == expected
    assert await leader.verify_chain() is None


async def test_serve_without_the_wrapping_key_stops_with_one_line_saying_what_to_copy(
        database_url: str, tmp_path: Path, deployment: Deployment) -> None:
    first = await PgAuditLog.open(database_url, tmp_path / "node1")
    await first.close()
    deployment.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutil.copy(tmp_path / "node1" / "master.key", deployment.data_dir / "master.key")
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--listen", "127.0.0.1:0",
         "--database-url", database_url, "--node-url", "wss://127.0.0.1:9",
         "--cert", str(deployment.pki.cert), "--key", str(deployment.pki.key),
         "--data-dir", str(deployment.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert result.returncode != 0
    assert "copy audit-ratchet.key from a running node" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (deployment.data_dir / RATCHET_NAME).exists()  # none made up


async def test_the_database_refuses_a_new_key_under_an_old_generation(
        nodes: tuple[PgAuditLog, PgAuditLog], database_url: str, tmp_path: Path) -> None:
    leader, _ = nodes
    stale = keys_from_files(tmp_path / "node2").new_wrapped_subject_key()  # generation 1
    await rotate_wrapping(leader, now=T0)
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError,
                           match="another generation"):
            await conn.fetchval("SELECT consentry_subject_key('p', $1, 't')", stale)
    finally:
        await conn.close()


async def test_a_database_from_before_the_ratchet_is_upgraded_on_open(
        database_url: str, tmp_path: Path) -> None:
    audit = await PgAuditLog.open(database_url, tmp_path)
    await audit.append("agent_connected", now=T0, subject="dev-1", personal={"alias": "a"})
    await audit.close()
    conn = await asyncpg.connect(database_url)
    try:  # as the schema was at version 1: no wrapping generation
        await conn.execute("DROP TABLE audit_wrap; UPDATE audit_schema SET version = 1")
    finally:
        await conn.close()
    again = await PgAuditLog.open(database_url, tmp_path)
    try:
        assert await aliases(again) == ["a"]
        assert again.ratchet.current.number == 1
    finally:
        await again.close()


def test_a_check_value_that_is_not_hex_is_refused_not_crashed_on(tmp_path: Path) -> None:
    ratchet = Ratchet.load_or_create(tmp_path / RATCHET_NAME, now=T0)
    with pytest.raises(AuditError, match="not the one"):
        ratchet.advance(1, "é\x1b[2J", T0)
