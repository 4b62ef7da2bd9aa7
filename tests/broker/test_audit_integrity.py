"""Signed checkpoints and `verify_log`: a tamper suite on real logs.

Every log here is built through `AuditLog.append` with a `Checkpointer`, then
attacked through a raw sqlite3 connection after dropping the triggers (they
are a guard against mistakes, not the security: anyone with the file can
drop them). Each attack must be detected and the right seq or line named.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import shutil
import sqlite3
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import nacl.signing
import pytest

from broker.audit.chain import (
    _SCALARS,
    GENESIS_HASH,
    canonical_json,
    event_hash,
    format_time,
)
from broker.audit.checkpoints import (
    CHECKPOINT_FILE,
    Checkpoint,
    Checkpointer,
    parse_checkpoint,
    record_digest,
)
from broker.audit.schema import SCHEMA
from broker.audit.signing import load_or_create_signing_key, sign_record
from broker.audit.store import AuditLog
from broker.audit.verify import (
    PURGE_EVENT,
    VerifyReport,
    check_purge_body,
    purge_body,
    verify_log,
)
from broker.errors import AuditError

T0 = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


class FakeClock:
    def __init__(self, start: dt.datetime = T0) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


async def append_ticks(audit: AuditLog, clock: FakeClock, first: int, last: int,
                       cp: Checkpointer | None = None, every: int = 10) -> None:
    for n in range(first, last + 1):
        clock.advance(1)
        await audit.append("tick", now=clock(), session=f"s{n % 3}", actor="alice",
                           body={"n": n, "note": "été"})
        if cp is not None and n % every == 0:
            await cp.checkpoint()


async def build(directory: Path, events: int = 30) -> nacl.signing.VerifyKey:
    """30 events; checkpoints at seq 0, 10, 20, 30 (file lines 1-4)."""
    clock = FakeClock()
    audit = await AuditLog.open(directory)
    try:
        cp = Checkpointer(audit, directory, clock=clock)
        await cp.checkpoint()
        await append_ticks(audit, clock, 1, events, cp)
    finally:
        await audit.close()
    return load_or_create_signing_key(directory).verify_key


def verify(directory: Path, key: nacl.signing.VerifyKey) -> VerifyReport:
    return verify_log(directory / "audit.db", public_key=key,
                      checkpoint_file=directory / CHECKPOINT_FILE)


@contextmanager
def tamper(directory: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(directory / "audit.db", isolation_level=None)
    try:
        for trigger in ("events_no_update", "events_no_delete",
                        "checkpoints_no_update", "checkpoints_no_delete"):
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        yield conn
    finally:
        conn.close()


def messages(report: VerifyReport) -> list[str]:
    return [p.message for p in report.ordered_problems()]


def first_message(report: VerifyReport) -> str:
    return report.ordered_problems()[0].message


def checkpoint_lines(directory: Path) -> list[str]:
    return (directory / CHECKPOINT_FILE).read_text().splitlines()


def write_lines(directory: Path, lines: list[str]) -> None:
    (directory / CHECKPOINT_FILE).write_text("".join(line + "\n" for line in lines))


# -- the intact log -------------------------------------------------------------


async def test_intact_log_passes(tmp_path: Path) -> None:
    key = await build(tmp_path)
    report = verify(tmp_path, key)
    assert report.ok, messages(report)
    assert (report.events, report.first_seq, report.last_seq) == (30, 1, 30)
    assert report.checkpoints == 4
    assert report.first_bad_seq is None
    assert report.summary() == (
        "audit log intact: 30 events (seq 1-30), 4 checkpoints, "
        "last at 2025-03-01T12:00:30.000000Z (seq 30), 0 events after the newest "
        "checkpoint")


async def test_checkpoint_file_format(tmp_path: Path) -> None:
    key = await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    assert len(lines) == 4
    prev = "0" * 64
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        rows = conn.execute("SELECT id, seq, record FROM checkpoints ORDER BY id").fetchall()
        hashes = dict(conn.execute("SELECT seq, hash FROM events").fetchall())
    finally:
        conn.close()
    for line, (row_id, seq, record), want_seq in zip(lines, rows, (0, 10, 20, 30),
                                                     strict=True):
        data = json.loads(line)
        assert line.encode() == canonical_json(data)  # one canonical JSON line
        assert json.loads(record) == data  # the table holds the same record
        payload = data["payload"]
        assert set(payload) == {"kind", "seq", "hash", "time", "prev"}
        assert payload["kind"] == "checkpoint"
        assert payload["seq"] == seq == want_seq
        assert payload["hash"] == (GENESIS_HASH if seq == 0 else hashes[seq])
        assert payload["prev"] == prev
        assert payload["time"].endswith("Z")
        parse_checkpoint(line, key)  # the signature verifies
        prev = record_digest(data)
        assert row_id >= 1


async def test_empty_log_without_checkpoints_passes_with_a_note(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    await audit.append("tick", now=T0)
    await audit.close()
    report = verify_log(tmp_path / "audit.db", public_key=None,
                        checkpoint_file=tmp_path / CHECKPOINT_FILE)
    assert report.ok
    assert "cannot be detected" in report.notes[0]


async def test_missing_database_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="no audit log at"):
        verify_log(tmp_path / "audit.db", public_key=None, checkpoint_file=None)


async def test_checkpoints_but_no_key_is_an_error(tmp_path: Path) -> None:
    await build(tmp_path, events=3)
    with pytest.raises(AuditError, match="--pubkey"):
        verify_log(tmp_path / "audit.db", public_key=None,
                   checkpoint_file=tmp_path / CHECKPOINT_FILE)


# -- the events -----------------------------------------------------------------


async def test_flipped_byte_in_a_body(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        (body,) = conn.execute("SELECT body FROM events WHERE seq = 17").fetchone()
        flipped = body.replace('"n":17', '"n":71')
        assert flipped != body
        conn.execute("UPDATE events SET body = ? WHERE seq = 17", (flipped,))
    report = verify(tmp_path, key)
    assert not report.ok
    assert report.first_bad_seq == 17
    assert first_message(report) == "seq 17: contents changed (hash does not match)"


async def test_flipped_byte_making_the_body_unreadable(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("UPDATE events SET body = '{\"n\":5' WHERE seq = 5")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 5
    assert first_message(report) == "seq 5: contents changed (hash does not match)"


async def test_edited_metadata_column(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("UPDATE events SET actor = 'bob' WHERE seq = 23")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 23
    assert first_message(report) == "seq 23: contents changed (hash does not match)"


async def test_deleted_middle_row(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 17")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 18
    assert first_message(report).startswith(
        "seq 18: does not follow seq 16 (an event is missing or was inserted")
    assert "seq 17 is missing" in first_message(report)


async def test_deleted_middle_row_with_the_rest_renumbered(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 17")
        for seq in range(18, 31):
            conn.execute("UPDATE events SET seq = seq - 1 WHERE seq = ?", (seq,))
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 17
    assert first_message(report).startswith(
        "seq 17: does not follow seq 16 (an event is missing or was inserted")
    # And the checkpoint of seq 30 shows the end is gone too.
    assert any(m.startswith("log ends at seq 29 but checkpoint of") for m in messages(report))


async def test_deleted_last_rows_are_caught_by_the_checkpoint(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq > 25")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 26
    assert messages(report) == [
        "log ends at seq 25 but checkpoint of 2025-03-01T12:00:30.000000Z covers seq 30: "
        "events were deleted from the end (truncated), or audit.db was replaced by an "
        "older copy"]
    # The chain alone cannot see it: that is what the checkpoints are for.
    audit = await AuditLog.open(tmp_path)
    try:
        assert await audit.verify_chain() is None
    finally:
        await audit.close()


async def test_every_event_deleted(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 1
    assert first_message(report).startswith("log is empty but checkpoint of")


async def test_reordered_rows(tmp_path: Path) -> None:
    key = await build(tmp_path)
    columns = "time, type, session, actor, subject, body, prev_hash, hash"
    with tamper(tmp_path) as conn:
        a = conn.execute(f"SELECT {columns} FROM events WHERE seq = 12").fetchone()
        b = conn.execute(f"SELECT {columns} FROM events WHERE seq = 13").fetchone()
        assign = ", ".join(f"{c.strip()} = ?" for c in columns.split(","))
        conn.execute(f"UPDATE events SET {assign} WHERE seq = 12", b)
        conn.execute(f"UPDATE events SET {assign} WHERE seq = 13", a)
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 12
    assert first_message(report) == "seq 12: out of order (holds the event recorded as seq 13)"


async def test_inserted_row(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        for seq in range(30, 14, -1):
            conn.execute("UPDATE events SET seq = seq + 1 WHERE seq = ?", (seq,))
        (prev,) = conn.execute("SELECT hash FROM events WHERE seq = 14").fetchone()
        # A well-formed row, chained properly onto seq 14.
        time = format_time(T0 + dt.timedelta(seconds=14.5))
        body = {"n": 999}
        digest = event_hash(prev, 15, time, "consent_granted", None, "mallory", None, body)
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (15, time, "consent_granted", None, "mallory", None,
                      canonical_json(body).decode(), prev, digest))
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 15
    assert first_message(report).startswith("seq 15: was inserted")


async def test_inserted_row_with_the_chain_recomputed(tmp_path: Path) -> None:
    """The best an attacker without the audit key can do: rewrite every hash
    after the insertion. Only the signed checkpoints show it."""
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        for seq in range(30, 14, -1):
            conn.execute("UPDATE events SET seq = seq + 1 WHERE seq = ?", (seq,))
        conn.execute("INSERT INTO events VALUES (15, ?, 'tick', NULL, 'mallory', NULL, "
                     "'{}', '', '')", (format_time(T0),))
        rows = conn.execute("SELECT seq, time, type, session, actor, subject, body "
                            "FROM events WHERE seq >= 15 ORDER BY seq").fetchall()
        (prev,) = conn.execute("SELECT hash FROM events WHERE seq = 14").fetchone()
        for seq, time, type_, session, actor, subject, body in rows:
            digest = event_hash(prev, seq, time, type_, session, actor, subject,
                                json.loads(body))
            conn.execute("UPDATE events SET prev_hash = ?, hash = ? WHERE seq = ?",
                         (prev, digest, seq))
            prev = digest
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 20
    assert first_message(report).startswith("checkpoint for seq 20 names hash ")
    assert "but event 20 has hash " in first_message(report)
    assert "an event in seq 11-20 was changed, inserted or removed" in first_message(report)


async def test_non_canonical_body_with_the_official_hash_is_intact(tmp_path: Path) -> None:
    """Hashes cover the body's JSON value, not its spelling (the chain module's
    rule), so the fast path's miss falls back to the exact computation."""
    key = await build(tmp_path, events=5)
    with tamper(tmp_path) as conn:
        (body,) = conn.execute("SELECT body FROM events WHERE seq = 3").fetchone()
        spaced = json.dumps(json.loads(body), indent=1)
        assert spaced != body
        conn.execute("UPDATE events SET body = ? WHERE seq = 3", (spaced,))
    assert verify(tmp_path, key).ok


