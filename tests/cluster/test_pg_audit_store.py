"""The audit log on PostgreSQL: what several nodes writing one log need
(contiguous seq across writers, one chain), and the database's own guards
(triggers, the broker's role). The tests every backend passes are in
tests/broker (marked `both_backends`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from broker.admin_api import answer_audit_request
from broker.audit.chain import GENESIS_HASH
from broker.audit.pg_schema import BROKER_ROLE, SCHEMA_VERSION, grant_broker_role
from broker.audit.pg_store import PgAuditLog, redacted_url
from broker.audit.ratchet import RATCHET_NAME
from broker.audit.retention import purge
from broker.audit.signing import load_or_create_signing_key
from broker.audit.verify_store import verify_store
from broker.errors import AuditError, AuditWriteError
from broker.registry import Engineer
from broker.wire.messages import decode, validate
from tests.cluster.harness import Postgres

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
DEVICE = "dev-5b1f0c3e-8d7a-4c2e-9f00-aa11bb22cc33"


@pytest.fixture
async def log(database_url: str, tmp_path: Path) -> AsyncIterator[PgAuditLog]:
    audit = await PgAuditLog.open(database_url, tmp_path)
    yield audit
    await audit.close()


@pytest.fixture
def broker_url(postgres: Postgres, database_url: str, log: PgAuditLog) -> Iterator[str]:
    """The URL of a login role that has only `consentry_broker`'s rights, on
    the test's database (the schema installed by its owner, `log`)."""
    name, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        postgres.psql(f"GRANT {BROKER_ROLE} TO {name}")
        yield database_url.replace(f"postgres:{postgres.password}@", f"{name}:{password}@")
    finally:
        postgres.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE usename = '{name}'")
        postgres.psql(f"DROP ROLE {name}")


async def test_two_nodes_appending_at_once_make_one_contiguous_chain(
        database_url: str, tmp_path: Path, log: PgAuditLog) -> None:
    # Two stores, two pools: what two broker nodes are to the database.
    other = await PgAuditLog.open(database_url, tmp_path)
    try:
        seqs = await asyncio.gather(*(
            (log if n % 2 else other).append(
                "tick", now=T0, session=f"s{n % 5}", subject=DEVICE, body={"n": n},
                personal={"alias": f"desk {n}"} if n % 3 == 0 else None)
            for n in range(80)))
        assert sorted(seqs) == list(range(1, 81))
        assert await log.verify_chain() is None
        assert await other.verify_chain() is None
        events = await other.events()
        assert [e.seq for e in events] == list(range(1, 81))
        assert {e.body["n"] for e in events} == set(range(80))
        # One key for the subject though both nodes sealed its data.
        assert all(e.personal == {"alias": f"desk {e.body['n']}"}
                   for e in events if e.body["n"] % 3 == 0)
    finally:
        await other.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM subjects") == 1
        head = await conn.fetchrow("SELECT seq, hash FROM chain_head")
        assert head is not None and head["seq"] == 80 and head["hash"] == events[-1].hash
    finally:
        await conn.close()


async def test_appends_waiting_on_a_commit_go_in_together(database_url: str,
                                                          log: PgAuditLog) -> None:
    seqs = await asyncio.gather(*(log.append("tick", now=T0, body={"n": n})
                                  for n in range(50)))
    assert sorted(seqs) == list(range(1, 51))
    conn = await asyncpg.connect(database_url)
    try:
        # Rows one transaction inserted share its xmin: fewer transactions than events.
        transactions = await conn.fetchval("SELECT count(DISTINCT xmin::text) FROM events")
    finally:
        await conn.close()
    assert transactions < 50
    assert await log.verify_chain() is None


_WRITER = """
import asyncio, datetime as dt, sys
from pathlib import Path
from broker.audit.pg_store import PgAuditLog

async def main() -> None:
    log = await PgAuditLog.open(sys.argv[1], Path(sys.argv[2]))
    try:
        now = dt.datetime.now(dt.UTC)
        await asyncio.gather(*(log.append("tick", now=now, actor=sys.argv[3], body={"n": n})
                               for n in range(int(sys.argv[4]))))
    finally:
        await log.close()

asyncio.run(main())
"""


