"""Retention with a fake clock: personal data shredded at day 15 down to the
bytes of the database files, whole days of events removed with a signed
record, the chain intact throughout."""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib.util
import sqlite3
from pathlib import Path

import nacl.signing
import pytest

from broker.audit import retention
from broker.audit.retention import event_cutoff, pii_cutoff, purge, purge_through
from broker.audit.signing import load_or_create_signing_key, verify_record
from broker.audit.store import AuditLog
from broker.audit.subjects import export_subject
from broker.errors import AuditError, ConfigError
from tests.broker.helpers import both_backends, run_cli

DAY0 = dt.datetime(2025, 3, 1, 9, 30, tzinfo=dt.UTC)
DEVICE_A = "dev-aaaaaaaa-0000-4000-8000-000000000001"
DEVICE_B = "dev-bbbbbbbb-0000-4000-8000-000000000002"
# Marker strings only: nothing ever connects to these addresses.
IP_A, ALIAS_A = "10.99.88.77", "alias-marker-7c1e"
IP_B, ALIAS_B = "10.55.44.33", "other-desk-91f2"


def day(n: float, hours: float = 0) -> dt.datetime:
    return DAY0 + dt.timedelta(days=n, hours=hours)


@pytest.fixture
def key(tmp_path: Path) -> nacl.signing.SigningKey:
    return load_or_create_signing_key(tmp_path)


async def connect(log: AuditLog, when: dt.datetime, device: str, alias: str, ip: str,
                  session: str) -> None:
    """An agent connects, a session is consented to, runs and ends."""
    await log.append("agent_connected", now=when, subject=device, body={"shared": ["hostname"]},
                     personal={"alias": alias, "ip": ip, "hostname": f"host-of-{alias}"})
    await log.append("consent_granted", now=when + dt.timedelta(seconds=5), session=session,
                     actor="alice", subject=device, body={"granted": ["view"]},
                     personal={"receipt": "eyJ0IjoxfQ==", "receipt_signature": "c2ln",
                               "device_key": "a2V5"})  # as broker.consents stores it
    await log.append("session_ended", now=when + dt.timedelta(minutes=20), session=session,
                     actor="alice", subject=device, body={"reason": "engineer_left"})


async def build(log: AuditLog) -> None:
    await connect(log, day(0), DEVICE_A, ALIAS_A, IP_A, "s-a")
    await log.append("engineer_login", now=day(3), actor="alice", body={"role": "engineer"})
    await connect(log, day(5), DEVICE_B, ALIAS_B, IP_B, "s-b")
    await log.append("engineer_login", now=day(12), actor="bob", body={"role": "admin"})


def secrets_of(tmp_path: Path, pseudonym: str) -> list[bytes]:
    """The stored bytes that would reveal a subject's personal data: its
    wrapped key, its ciphertexts and its alias tags."""
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        found = [row[0] for row in conn.execute(
            "SELECT wrapped_key FROM subjects WHERE pseudonym = ?", (pseudonym,))]
        for ciphertext, tag in conn.execute(
                "SELECT ciphertext, alias_tag FROM personal WHERE pseudonym = ?", (pseudonym,)):
            found += [ciphertext, tag] if tag else [ciphertext]
    finally:
        conn.close()
    return [bytes(b) for b in found if b]


def file_bytes(tmp_path: Path) -> dict[str, bytes]:
    return {name: (tmp_path / name).read_bytes() if (tmp_path / name).exists() else b""
            for name in ("audit.db", "audit.db-wal", "audit.db-shm")}


def assert_nowhere(tmp_path: Path, needles: list[bytes]) -> None:
    for name, data in file_bytes(tmp_path).items():
        for needle in needles:
            assert needle not in data, f"{needle[:12]!r}... still in {name}"


def assert_somewhere(tmp_path: Path, needles: list[bytes]) -> None:
    everything = b"".join(file_bytes(tmp_path).values())
    for needle in needles:
        assert needle in everything, f"{needle[:12]!r}... not in the files"