async def test_fast_path_agrees_with_the_chain_module(tmp_path: Path) -> None:
    """Awkward text in every column still verifies: the fast path encodes the
    row exactly as `chain.canonical_json` does."""
    awkward = 'Zoë "q" \\ \u2028 \x01 \t 日本 \U0001f600'
    audit = await AuditLog.open(tmp_path)
    try:
        for n in range(5):
            await audit.append("tick", now=T0, session=awkward, actor=awkward[n:],
                               subject=awkward, body={awkward: [awkward, n, 1.5, None]})
    finally:
        await audit.close()
    report = verify_log(tmp_path / "audit.db", public_key=None, checkpoint_file=None)
    assert report.ok and report.events == 5
    for values in [(1, awkward, "t", None, awkward, "x"), (2**40, "", "a", "b", None, None)]:
        assert "".join(_SCALARS(values, 0)) == canonical_json(list(values)).decode()


# -- the checkpoints ---------------------------------------------------------------


async def test_checkpoints_resigned_with_a_foreign_key(tmp_path: Path) -> None:
    key = await build(tmp_path)
    foreign = nacl.signing.SigningKey.generate()
    resigned, prev = [], "0" * 64
    for line in checkpoint_lines(tmp_path):
        payload = dict(json.loads(line)["payload"], prev=prev)
        record = sign_record(foreign, payload)
        resigned.append(canonical_json(record).decode())
        prev = record_digest(record)
    write_lines(tmp_path, resigned)
    with tamper(tmp_path) as conn:  # the table too, so only the key differs
        conn.execute("DELETE FROM checkpoints")
        for text in resigned:
            conn.execute("INSERT INTO checkpoints (seq, record) VALUES (?, ?)",
                         (json.loads(text)["payload"]["seq"], text))
    report = verify(tmp_path, key)
    assert not report.ok
    assert messages(report) == [
        f"checkpoint line {n}: signature does not verify with the audit public key "
        "(forged or re-signed)" for n in range(1, 5)]
    assert [p.line for p in report.ordered_problems()] == [1, 2, 3, 4]