async def test_writers_in_separate_processes_make_one_contiguous_chain(
        database_url: str, tmp_path: Path, log: PgAuditLog) -> None:
    writers = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, database_url, str(tmp_path), f"node{n}", "60")
        for n in range(3)]
    try:
        codes = await asyncio.wait_for(asyncio.gather(*(w.wait() for w in writers)), 60)
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
                await writer.wait()
    assert codes == [0, 0, 0]
    events = await log.events()
    assert [e.seq for e in events] == list(range(1, 181))
    assert {e.actor for e in events} == {"node0", "node1", "node2"}
    assert await log.verify_chain() is None


async def test_sessions_commit_durably_and_the_server_ends_their_idle_transactions(
        log: PgAuditLog) -> None:
    # The test server runs with synchronous_commit off; the store's sessions do not.
    async with log.maintenance(write=False) as work:
        assert await work.conn.fetchval("SHOW synchronous_commit") == "on"
        assert await work.conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"


async def test_the_consoles_verify_runs_through_the_store(log: PgAuditLog) -> None:
    for n in range(5):
        await log.append("tick", now=T0, body={"n": n})
    sent: list[str] = []

    class Socket:
        async def send(self, frame: str) -> None:
            sent.append(frame)

    admin = Engineer("root", "Root Admin", "admin", "ssh-ed25519 AAAA", "2025-01-01T00:00:00Z")
    await answer_audit_request(log, Socket(), admin,  # type: ignore[arg-type]
                               validate("audit_verify", {}))
    reply = decode(sent[0])
    assert reply["ok"] is True and "audit log intact: 5 events" in reply["summary"]
    assert (await log.events())[-1].type == "audit_verified"


async def test_a_rolled_back_append_leaves_no_gap(database_url: str, log: PgAuditLog) -> None:
    await log.append("a", now=T0)
    with pytest.raises(RuntimeError):
        async with log.maintenance() as work:
            await work.append("b", now=T0)
            raise RuntimeError("the change this event records failed")
    assert await log.append("c", now=T0) == 2
    assert [(e.seq, e.type) for e in await log.events()] == [(1, "a"), (2, "c")]
    assert await log.verify_chain() is None


async def test_the_database_refuses_rows_that_do_not_follow_the_head(
        database_url: str, log: PgAuditLog) -> None:
    await log.append("a", now=T0)
    conn = await asyncpg.connect(database_url)
    try:
        for seq, prev in ((5, (await log.events())[0].hash), (2, GENESIS_HASH)):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError,
                               match="does not follow the chain head"):
                await conn.execute(
                    "INSERT INTO events (seq, time, type, body, prev_hash, hash) "
                    "VALUES ($1, 't', 'x', '{}', $2, 'h')", seq, prev)
    finally:
        await conn.close()
    assert await log.verify_chain() is None


@pytest.mark.parametrize("statement", [
    "UPDATE events SET type = 'edited'",
    "DELETE FROM events",
    "TRUNCATE events CASCADE",
    "UPDATE checkpoints SET record = 'x'",
    "DELETE FROM checkpoints",
    "TRUNCATE checkpoints",
])
async def test_triggers_refuse_changes_even_to_the_owner(
        database_url: str, log: PgAuditLog, statement: str) -> None:
    await log.append("a", now=T0)
    conn = await asyncpg.connect(database_url)  # the superuser that owns the tables
    try:
        await conn.execute("INSERT INTO checkpoints (seq, record) VALUES (1, '{}')")
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await conn.execute(statement)
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
        assert await conn.fetchval("SELECT count(*) FROM checkpoints") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("statement", [
    "DELETE FROM events",
    "UPDATE events SET type = 'edited'",
    "DELETE FROM personal",
    "UPDATE subjects SET wrapped_key = NULL",
    "INSERT INTO subjects (pseudonym, created) VALUES ('x', 'now')",
    "UPDATE chain_head SET seq = 0",
    "INSERT INTO purge_gate VALUES (100)",
    "DROP TABLE events",
    "ALTER TABLE events DISABLE TRIGGER USER",
])
async def test_the_broker_role_may_only_read_and_append(
        broker_url: str, statement: str) -> None:
    conn = await asyncpg.connect(broker_url)
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_a_node_under_the_broker_role_appends_seals_and_reads(
        broker_url: str, log: PgAuditLog, tmp_path: Path) -> None:
    await log.append("first", now=T0, subject=DEVICE, personal={"alias": "old"})
    node = await PgAuditLog.open(broker_url, tmp_path)  # same master key: same data dir
    try:
        assert await node.append("second", now=T0, subject=DEVICE,
                                 personal={"alias": "new"}) == 2
        assert [e.personal for e in await node.events()] == [{"alias": "old"},
                                                              {"alias": "new"}]
        page, more = await node.query(alias="OLD")
        assert [e.seq for e in page] == [2, 1] and not more  # newest first
        assert await node.verify_chain() is None
    finally:
        await node.close()


