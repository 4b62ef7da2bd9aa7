"""What a crashed run left open, worked out from its events (pure), and the
closing events written for it on a real audit log."""

from __future__ import annotations

import datetime as dt

from broker.audit.store import AuditLog
from broker.crash_recovery import (
    CRASH_REASON,
    Row,
    close_what_a_crash_left_open,
    left_open,
    record_clean_stop,
)

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_only_sessions_and_agents_without_an_end_are_left_open() -> None:
    rows: list[Row] = [
        ("agent_connected", None, None, "p1", {}),
        ("agent_connected", None, None, "p2", {}),
        ("agent_connected", None, None, "p2", {}),
        ("agent_disconnected", None, None, "p2", {}),
        ("agent_disconnected", None, None, "p3", {}),  # a run older than the scan
        ("join_requested", "active", "alice", "p1", {}),
        ("session_started", "active", "alice", "p1", {"granted": ["view"]}),
        ("consent_denied", "active", "alice", "p1", {"upgrade": True}),  # not an end
        ("join_requested", "pairing", "bob", "p2", {}),
        ("join_requested", "ended", "alice", "p1", {}),
        ("session_started", "ended", "alice", "p1", {"granted": ["view"]}),
        ("session_ended", "ended", "alice", "p1", {"reason": "engineer_left"}),
        ("join_requested", "denied", "bob", "p1", {}),
        ("consent_denied", "denied", "bob", "p1", {}),
        ("join_requested", "wrong", "bob", "p1", {}),
        ("pairing_failed", "wrong", "bob", "p1", {}),
        ("join_requested", "gone", "bob", "p1", {}),
        ("join_abandoned", "gone", "bob", "p1", {"reason": "console_lost"}),
    ]
    found = left_open(rows)
    assert set(found.sessions) == {"active", "pairing"}
    assert found.sessions["active"].granted == ["view"]
    assert found.sessions["pairing"].granted is None
    assert (found.sessions["pairing"].actor, found.sessions["pairing"].pseudonym) == ("bob", "p2")
    assert dict(found.agents) == {"p1": 1, "p2": 1}


def test_a_second_engineer_that_left_leaves_the_shared_session_open() -> None:
    rows: list[Row] = [
        ("join_requested", "shared", "alice", "p1", {}),
        ("session_started", "shared", "alice", "p1", {"granted": ["view"]}),
        ("join_requested", "shared", "bob", "p1", {"seat": "console-2"}),
        ("pairing_failed", "shared", "bob", "p1", {"reason": "wrong_code", "seat": "console-2"}),
        ("join_requested", "shared", "carol", "p1", {"seat": "console-3"}),
        ("consent_denied", "shared", "carol", "p1", {"seat": "console-3"}),
        ("join_requested", "shared", "dan", "p1", {"seat": "console-4"}),
        ("join_abandoned", "shared", "dan", "p1", {"reason": "timeout", "seat": "console-4"}),
    ]
    found = left_open(rows)
    assert set(found.sessions) == {"shared"}  # closed as session_ended, as it was active
    assert (found.sessions["shared"].actor, found.sessions["shared"].granted) == (
        "alice", ["view"])
    ended = left_open([*rows, ("session_ended", "shared", "alice", "p1", {"reason": "x"})])
    assert not ended.sessions


async def _types(log: AuditLog) -> list[str]:
    return [e.type for e in await log.events()]


async def test_a_crashed_run_is_closed_once_and_a_clean_one_not_at_all(log: AuditLog) -> None:
    await close_what_a_crash_left_open(log, now=NOW)  # an empty log: just the start
    await log.append("agent_connected", now=NOW, subject="device-1")
    await log.append("join_requested", now=NOW, session="s1", actor="alice", subject="device-1")
    await log.append("session_started", now=NOW, session="s1", actor="alice",
                     subject="device-1", body={"granted": ["view", "control"]})
    await log.append("join_requested", now=NOW, session="s2", actor="bob", subject="device-1")
    # ... and the broker dies. The next start:
    found = await close_what_a_crash_left_open(log, now=NOW)
    assert set(found.sessions) == {"s1", "s2"}
    events = await log.events()
    closing = {e.session: e for e in events if e.body.get("reason") == CRASH_REASON}
    assert closing["s1"].type == "session_ended"
    assert closing["s1"].body == {"reason": CRASH_REASON, "granted": ["view", "control"]}
    assert closing["s1"].actor == "alice"
    assert closing["s1"].subject == log.pseudonym("device-1")
    assert closing["s2"].type == "join_abandoned"
    disconnected = [e for e in events if e.type == "agent_disconnected"]
    assert [(e.subject, e.body) for e in disconnected] == [
        (log.pseudonym("device-1"), {"reason": CRASH_REASON})]
    assert events[-1].type == "broker_started"
    assert events[-1].body == {"closed_sessions": 2, "closed_agents": 1}
    assert await log.verify_chain() is None

    # A second crash right after closes nothing twice.
    before = len(await log.events())
    again = await close_what_a_crash_left_open(log, now=NOW)
    assert not again.sessions and not again.agents
    assert len(await log.events()) == before + 1

    # A clean stop means nothing to read at the next start.
    await log.append("join_requested", now=NOW, session="s3", actor="bob", subject="device-1")
    await record_clean_stop(log, now=NOW)
    clean = await close_what_a_crash_left_open(log, now=NOW)
    assert not clean.sessions
    assert (await _types(log))[-2:] == ["broker_stopped", "broker_started"]