async def test_truncation_hidden_by_resigning_is_caught_with_an_independent_key(
    tmp_path: Path,
) -> None:
    """An attacker who also replaces audit.key fools a check against audit.key,
    not one against the public key an auditor kept elsewhere."""
    kept = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq > 25")
        conn.execute("DELETE FROM checkpoints WHERE seq > 25")
    lines = [json.loads(line) for line in checkpoint_lines(tmp_path)]
    write_lines(tmp_path, [canonical_json(r).decode() for r in lines if r["payload"]["seq"] <= 25])
    (tmp_path / "audit.key").unlink()
    replaced = load_or_create_signing_key(tmp_path)
    audit = await AuditLog.open(tmp_path)
    try:
        clock = FakeClock(T0 + dt.timedelta(hours=1))
        with tamper(tmp_path) as conn:
            conn.execute("DELETE FROM checkpoints")
        (tmp_path / CHECKPOINT_FILE).unlink()
        cp = Checkpointer(audit, tmp_path, clock=clock)
        await cp.checkpoint()
    finally:
        await audit.close()
    assert verify(tmp_path, replaced.verify_key).ok  # fooled: hence the CLI's note
    report = verify(tmp_path, kept)
    assert first_message(report) == ("checkpoint line 1: signature does not verify with the "
                                     "audit public key (forged or re-signed)")