async def test_the_broker_role_cannot_install_the_schema(
        postgres: Postgres, database_url: str, tmp_path: Path) -> None:
    name, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        database = database_url.rsplit("/", 1)[1]
        postgres.psql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", database=database)
        url = database_url.replace(f"postgres:{postgres.password}@", f"{name}:{password}@")
        with pytest.raises(AuditError, match="cannot create it") as caught:
            await PgAuditLog.open(url, tmp_path)
        assert password not in str(caught.value)
    finally:
        postgres.psql(f"DROP ROLE {name}")


async def test_installing_again_changes_nothing(database_url: str, tmp_path: Path,
                                                log: PgAuditLog) -> None:
    await log.append("a", now=T0)
    again = await asyncio.gather(*(PgAuditLog.open(database_url, tmp_path) for _ in range(3)))
    for store in again:
        await store.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT version FROM audit_schema") == SCHEMA_VERSION
        assert await conn.fetchval("SELECT count(*) FROM chain_head") == 1
        assert await conn.fetchval("SELECT count(*) FROM events") == 1
    finally:
        await conn.close()
    assert await log.append("b", now=T0) == 2


async def test_a_write_the_database_refuses_fails_closed_and_leaves_the_chain_whole(
        postgres: Postgres, database_url: str, log: PgAuditLog) -> None:
    await log.append("a", now=T0)
    conn = await asyncpg.connect(database_url)
    try:
        # Refuse inserts the way a full disk would, halfway through the batch.
        await conn.execute("CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
                           "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$")
        await conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON personal "
                           "FOR EACH ROW EXECUTE FUNCTION refuse()")
        results = await asyncio.gather(
            log.append("b", now=T0),
            log.append("c", now=T0, subject=DEVICE, personal={"ip": "192.0.2.1"}),
            return_exceptions=True)
        assert any(isinstance(r, AuditWriteError) and "disk full" in str(r) for r in results)
        await conn.execute("DROP TRIGGER refuse ON personal")
    finally:
        await conn.close()
    seq = await log.append("d", now=T0)
    events = await log.events()
    assert [e.seq for e in events] == list(range(1, seq + 1))
    assert "c" not in {e.type for e in events}
    assert await log.verify_chain() is None


async def test_a_dropped_connection_fails_one_append_closed_then_recovers(
        postgres: Postgres, log: PgAuditLog, database_url: str) -> None:
    await log.append("a", now=T0)
    database = database_url.rsplit("/", 1)[1]
    postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                  f"WHERE datname = '{database}' AND pid <> pg_backend_pid()")
    outcomes: list[int | None] = []
    for _ in range(2):
        try:
            outcomes.append(await log.append("b", now=T0))
        except AuditWriteError:
            outcomes.append(None)
    assert outcomes[-1] is not None  # the pool reconnected
    assert await log.verify_chain() is None


async def test_the_master_key_must_come_with_a_log_that_has_events(
        database_url: str, tmp_path: Path, log: PgAuditLog) -> None:
    await log.append("a", now=T0)
    with pytest.raises(AuditError, match=r"master key .* is missing"):
        await PgAuditLog.open(database_url, tmp_path / "another-node")