def run_full_verifier(tmp_path: Path, key: nacl.signing.SigningKey) -> None:
    """The checkpoint engineer's verifier, when it is there."""
    if importlib.util.find_spec("broker.audit.verify") is None:
        return
    from broker.audit.verify import verify_log

    report = verify_log(tmp_path / "audit.db", public_key=key.verify_key, checkpoint_file=None)
    assert report.ok, report.ordered_problems()


# -- pure decisions -------------------------------------------------------------


def test_cutoffs() -> None:
    now = dt.datetime(2025, 3, 15, 17, 45, 12, tzinfo=dt.UTC)
    assert pii_cutoff(now, 14) == dt.datetime(2025, 3, 1, 17, 45, 12, tzinfo=dt.UTC)
    # Whole days: midnight UTC, whatever the hour now.
    assert event_cutoff(now, 365) == dt.datetime(2024, 3, 15, tzinfo=dt.UTC)
    assert event_cutoff(now, 1) == dt.datetime(2025, 3, 14, tzinfo=dt.UTC)
    # An aware time in another zone means the same instant.
    tokyo = now.astimezone(dt.timezone(dt.timedelta(hours=9)))  # 2025-03-16 02:45 there
    assert event_cutoff(tokyo, 1) == event_cutoff(now, 1)
    with pytest.raises(AuditError, match="timezone-aware"):
        pii_cutoff(dt.datetime(2025, 3, 15), 14)


def test_purge_through_is_a_prefix() -> None:
    assert purge_through(None, None, None) is None  # empty log
    assert purge_through(1, 10, 1) is None  # nothing old enough
    assert purge_through(1, 10, 6) == 5
    assert purge_through(4, 10, None) == 10  # everything is old
    assert purge_through(4, 10, 4) is None


@pytest.mark.parametrize(("pii", "events"), [(0, 365), (14, 0), (-1, 5), (14, 40_000)])
def test_retention_periods_are_checked(pii: int, events: int) -> None:
    with pytest.raises(ConfigError, match="whole number of days"):
        retention.check_retention(pii, events)


# -- personal data ----------------------------------------------------------------