async def test_edited_checkpoint_line(tmp_path: Path) -> None:
    key = await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    record = json.loads(lines[2])
    record["payload"]["seq"] = 19
    lines[2] = canonical_json(record).decode()
    write_lines(tmp_path, lines)
    report = verify(tmp_path, key)
    problems = report.ordered_problems()
    assert problems[0].line == 3 or problems[0].message.startswith("checkpoint line 3")
    assert ("checkpoint line 3: signature does not verify with the audit public key "
            "(forged or re-signed)") in messages(report)
    # The edited line is not the one the database holds, and line 4 no longer
    # chains to it: only the cause is reported for the file.
    assert not any(m.startswith("checkpoint line 4") for m in messages(report))


async def test_damaged_checkpoint_line(tmp_path: Path) -> None:
    key = await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    lines[1] = lines[1][:40]
    write_lines(tmp_path, lines)
    report = verify(tmp_path, key)
    assert any(m.startswith("checkpoint line 2: not a checkpoint record")
               for m in messages(report))


async def test_deleted_checkpoint_line(tmp_path: Path) -> None:
    key = await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    del lines[1]
    write_lines(tmp_path, lines)
    report = verify(tmp_path, key)
    assert ("checkpoint line 2: does not follow line 1 (checkpoints removed or reordered)"
            in messages(report))
    assert any(m.startswith("database checkpoint #2 (seq 10, ") and "not in the checkpoint "
               "file" in m for m in messages(report))


