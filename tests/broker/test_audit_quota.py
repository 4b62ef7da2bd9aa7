"""The operator's quota on the audit database (`serve --audit-max-mb`): at the
cap SQLite itself refuses to grow the file (SQLITE_FULL, as on a full disk),
every append fails closed with AuditWriteError, and reading still works."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest

from broker.audit.store import AuditLog
from broker.cli import build_parser
from broker.config import BrokerConfig
from broker.errors import AuditError, AuditWriteError

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
CAP = 256 * 1024
# Nearly a page of body per event: each filler row takes a page to itself, so
# once one no longer fits, the last page of the events table is full and any
# event at all needs a new page past the cap.
PAD = "x" * 3800


async def fill(audit: AuditLog) -> int:
    """Append fillers until the log refuses; return how many fitted."""
    count = 0
    while True:
        try:
            await audit.append("filler", now=T0, body={"pad": PAD})
        except AuditWriteError as exc:
            assert "database or disk is full" in str(exc)
            return count
        count += 1
        assert count < 10_000, "the cap never bit"


async def test_append_fails_closed_at_the_cap_and_reads_go_on(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path, max_bytes=CAP)
    try:
        await audit.append("agent_connected", now=T0, subject="dev-1",
                           personal={"alias": "Front Desk", "ip": "192.0.2.1"})
        fitted = await fill(audit)
        assert 30 < fitted < CAP // 4096
        # Whatever the broker would write next is refused too, and nothing of
        # it is half-written.
        for kind, fields in (
            ("agent_connected", {"subject": "dev-2", "personal": {"alias": "a", "ip": "b"}}),
            ("engineer_login", {"actor": "alice", "body": {"role": "engineer"}}),
            ("join_requested", {"session": "s1", "actor": "alice", "subject": "dev-1"}),
            ("x", {}),
        ):
            with pytest.raises(AuditWriteError):
                await audit.append(kind, now=T0, **fields)
        events = await audit.events()
        assert len(events) == fitted + 1
        assert events[0].personal == {"alias": "Front Desk", "ip": "192.0.2.1"}
        assert await audit.verify_chain() is None
        page, _ = await audit.query(alias="front desk")
        assert [e.type for e in page] == ["agent_connected"]
    finally:
        await audit.close()
    # The cap belongs to the connection: raised (here: none), the log grows again.
    again = await AuditLog.open(tmp_path)
    try:
        assert await again.append("resumed", now=T0) == fitted + 2
    finally:
        await again.close()


async def test_a_file_already_past_the_cap_grows_no_further(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        for _ in range(100):
            await audit.append("filler", now=T0, body={"pad": PAD})
    finally:
        await audit.close()
    capped = await AuditLog.open(tmp_path, max_bytes=64 * 1024)
    try:
        await fill(capped)
        with pytest.raises(AuditWriteError):
            await capped.append("x", now=T0, body={"pad": PAD})
    finally:
        await capped.close()


async def test_a_capped_log_still_appends_after_another_connection_wrote(
        tmp_path: Path) -> None:
    # The checkpointer writes through a connection of its own; a capped
    # connection must not be left holding a stale snapshot ("database is
    # locked" on its next write).
    audit = await AuditLog.open(tmp_path, max_bytes=CAP)
    try:
        other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
        try:
            other.execute("CREATE TABLE IF NOT EXISTS scratch (x)")
            other.execute("INSERT INTO scratch VALUES (1)")
        finally:
            other.close()
        assert await audit.append("after", now=T0) == 1
    finally:
        await audit.close()


@pytest.mark.parametrize("bad", [0, -1, 1.5])
async def test_the_cap_must_be_a_positive_byte_count(tmp_path: Path, bad: object) -> None:
    with pytest.raises(AuditError, match="positive number of bytes"):
        await AuditLog.open(tmp_path, max_bytes=bad)  # type: ignore[arg-type]


def test_serve_takes_the_quota_in_mib() -> None:
    parser = build_parser()
    args = parser.parse_args(["serve", "--audit-max-mb", "64"])
    assert args.audit_max_mb == 64
    assert parser.parse_args(["serve"]).audit_max_mb is None
    assert BrokerConfig().audit_max_mb is None
    for bad in ("0", "-3", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["serve", "--audit-max-mb", bad])