async def test_a_node_with_another_master_key_is_refused(
        database_url: str, tmp_path: Path, log: PgAuditLog) -> None:
    other = tmp_path / "other-node"
    with pytest.raises(AuditError, match="not the one the audit database"):
        await PgAuditLog.open(database_url, other)  # an empty log, a fresh key: still refused
    (other / "master.key").write_bytes((tmp_path / "master.key").read_bytes())
    # The master key alone is not enough: the wrapping key must come too.
    with pytest.raises(AuditError, match=r"audit-ratchet.key is missing.*copy audit-ratchet"):
        await PgAuditLog.open(database_url, other)
    shutil.copy(tmp_path / RATCHET_NAME, other / RATCHET_NAME)
    copied = await PgAuditLog.open(database_url, other)
    await copied.close()


async def test_an_unreachable_database_is_refused_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://broker:s3cret-pw@127.0.0.1:1/audit"
    with pytest.raises(AuditError, match="cannot connect") as caught:
        await PgAuditLog.open(url, tmp_path)
    assert "s3cret-pw" not in str(caught.value)
    assert redacted_url(url) == "postgresql://broker:***@127.0.0.1:1/audit"


async def test_retention_runs_on_the_broker_role_and_the_log_still_verifies(
        broker_url: str, database_url: str, log: PgAuditLog, tmp_path: Path) -> None:
    day0 = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
    for n in range(4):
        await log.append("tick", now=day0 + dt.timedelta(days=n), subject=DEVICE,
                         personal={"ip": f"10.0.0.{n}"})
    key = load_or_create_signing_key(tmp_path)
    node = await PgAuditLog.open(broker_url, tmp_path)
    try:
        report = await purge(node, now=day0 + dt.timedelta(days=20), event_days=18,
                             signing_key=key)
        # Every personal row is past 14 days (gone first), two whole days of events past 18.
        assert (report.personal_rows, report.subjects_shredded) == (4, 1)
        assert (report.events_purged, report.through_seq, report.purged_personal_rows) == (
            2, 2, 0)
        events = await node.events()
        assert [e.type for e in events] == ["tick", "tick", "events_purged", "retention_run"]
        assert all(e.personal is None for e in events)  # shredded with its key
        checked = await verify_store(node, public_key=key.verify_key)
        assert checked.ok, checked.problems
        assert checked.purged_through == 2
    finally:
        await node.close()
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM personal") == 0
        assert await conn.fetchval("SELECT wrapped_key FROM subjects") is None
        assert await conn.fetchval("SELECT count(*) FROM purge_gate") == 0
    finally:
        await conn.close()


async def test_a_purge_without_its_record_is_refused(broker_url: str, log: PgAuditLog,
                                                      tmp_path: Path) -> None:
    for n in range(3):
        await log.append("tick", now=T0, body={"n": n})
    node = await PgAuditLog.open(broker_url, tmp_path)
    try:
        with pytest.raises(AuditWriteError, match="right after its events_purged record"):
            async with node.maintenance() as work:
                await work.purge_events(2)
        with pytest.raises(AuditWriteError, match="right after its events_purged record"):
            async with node.maintenance() as work:  # a record for less than is purged
                await work.append("events_purged", now=T0, body={"through_seq": 1})
                await work.purge_events(2)
        assert [e.seq for e in await node.events()] == [1, 2, 3]
    finally:
        await node.close()
    # An old record does not license a later purge either.
    async with log.maintenance() as work:
        await work.append("events_purged", now=T0, body={"through_seq": 2})
    with pytest.raises(AuditWriteError, match="right after its events_purged record"):
        async with log.maintenance() as work:
            await work.purge_events(2)
    assert await log.verify_chain() is None


async def test_grant_broker_role_makes_a_login_role_a_node(
        postgres: Postgres, database_url: str, log: PgAuditLog, tmp_path: Path) -> None:
    name, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        conn = await asyncpg.connect(database_url)
        try:
            await grant_broker_role(conn, name)
        finally:
            await conn.close()
        url = database_url.replace(f"postgres:{postgres.password}@", f"{name}:{password}@")
        node = await PgAuditLog.open(url, tmp_path)
        try:
            assert await node.append("a", now=T0) == 1
        finally:
            await node.close()
    finally:
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE usename = '{name}'")
        postgres.psql(f"DROP ROLE {name}")