async def test_reordered_checkpoint_lines(tmp_path: Path) -> None:
    key = await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    lines[1], lines[2] = lines[2], lines[1]
    write_lines(tmp_path, lines)
    report = verify(tmp_path, key)
    assert ("checkpoint line 2: does not follow line 1 (checkpoints removed or reordered)"
            in messages(report))
    assert any(m.startswith("checkpoint line 3: covers seq 10, behind seq 20 of line 2")
               for m in messages(report))


async def test_checkpoint_row_deleted_from_the_database(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM checkpoints WHERE seq = 20")
    report = verify(tmp_path, key)
    assert messages(report) == [
        "checkpoint line 3 is not in the database's checkpoints table (the line was edited "
        "or added, or the row removed from the database)"]


async def test_missing_checkpoint_file(tmp_path: Path) -> None:
    key = await build(tmp_path)
    (tmp_path / CHECKPOINT_FILE).unlink()
    report = verify(tmp_path, key)
    assert any("is missing, but the database holds checkpoints" in m for m in messages(report))


async def test_rolled_back_database_with_a_newer_checkpoint_file(tmp_path: Path) -> None:
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, clock=clock)
    await cp.checkpoint()
    await append_ticks(audit, clock, 1, 20, cp)
    await audit.close()  # the last connection folds the WAL into audit.db
    shutil.copy(tmp_path / "audit.db", tmp_path / "backup.db")
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, clock=clock)
    await append_ticks(audit, clock, 21, 30, cp)
    await audit.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"audit.db{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", tmp_path / "audit.db")
    key = load_or_create_signing_key(tmp_path).verify_key
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 21
    assert first_message(report).startswith(
        "log ends at seq 20 but checkpoint of 2025-03-01T12:00:30.000000Z covers seq 30")
    assert any(m.startswith("checkpoint line 4 is not in the database's checkpoints table")
               for m in messages(report))


# -- purged events ----------------------------------------------------------------


async def purge_by_hand(directory: Path, through: int,
                        signer: nacl.signing.SigningKey | None = None) -> None:
    """What retention does: remove seq 1..through, then log a signed record."""
    with tamper(directory) as conn:
        (last_hash,) = conn.execute("SELECT hash FROM events WHERE seq = ?",
                                    (through,)).fetchone()
        conn.execute("DELETE FROM events WHERE seq <= ?", (through,))
    signer = signer or load_or_create_signing_key(directory)
    body = purge_body(signer, through_seq=through, last_hash=last_hash,
                      before="2025-03-02", count=through)
    clock = FakeClock(T0 + dt.timedelta(days=400))
    audit = await AuditLog.open(directory)
    try:
        await audit.append(PURGE_EVENT, now=clock(), actor="retention", body=body)
        await Checkpointer(audit, directory, clock=clock).checkpoint()
    finally:
        await audit.close()


async def test_purged_start_with_a_signed_record_passes(tmp_path: Path) -> None:
    key = await build(tmp_path)
    await purge_by_hand(tmp_path, 10)
    report = verify(tmp_path, key)
    assert report.ok, messages(report)
    assert (report.first_seq, report.last_seq, report.purged_through) == (11, 31, 10)
    assert report.summary().startswith(
        "audit log intact: 21 events (seq 11-31), seq 1-10 purged by retention, 5 checkpoints")