async def test_personal_data_kept_at_day_13_shredded_at_day_15(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    await build(log)
    a, b = log.pseudonym(DEVICE_A), log.pseudonym(DEVICE_B)
    secrets_a, secrets_b = secrets_of(tmp_path, a), secrets_of(tmp_path, b)
    assert len(secrets_a) == 4  # key, two ciphertexts, one alias tag

    early = await purge(log, now=day(13), signing_key=key)
    assert (early.personal_rows, early.subjects_shredded, early.events_purged) == (0, 0, 0)
    export = await export_subject(log, ALIAS_A, now=day(13))
    assert export["events"][0]["personal"]["ip"] == IP_A
    assert_somewhere(tmp_path, secrets_a + secrets_b)  # the byte search does find them

    report = await purge(log, now=day(15), signing_key=key)
    assert report.personal_rows == 2
    assert report.subjects_shredded == 1
    assert report.events_purged == 0 and report.through_seq is None
    assert report.wal_truncated
    assert (tmp_path / "audit.db-wal").stat().st_size == 0

    # While the log is open, and again once it is closed.
    assert_nowhere(tmp_path, [*secrets_a, IP_A.encode(), ALIAS_A.encode()])
    assert_somewhere(tmp_path, secrets_b)  # the other device's data, 10 days old, stays
    events = await log.events()
    assert [e.personal for e in events if e.subject == a] == [None] * 4  # 3 + the export
    (connected_b,) = [e for e in events if e.subject == b and e.type == "agent_connected"]
    assert connected_b.personal == {"alias": ALIAS_B, "ip": IP_B, "hostname": "host-of-" + ALIAS_B}
    assert await log.verify_chain() is None
    (run,) = await log.events(type="retention_run", limit=1)
    assert run.body["personal_rows"] == 2 and run.body["subjects_shredded"] == 1
    assert run.actor == "retention" and run.personal is None

    # The alias is gone, so the device is found only by its pseudonym now.
    with pytest.raises(AuditError, match="no device with alias"):
        await export_subject(log, ALIAS_A, now=day(15))
    export = await export_subject(log, ALIAS_A, a, now=day(15))
    assert export["subject"]["erased"] is True
    assert export["subject"]["shredded_at"] == "2025-03-16T09:30:00.000000Z"
    assert export["subject"]["aliases"] == []
    connected, consent, ended = export["events"][:3]
    assert connected["personal"] is None
    assert set(connected["shredded"]) == {"alias", "ip", "hostname"}
    assert "retention period" in connected["shredded"]["ip"]
    assert set(consent["shredded"]) == {"receipt", "receipt_signature", "device_key"}
    assert ended["shredded"] == {}

    await log.close()
    assert_nowhere(tmp_path, [*secrets_a, IP_A.encode(), ALIAS_A.encode()])
    assert_somewhere(tmp_path, secrets_b)
    run_full_verifier(tmp_path, key)


async def test_without_truncating_the_wal_the_bytes_would_stay(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control for the test above: secure_delete zeroes the database
    pages, but the WAL still holds the older copies until it is truncated."""
    await build(log)
    secrets_a = secrets_of(tmp_path, log.pseudonym(DEVICE_A))

    async def no_truncation() -> bool:
        return False

    monkeypatch.setattr(log, "truncate_wal", no_truncation)
    report = await purge(log, now=day(15), signing_key=key)
    assert report.subjects_shredded == 1 and not report.wal_truncated
    assert_somewhere(tmp_path, secrets_a)
    monkeypatch.undo()
    assert await log.truncate_wal()
    assert_nowhere(tmp_path, secrets_a)


@both_backends
async def test_a_device_active_within_the_period_keeps_its_key(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    await connect(log, day(0), DEVICE_A, ALIAS_A, IP_A, "s-1")
    await connect(log, day(10), DEVICE_A, ALIAS_A, "10.1.2.3", "s-2")
    report = await purge(log, now=day(15), signing_key=key)
    assert (report.personal_rows, report.subjects_shredded) == (2, 0)
    personal = [e.personal for e in await log.events() if e.type == "agent_connected"]
    assert personal[0] is None
    assert personal[1] is not None and personal[1]["ip"] == "10.1.2.3"


async def test_a_shredded_device_that_returns_gets_a_new_key(
    log: AuditLog, key: nacl.signing.SigningKey
) -> None:
    await connect(log, day(0), DEVICE_A, ALIAS_A, IP_A, "s-1")
    await purge(log, now=day(15), signing_key=key)
    await connect(log, day(16), DEVICE_A, ALIAS_A, "10.1.2.3", "s-2")
    export = await export_subject(log, ALIAS_A, now=day(16))
    old, new = export["events"][0], export["events"][3]
    assert old["personal"] is None and new["personal"]["ip"] == "10.1.2.3"
    assert export["subject"]["erased"] is False


# -- events -------------------------------------------------------------------


async def test_event_retention_removes_whole_days_with_a_signed_record(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    times = [day(0, 0.1), day(0, 5), day(0, 14.49), day(1, 0), day(1, 3), day(2, 1)]
    for n, when in enumerate(times):
        await log.append("tick", now=when, body={"n": n},
                         subject=DEVICE_A, personal={"ip": f"10.0.0.{n}"})
    removed = (await log.events())[2]  # the last event of day 0, at 23:59
    assert removed.time.startswith("2025-03-01T23:59")

    report = await purge(log, now=day(2, 2), event_days=1, signing_key=key)
    assert report.events_before == "2025-03-02"  # day 1 is kept whole
    assert (report.events_purged, report.through_seq) == (3, 3)
    assert report.purged_personal_rows == 3
    events = await log.events()
    assert [e.seq for e in events] == [4, 5, 6, 7, 8]
    assert events[0].prev_hash == removed.hash
    assert all(e.time >= "2025-03-02" for e in events)

    record = events[-2]
    assert (record.seq, record.type, record.actor) == (7, "events_purged", "retention")
    assert record.body == {
        "through_seq": 3, "last_hash": removed.hash, "before": "2025-03-02", "count": 3,
        "record": record.body["record"],
    }
    payload = verify_record(key.verify_key, record.body["record"])
    assert payload == {"kind": "events_purged", "through_seq": 3, "last_hash": removed.hash,
                       "before": "2025-03-02", "count": 3}
    assert events[-1].type == "retention_run" and events[-1].body["events_purged"] == 3

    # Nothing of the removed events' personal data is left in the files.
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        assert conn.execute("SELECT MIN(seq) FROM personal").fetchone()[0] == 4
        assert conn.execute("SELECT COUNT(*) FROM purge_gate").fetchone()[0] == 0
    finally:
        conn.close()
    run_full_verifier(tmp_path, key)

    # A second run later removes the next whole day, its record chaining on.
    again = await purge(log, now=day(3, 1), event_days=1, signing_key=key)
    assert (again.events_purged, again.through_seq) == (2, 5)
    events = await log.events()
    assert events[0].seq == 6
    assert verify_record(key.verify_key, events[-2].body["record"])["through_seq"] == 5
    run_full_verifier(tmp_path, key)


async def test_purging_every_event_still_leaves_a_chain(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    for n in range(3):
        await log.append("tick", now=day(0, n), body={"n": n})
    last = (await log.events())[-1]
    report = await purge(log, now=day(30), event_days=2, signing_key=key)
    assert (report.events_purged, report.through_seq, report.purge_record_seq) == (3, 3, 4)
    first, run = await log.events()
    assert (first.type, first.prev_hash, first.body["last_hash"]) == (
        "events_purged", last.hash, last.hash)
    assert run.prev_hash == first.hash
    run_full_verifier(tmp_path, key)


@both_backends
async def test_a_clock_stepped_back_ends_the_prefix(
    log: AuditLog, key: nacl.signing.SigningKey
) -> None:
    await log.append("tick", now=day(0))
    await log.append("tick", now=day(9))  # a clock set ahead, later corrected
    await log.append("tick", now=day(0, 1))
    report = await purge(log, now=day(3), event_days=1, signing_key=key)
    assert report.through_seq == 1  # never a hole in the chain
    assert [e.seq for e in await log.events()][:2] == [2, 3]


async def test_delete_outside_the_purge_is_refused(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    for n in range(3):
        await log.append("tick", now=day(n), body={"n": n})
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 1")
        # The gate admits only the seqs it names, and only while it is open.
        conn.execute("BEGIN")
        conn.execute("INSERT INTO purge_gate (through_seq) VALUES (1)")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events WHERE seq = 2")
        conn.execute("ROLLBACK")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE events SET body = '{}' WHERE seq = 1")
    finally:
        conn.close()
    await purge(log, now=day(2, 1), event_days=1, signing_key=key)
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    try:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM events")
    finally:
        conn.close()
    assert (await log.events())[0].seq == 2


async def test_an_old_database_gets_the_gated_trigger(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.append("tick", now=day(0))
    await audit.close()
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
                 "BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END")
    conn.close()
    audit = await AuditLog.open(tmp_path)
    try:
        key = load_or_create_signing_key(tmp_path)
        report = await purge(audit, now=day(5), event_days=1, signing_key=key)
        assert report.events_purged == 1
    finally:
        await audit.close()


async def test_a_failed_purge_changes_nothing(
    log: AuditLog, tmp_path: Path, key: nacl.signing.SigningKey
) -> None:
    await connect(log, day(0), DEVICE_A, ALIAS_A, IP_A, "s-1")
    before = await log.events()
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    conn.execute("DROP TABLE purge_gate")  # the delete guard now aborts the purge
    conn.close()
    with pytest.raises(AuditError, match="could not be written"):
        await purge(log, now=day(30), event_days=2, signing_key=key)
    assert await log.events() == before
    assert before[0].personal is not None


# -- the broker's schedule ---------------------------------------------------------


@both_backends
async def test_the_loop_purges_at_once_and_then_on_every_tick(
    log: AuditLog, key: nacl.signing.SigningKey
) -> None:
    await connect(log, day(0), DEVICE_A, ALIAS_A, IP_A, "s-1")
    clock = iter([day(1), day(15), day(16), day(17)])
    task = asyncio.create_task(retention.retention_loop(
        log, signing_key=key, interval=0.01, clock=lambda: next(clock, day(17))))
    for _ in range(200):
        runs = await log.events(type="retention_run")
        if len(runs) >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    runs = await log.events(type="retention_run")
    assert [r.body["personal_rows"] for r in runs[:3]] == [0, 2, 0]
    assert runs[0].actor == "broker"


async def test_the_loop_survives_a_failed_run(
    tmp_path: Path, key: nacl.signing.SigningKey, caplog: pytest.LogCaptureFixture
) -> None:
    log = await AuditLog.open(tmp_path, busy_timeout=0.05)
    conn = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    task = asyncio.create_task(retention.retention_loop(
        log, signing_key=key, interval=0.05, clock=lambda: day(1)))
    try:
        await asyncio.sleep(0.3)
        assert "retention run failed" in caplog.text
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    try:
        for _ in range(100):
            if await log.events(type="retention_run"):
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await log.events(type="retention_run")
    finally:
        await log.close()


# -- `consentry-broker audit purge` ---------------------------------------------------


async def test_cli_purge(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    audit = await AuditLog.open(tmp_path / "data")
    try:
        await audit.append("engineer_login", now=now - dt.timedelta(days=400), actor="alice")
        await connect(audit, now - dt.timedelta(days=20), DEVICE_A, ALIAS_A, IP_A, "s-1")
        await connect(audit, now - dt.timedelta(days=2), DEVICE_B, ALIAS_B, IP_B, "s-2")
    finally:
        await audit.close()

    result = run_cli(tmp_path, "audit", "purge")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(": 2 record(s) deleted")
    assert lines[1] == "device keys destroyed (no personal data left to protect): 1"
    assert "1 deleted (up to seq 1, with 0 personal record(s)); signed purge record is event 8" \
        in lines[2]
    assert lines[-1] == "recorded as retention_run, event 9"
    assert result.stderr == ""

    again = run_cli(tmp_path, "audit", "purge", "--pii-retention-days", "1",
                    "--event-retention-days", "3650")
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[0].endswith(": 2 record(s) deleted")  # device B's
    assert "none held" in again.stdout

    audit = await AuditLog.open(tmp_path / "data")
    try:
        events = await audit.events()
        assert events[0].seq == 2 and await audit.verify_chain() == 2  # starts after a purge
        assert [e.actor for e in events if e.type == "retention_run"] == [
            events[-1].actor] * 2
        assert events[-1].actor is not None and events[-1].actor.startswith("cli:")
        assert all(e.personal is None for e in events)
    finally:
        await audit.close()
    assert IP_B.encode() not in (tmp_path / "data" / "audit.db").read_bytes()
    run_full_verifier(tmp_path / "data", load_or_create_signing_key(tmp_path / "data"))


def test_cli_purge_refuses_a_bad_period(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "audit", "purge", "--pii-retention-days", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("consentry-broker: error: --pii-retention-days must be")
    assert not (tmp_path / "data").exists()
