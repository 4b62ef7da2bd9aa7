"""The admin query of the audit store: filters, keyset paging, the alias
blind index, the schema migration, and correctness on a 100,000-event log."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.audit.chain import GENESIS_HASH, canonical_json, event_hash, format_time
from broker.audit.keys import AuditKeys, load_or_create_master_key
from broker.audit.schema import SCHEMA_VERSION
from broker.audit.store import AuditLog
from broker.errors import AuditError
from tests.broker.helpers import both_backends, raw

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
DEVICE_A = "dev-aaaaaaaa"
DEVICE_B = "dev-bbbbbbbb"


async def small_log(log: AuditLog) -> None:
    """Two devices, two engineers, two sessions, over ten minutes."""
    at = [T0 + dt.timedelta(minutes=m) for m in range(10)]
    await log.append("agent_connected", now=at[0], subject=DEVICE_A,
                     personal={"alias": "Front Desk", "ip": "192.0.2.1"})
    await log.append("agent_connected", now=at[1], subject=DEVICE_B,
                     personal={"alias": "Back Office", "ip": "192.0.2.2"})
    await log.append("engineer_login", now=at[2], actor="alice")
    await log.append("join_requested", now=at[3], session="s1", actor="alice",
                     subject=DEVICE_A)
    await log.append("consent_granted", now=at[4], session="s1", actor="alice",
                     subject=DEVICE_A, personal={"receipt": "e30="})
    await log.append("engineer_login", now=at[5], actor="bob")
    await log.append("join_requested", now=at[6], session="s2", actor="bob", subject=DEVICE_B)
    await log.append("consent_denied", now=at[7], session="s2", actor="bob", subject=DEVICE_B)
    await log.append("session_ended", now=at[8], session="s1", actor="alice",
                     subject=DEVICE_A)
    await log.append("audit_read", now=at[9], actor="cli:root")


async def seqs(log: AuditLog, **filters: object) -> list[int]:
    events, _more = await log.query(**filters)  # type: ignore[arg-type]
    return [e.seq for e in events]


@both_backends
async def test_newest_first_with_personal_fields(log: AuditLog) -> None:
    await small_log(log)
    events, more = await log.query(limit=3)
    assert [e.seq for e in events] == [10, 9, 8]
    assert more is True
    events, more = await log.query(limit=100)
    assert [e.seq for e in events] == list(range(10, 0, -1))
    assert more is False
    assert events[-1].personal == {"alias": "Front Desk", "ip": "192.0.2.1"}
    assert events[-1].subject == log.pseudonym(DEVICE_A)


@both_backends
async def test_each_filter(log: AuditLog) -> None:
    await small_log(log)
    assert await seqs(log, actor="alice") == [9, 5, 4, 3]
    assert await seqs(log, type="engineer_login") == [6, 3]
    assert await seqs(log, session="s2") == [8, 7]
    # since is inclusive, until exclusive.
    assert await seqs(log, since=T0 + dt.timedelta(minutes=8)) == [10, 9]
    assert await seqs(log, until=T0 + dt.timedelta(minutes=2)) == [2, 1]
    paris = dt.timezone(dt.timedelta(hours=1))
    assert await seqs(log, since=dt.datetime(2025, 3, 1, 13, 3, tzinfo=paris),
                      until=T0 + dt.timedelta(minutes=5)) == [5, 4]
    assert await seqs(log, before_seq=4) == [3, 2, 1]
    assert await seqs(log, actor="nobody") == []


@both_backends
async def test_filters_combine(log: AuditLog) -> None:
    await small_log(log)
    assert await seqs(log, actor="alice", session="s1", type="join_requested") == [4]
    assert await seqs(log, actor="bob", since=T0 + dt.timedelta(minutes=6),
                      before_seq=8) == [7]
    assert await seqs(log, actor="alice", type="consent_denied") == []


@both_backends
async def test_keyset_paging_walks_every_event_once(log: AuditLog) -> None:
    await small_log(log)
    seen: list[int] = []
    before: int | None = None
    while True:
        events, more = await log.query(limit=3, before_seq=before)
        seen += [e.seq for e in events]
        if not more:
            break
        before = events[-1].seq
    assert seen == list(range(10, 0, -1))
    # A page that ends exactly at the last event says there is no more.
    events, more = await log.query(limit=3, before_seq=4)
    assert ([e.seq for e in events], more) == ([3, 2, 1], False)


@both_backends
async def test_alias_finds_every_event_of_the_device_ignoring_case(log: AuditLog) -> None:
    await small_log(log)
    assert await seqs(log, alias="Front Desk") == [9, 5, 4, 1]
    assert await seqs(log, alias="front desk") == [9, 5, 4, 1]
    assert await seqs(log, alias="FRONT DESK", type="consent_granted") == [5]
    assert await seqs(log, alias="back office") == [8, 7, 2]
    assert await seqs(log, alias="Front") == []  # exact, not a substring search
    assert await seqs(log, alias="Front Desk ") == []


async def test_alias_is_never_stored_in_clear(log: AuditLog, tmp_path: Path) -> None:
    await small_log(log)
    assert await seqs(log, alias="front desk")
    await log.close()
    blob = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("audit"))
    for needle in ("Front Desk", "front desk", "FRONT DESK", "Back Office"):
        assert needle.encode() not in blob
        assert needle.encode("utf-16-le") not in blob
    conn = raw(tmp_path)
    try:
        tags = conn.execute("SELECT alias_tag FROM personal WHERE alias_tag IS NOT NULL")
        assert all(len(tag) == 32 for (tag,) in tags.fetchall())
    finally:
        conn.close()


async def test_alias_tags_depend_on_the_master_key(tmp_path: Path) -> None:
    first = AuditKeys(bytes(32))
    second = AuditKeys(bytes([1]) * 32)
    assert first.alias_tag("Front Desk") == first.alias_tag("FRONT desk")
    assert first.alias_tag("Front Desk") != second.alias_tag("Front Desk")
    assert first.alias_tag("Front Desk") != first.alias_tag("Back Office")
    # Other purposes' keys never double as the alias key.
    assert first.alias_tag(DEVICE_A)[:16].hex() != first.pseudonym(DEVICE_A)


async def test_erased_devices_cannot_be_found_by_alias(log: AuditLog, tmp_path: Path) -> None:
    await small_log(log)
    conn = raw(tmp_path)
    try:
        conn.execute("UPDATE subjects SET wrapped_key = NULL, erased = 'now' WHERE pseudonym = ?",
                     (log.pseudonym(DEVICE_A),))
    finally:
        conn.close()
    assert await seqs(log, alias="front desk") == []
    # The device comes back under a new alias and a new key: the old alias
    # stays unfindable, the new one is found (with all of the device's events).
    await log.append("agent_connected", now=T0 + dt.timedelta(hours=1), subject=DEVICE_A,
                     personal={"alias": "Reception"})
    assert await seqs(log, alias="front desk") == []
    assert await seqs(log, alias="reception") == [11, 9, 5, 4, 1]
    conn = raw(tmp_path)
    try:
        tagged = conn.execute("SELECT seq FROM personal WHERE alias_tag IS NOT NULL "
                              "ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert tagged == [(2,), (11,)]


@both_backends
async def test_session_events_oldest_first(log: AuditLog) -> None:
    await small_log(log)
    events = await log.session_events("s1")
    assert [e.type for e in events] == ["join_requested", "consent_granted", "session_ended"]
    assert events[1].personal == {"receipt": "e30="}
    assert [e.seq for e in await log.session_events("s1", limit=2)] == [4, 5]
    assert await log.session_events("nope") == []


@both_backends
@pytest.mark.parametrize("limit", [0, -1])
async def test_bad_limits(log: AuditLog, limit: int) -> None:
    with pytest.raises(AuditError):
        await log.query(limit=limit)


@both_backends
async def test_naive_times_are_refused(log: AuditLog) -> None:
    with pytest.raises(AuditError, match="timezone-aware"):
        await log.query(since=dt.datetime(2025, 3, 1))


async def test_version_1_database_is_migrated(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await small_log(audit)
    await audit.close()
    conn = raw(tmp_path)
    try:  # back to the version-1 shape
        for index in ("personal_alias_tag", "events_actor", "events_time"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("ALTER TABLE personal DROP COLUMN alias_tag")
        conn.execute("PRAGMA user_version = 1")
    finally:
        conn.close()

    audit = await AuditLog.open(tmp_path)
    try:
        # Aliases recorded before the upgrade are found: their tags were backfilled.
        assert await seqs(audit, alias="front desk") == [9, 5, 4, 1]
        await audit.append("agent_connected", now=T0, subject="dev-c", personal={"alias": "C"})
        assert await seqs(audit, alias="c") == [11]
        assert await audit.verify_chain() is None
    finally:
        await audit.close()
    conn = raw(tmp_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"events_actor", "events_time", "personal_alias_tag"} <= names
    finally:
        conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.close()
    conn = raw(tmp_path)
    try:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        conn.close()
    with pytest.raises(AuditError, match="newer consentry"):
        await AuditLog.open(tmp_path)


# -- a big log ----------------------------------------------------------------

BIG = 100_000
TYPES = ("agent_connected", "join_requested", "consent_granted", "session_started",
         "session_ended")
DEVICES = 100


def big_row(seq: int) -> tuple[str, str, str | None, str | None, int]:
    """(time, type, session, actor, device number) of event `seq` of the big log:
    five events per session, sessions taken in turn by alice and bob, devices
    in turn; one event a second."""
    index = seq - 1
    session_no = index // 5
    kind = TYPES[index % 5]
    time = format_time(T0 + dt.timedelta(seconds=index))
    actor = None if kind == "agent_connected" else ("alice", "bob")[session_no % 2]
    session = None if kind == "agent_connected" else f"s{session_no}"
    return time, kind, session, actor, session_no % DEVICES


def build_big_log(data_dir: Path) -> None:
    """Write BIG valid, chained events straight into the database in one
    transaction, with the same hash function and keys as the store: appending
    them one durable commit at a time would take minutes."""
    keys = AuditKeys(load_or_create_master_key(data_dir / "master.key"))
    subject_keys = {}
    conn = raw(data_dir)
    try:
        conn.execute("BEGIN")
        for device in range(DEVICES):
            pseudonym = keys.pseudonym(f"dev-{device}")
            wrapped = keys.new_wrapped_subject_key()
            subject_keys[pseudonym] = keys.unwrap(wrapped)
            conn.execute("INSERT INTO subjects (pseudonym, wrapped_key, created) "
                         "VALUES (?, ?, ?)", (pseudonym, wrapped, format_time(T0)))
        prev = GENESIS_HASH
        events, personal = [], []
        for seq in range(1, BIG + 1):
            time, kind, session, actor, device = big_row(seq)
            pseudonym = keys.pseudonym(f"dev-{device}")
            body = {"n": seq}
            digest = event_hash(prev, seq, time, kind, session, actor, pseudonym, body)
            events.append((seq, time, kind, session, actor, pseudonym,
                           canonical_json(body).decode(), prev, digest))
            if kind == "agent_connected":
                alias = f"Device {device}"
                personal.append((seq, pseudonym, time,
                                 keys.seal_personal(subject_keys[pseudonym], seq,
                                                    {"alias": alias}),
                                 keys.alias_tag(alias)))
            prev = digest
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", events)
        conn.executemany("INSERT INTO personal (seq, pseudonym, created, ciphertext, alias_tag) "
                         "VALUES (?, ?, ?, ?, ?)", personal)
        conn.execute("COMMIT")
    finally:
        conn.close()


def expected(limit: int, before: int | None = None, **want: object) -> list[int]:
    """The seqs a query must return, computed from `big_row` alone."""
    result: list[int] = []
    seq = (before or BIG + 1) - 1
    while seq >= 1 and len(result) < limit:
        _time, kind, session, actor, device = big_row(seq)
        row = {"type": kind, "session": session, "actor": actor, "device": device}
        if all(row[k] == v for k, v in want.items()):
            result.append(seq)
        seq -= 1
    return result


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    data_dir = tmp_path_factory.mktemp("big")

    async def create() -> None:
        audit = await AuditLog.open(data_dir)
        await audit.close()

    asyncio.run(create())
    build_big_log(data_dir)
    return data_dir


@pytest.fixture
async def big(big_dir: Path) -> AsyncIterator[AuditLog]:
    audit = await AuditLog.open(big_dir)
    yield audit
    await audit.close()


async def test_big_log_is_a_valid_chain(big: AuditLog) -> None:
    # The helper wrote what append would have: the chain verifies end to end.
    assert await big.verify_chain() is None


async def test_big_log_deep_pages(big: AuditLog) -> None:
    assert await seqs(big, limit=200, before_seq=1_000) == list(range(999, 799, -1))
    assert await seqs(big, limit=5, before_seq=2) == [1]
    assert await seqs(big, limit=50, before_seq=3_001, type="session_ended") == expected(
        50, 3_001, type="session_ended")
    assert await seqs(big, limit=50, before_seq=2_000, actor="bob",
                      type="consent_granted") == expected(
        50, 2_000, actor="bob", type="consent_granted")
    events, more = await big.query(session="s7", limit=10)
    assert [e.seq for e in events] == [40, 39, 38, 37]
    assert more is False
    assert [e.personal for e in events] == [None] * 4  # no personal data on these


async def test_big_log_time_window(big: AuditLog) -> None:
    since = T0 + dt.timedelta(seconds=500)
    until = T0 + dt.timedelta(seconds=600)
    events, more = await big.query(since=since, until=until, limit=200)
    # Event seq happened at T0 + (seq - 1) s.
    assert [e.seq for e in events] == list(range(600, 500, -1))
    assert more is False


async def test_big_log_pages_through_a_filter_without_gaps(big: AuditLog) -> None:
    seen: list[int] = []
    before = None
    while True:
        events, more = await big.query(type="consent_granted", actor="alice", limit=200,
                                       before_seq=before)
        seen += [e.seq for e in events]
        if not more:
            break
        before = events[-1].seq
    assert seen == expected(BIG, type="consent_granted", actor="alice")
    assert len(seen) == BIG // 10


async def test_big_log_alias_search(big: AuditLog) -> None:
    events, more = await big.query(alias="device 42", limit=200, before_seq=60_000)
    assert [e.seq for e in events] == expected(200, 60_000, device=42)
    assert more is True
    connected = [e for e in events if e.type == "agent_connected"]
    assert connected and all(e.personal == {"alias": "Device 42"} for e in connected)