async def test_retention_purge_with_a_running_checkpointer_passes(tmp_path: Path) -> None:
    """The real purge path (`broker.audit.retention`), as the broker runs it."""
    retention = pytest.importorskip("broker.audit.retention")
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, every_events=7, clock=clock, poll=0.01)
    try:
        await cp.start()
        for day in range(4):
            for n in range(5):
                clock.now = T0 + dt.timedelta(days=day, minutes=n)
                await audit.append("tick", now=clock(), body={"day": day, "n": n})
            await cp.checkpoint()
        clock.now = T0 + dt.timedelta(days=3, hours=12)
        report = await retention.purge(audit, now=clock(), pii_days=1, event_days=2,
                                       signing_key=load_or_create_signing_key(tmp_path))
        assert report.events_purged == 10  # days 0 and 1, whole
    finally:
        await cp.stop()
        await audit.close()
    key = load_or_create_signing_key(tmp_path).verify_key
    result = verify(tmp_path, key)
    assert result.ok, messages(result)
    assert (result.first_seq, result.purged_through) == (11, 10)


async def test_purge_record_signed_with_another_key_fails(tmp_path: Path) -> None:
    key = await build(tmp_path)
    await purge_by_hand(tmp_path, 10, signer=nacl.signing.SigningKey.generate())
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 11
    assert first_message(report) == (
        "seq 11: the log starts here, but no valid signed purge record accounts for seq 1-10 "
        "(the purge record at seq 31 is not valid: signature does not verify with the audit "
        "public key): events were deleted from the start")


async def test_more_deleted_than_the_purge_record_covers_fails(tmp_path: Path) -> None:
    key = await build(tmp_path)
    await purge_by_hand(tmp_path, 10)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq <= 12")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 13
    assert "the purge record at seq 31 covers seq 1-10" in first_message(report)


async def test_deleted_start_without_a_purge_record_fails(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq <= 4")
    report = verify(tmp_path, key)
    assert report.first_bad_seq == 5
    assert first_message(report).startswith("seq 5: the log starts here, but no valid signed")
    assert "there is no events_purged record" in first_message(report)


async def test_purge_body_fields_must_match_the_signed_record(tmp_path: Path) -> None:
    signer = nacl.signing.SigningKey.generate()
    body = purge_body(signer, through_seq=10, last_hash="a" * 64, before="2025-03-02",
                      count=10)
    assert check_purge_body(body, signer.verify_key).through_seq == 10
    with pytest.raises(AuditError, match="differ from the ones signed"):
        check_purge_body({**body, "count": 11}, signer.verify_key)
    with pytest.raises(AuditError, match="signature does not verify"):
        check_purge_body(body, nacl.signing.SigningKey.generate().verify_key)
    with pytest.raises(AuditError, match="no signed purge record"):
        check_purge_body({"through_seq": 10}, signer.verify_key)
    # The signed payload names its kind; the bare fields are accepted too.
    assert body["record"]["payload"]["kind"] == PURGE_EVENT
    fields = {k: body[k] for k in ("through_seq", "last_hash", "before", "count")}
    bare = {**fields, "record": sign_record(signer, fields)}
    assert check_purge_body(bare, signer.verify_key).count == 10
    # A checkpoint, say, is not a purge record even when signed by the same key.
    other = {**fields, "record": sign_record(signer, {**fields, "kind": "checkpoint"})}
    with pytest.raises(AuditError, match="not a purge record"):
        check_purge_body(other, signer.verify_key)


# -- the checkpointer ------------------------------------------------------------------


async def wait_for(predicate: object, what: str) -> None:
    """Until `predicate()` holds; generous, since only the outcome is tested."""
    async def poll() -> None:
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(poll(), 10)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_checkpoint_every_n_events(tmp_path: Path) -> None:
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, every_events=10, every_seconds=60, clock=clock,
                      poll=0.01)
    try:
        await cp.start()
        assert cp.last is not None and cp.last.seq == 0
        for n in range(9):
            await audit.append("tick", now=clock(), body={"n": n})
        assert not cp.due()
        await asyncio.sleep(0.05)
        assert cp.last.seq == 0 and len(checkpoint_lines(tmp_path)) == 1
        await audit.append("tick", now=clock(), body={"n": 9})
        assert cp.due()
        await wait_for(lambda: cp.last is not None and cp.last.seq == 10, "checkpoint of 10")
        assert [json.loads(x)["payload"]["seq"] for x in checkpoint_lines(tmp_path)] == [0, 10]
    finally:
        await cp.stop()
        await audit.close()
    # Shutdown adds one more, of the same seq.
    assert [json.loads(x)["payload"]["seq"] for x in checkpoint_lines(tmp_path)] == [0, 10, 10]
    assert verify(tmp_path, load_or_create_signing_key(tmp_path).verify_key).ok


async def test_checkpoint_every_t_seconds_when_idle(tmp_path: Path) -> None:
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    await audit.append("tick", now=clock())
    cp = Checkpointer(audit, tmp_path, every_events=100, every_seconds=60, clock=clock,
                      poll=0.01)
    try:
        await cp.start()
        first = cp.last
        assert first is not None and first.seq == 1
        clock.advance(59)
        assert not cp.due()
        await asyncio.sleep(0.05)
        assert cp.last is first
        clock.advance(1)
        await wait_for(lambda: cp.last is not first, "the idle checkpoint")
        second = cp.last
        assert second is not None
        # Nothing happened: the same seq and hash, re-signed with a newer time.
        assert (second.seq, second.hash) == (first.seq, first.hash)
        assert second.time == "2025-03-01T12:01:00.000000Z" > first.time
        assert second.prev == first.digest
    finally:
        await cp.stop()
        await audit.close()


async def test_schedule_survives_a_failed_checkpoint(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, every_seconds=60, clock=clock, poll=0.01)
    real_write = cp.storage.write
    failures: list[int] = []

    async def failing_write(time: str) -> Checkpoint:
        if not failures:
            failures.append(1)
            raise OSError("disk on fire")
        return await real_write(time)

    try:
        await cp.start()
        first = cp.last
        cp.storage.write = failing_write  # type: ignore[method-assign]  # a failing disk, for this test
        clock.advance(60)
        await wait_for(lambda: cp.last is not first, "a checkpoint after the failure")
        assert failures == [1]
        assert "could not write an audit checkpoint" in caplog.text
    finally:
        await cp.stop()
        await audit.close()


async def test_start_refuses_a_truncated_log(tmp_path: Path) -> None:
    await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq > 25")
    audit = await AuditLog.open(tmp_path)
    try:
        cp = Checkpointer(audit, tmp_path, clock=FakeClock())
        with pytest.raises(AuditError, match=r"ends at seq 25 but the checkpoint of .* covers "
                                             r"seq 30: events were deleted from the end"):
            await cp.start()
    finally:
        await audit.close()
    assert len(checkpoint_lines(tmp_path)) == 4  # nothing written over the evidence


async def test_start_refuses_a_changed_newest_event(tmp_path: Path) -> None:
    await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("UPDATE events SET hash = ? WHERE seq = 30", ("f" * 64,))
    audit = await AuditLog.open(tmp_path)
    try:
        with pytest.raises(AuditError, match="event 30 of the audit log is not the one"):
            await Checkpointer(audit, tmp_path, clock=FakeClock()).start()
    finally:
        await audit.close()


async def test_start_refuses_a_file_signed_by_another_key(tmp_path: Path) -> None:
    await build(tmp_path)
    (tmp_path / "audit.key").unlink()
    audit = await AuditLog.open(tmp_path)
    try:
        with pytest.raises(AuditError, match="not a checkpoint signed by this broker's audit"):
            await Checkpointer(audit, tmp_path, clock=FakeClock()).start()
    finally:
        await audit.close()


async def test_interrupted_write_is_repaired(tmp_path: Path) -> None:
    """Power lost after the line was fsynced but before the row committed."""
    key = await build(tmp_path)
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM checkpoints WHERE seq = 30")
    assert not verify(tmp_path, key).ok
    audit = await AuditLog.open(tmp_path)
    try:
        await Checkpointer(audit, tmp_path, clock=FakeClock()).checkpoint()
    finally:
        await audit.close()
    assert verify(tmp_path, key).ok


async def test_partial_last_line_is_removed(tmp_path: Path) -> None:
    key = await build(tmp_path)
    with open(tmp_path / CHECKPOINT_FILE, "ab") as handle:
        handle.write(b'{"payload":{"hash":"ab')
    audit = await AuditLog.open(tmp_path)
    try:
        await Checkpointer(audit, tmp_path, clock=FakeClock()).checkpoint()
    finally:
        await audit.close()
    assert len(checkpoint_lines(tmp_path)) == 5
    assert verify(tmp_path, key).ok


async def test_disagreeing_file_and_table_stop_new_checkpoints(tmp_path: Path) -> None:
    await build(tmp_path)
    lines = checkpoint_lines(tmp_path)
    write_lines(tmp_path, lines[:2])  # the file rolled back by two lines
    audit = await AuditLog.open(tmp_path)
    try:
        with pytest.raises(AuditError, match="disagree about the newest checkpoint"):
            await Checkpointer(audit, tmp_path, clock=FakeClock()).checkpoint()
    finally:
        await audit.close()
    assert len(checkpoint_lines(tmp_path)) == 2


async def test_append_listener_errors_do_not_fail_the_append(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    seen: list[tuple[int, str]] = []

    def broken(seq: int, digest: str) -> None:
        raise RuntimeError("listener bug")

    try:
        audit.add_append_listener(broken)
        audit.add_append_listener(lambda seq, digest: seen.append((seq, digest)))
        assert await audit.append("tick", now=T0) == 1
        (event,) = await audit.events()
        assert seen == [(1, event.hash)]
        audit.remove_append_listener(broken)
    finally:
        await audit.close()


# -- scale -------------------------------------------------------------------------------


def bulk_log(path: Path, count: int) -> None:
    """A valid chain written straight into SQLite: appending one by one with
    an fsync each would take minutes."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA)
    prev, rows = GENESIS_HASH, []
    for seq in range(1, count + 1):
        body = {"bytes_in": seq * 7, "granted": ["view", "control"], "reason": "été"}
        fields = (seq, format_time(T0 + dt.timedelta(seconds=seq)), "session_ended",
                  f"s{seq % 97}", "alice", None)
        digest = event_hash(prev, *fields, body)
        rows.append((*fields, canonical_json(body).decode(), prev, digest))
        prev = digest
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.execute("COMMIT")
    conn.close()


def test_long_log_is_verified_in_bounded_memory(tmp_path: Path) -> None:
    bulk_log(tmp_path / "audit.db", 30_000)
    tracemalloc.start()
    try:
        report = verify_log(tmp_path / "audit.db", public_key=None, checkpoint_file=None,
                            batch_size=500)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.ok and report.events == 30_000
    # Batches of 500 rows, never the whole log: well under what 30,000 rows take.
    assert peak < 3 * 1024 * 1024, peak


def test_bad_row_deep_in_a_long_log_is_named(tmp_path: Path) -> None:
    bulk_log(tmp_path / "audit.db", 20_000)
    with tamper(tmp_path) as conn:
        conn.execute("UPDATE events SET time = '2025-03-01T12:00:00.000000Z' "
                     "WHERE seq = 17777")
    report = verify_log(tmp_path / "audit.db", public_key=None, checkpoint_file=None)
    assert report.first_bad_seq == 17_777
    assert first_message(report) == "seq 17777: contents changed (hash does not match)"
