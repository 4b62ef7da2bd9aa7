"""The admin audit API's decisions, with a real audit store and a fake socket:
who may read, what is logged and when, and replies that must be cut to fit."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.admin_api import answer_audit_request, event_object
from broker.audit.store import AuditLog
from broker.errors import AuditWriteError
from broker.registry import Engineer
from broker.wire.errors import ProtocolError
from broker.wire.limits import MAX_ADMIN_FRAME
from broker.wire.messages import b64encode, decode, validate

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
ADMIN = Engineer("root", "Root Admin", "admin", "ssh-ed25519 AAAA", "2025-01-01T00:00:00Z")
ALICE = Engineer("alice", "Alice", "engineer", "ssh-ed25519 AAAB", "2025-01-01T00:00:00Z")


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, frame: str) -> None:
        self.sent.append(frame)


class ReadOnlyLog(AuditLog):
    """A log whose reads work and whose audit_read cannot be written."""

    async def append(self, type: str, **kwargs: Any) -> int:
        if type == "audit_read":
            raise AuditWriteError("audit log could not be written: disk full")
        return await super().append(type, **kwargs)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    audit = await AuditLog.open(tmp_path)
    await audit.append("agent_connected", now=T0, subject="dev-1",
                       personal={"alias": "Front Desk", "ip": "192.0.2.1"})
    receipt = json.dumps({"decision": "granted", "asked": ["view"]}).encode()
    await audit.append("consent_granted", now=T0, session="s1", actor="alice",
                       subject="dev-1", body={"granted": ["view"]},
                       personal={"receipt": b64encode(receipt), "receipt_signature": "x"})
    yield audit
    await audit.close()


def query(**fields: Any) -> Any:
    return validate("audit_query", {"limit": 50, **fields})


async def test_admin_gets_a_page_and_the_read_is_logged_after_it(log: AuditLog) -> None:
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, query())  # type: ignore[arg-type]
    (frame,) = ws.sent
    page = decode(frame, limit=MAX_ADMIN_FRAME)
    assert page.type == "audit_page"
    assert [e["seq"] for e in page["events"]] == [2, 1]
    assert page["events"][1]["alias"] == "Front Desk"
    assert "receipt" not in page["events"][0]
    events = await log.events()
    assert [e.type for e in events] == ["agent_connected", "consent_granted", "audit_read"]
    assert events[-1].actor == "root"
    assert events[-1].body == {"request": "audit_query", "query": {"limit": 50}, "returned": 2}


async def test_session_events_on_a_page_name_their_device(log: AuditLog) -> None:
    """The console's Device column: a session's events carry no alias of their
    own; the page names the device from its latest connection before them."""
    await log.append("agent_connected", now=T0, subject="dev-2",
                     personal={"alias": "Back Office", "ip": "192.0.2.2"})
    await log.append("session_started", now=T0, session="s2", actor="alice",
                     subject="dev-2", body={"granted": ["view"]})
    await log.append("engineer_login", now=T0, actor="alice", body={"role": "engineer"})
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, query())  # type: ignore[arg-type]
    events = decode(ws.sent[0], limit=MAX_ADMIN_FRAME)["events"]
    assert [(e["type"], e["alias"]) for e in events] == [
        ("engineer_login", None), ("session_started", "Back Office"),
        ("agent_connected", "Back Office"), ("consent_granted", "Front Desk"),
        ("agent_connected", "Front Desk")]
    assert events[1]["ip"] is None  # only the name, not where it connected from


async def test_alias_searches_are_logged_without_the_alias(log: AuditLog) -> None:
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, query(alias="front desk"))  # type: ignore[arg-type]
    read = (await log.events())[-1]
    assert read.body["query"] == {"alias": True, "limit": 50}
    assert read.body["returned"] == 2


async def test_session_detail_carries_the_receipt(log: AuditLog) -> None:
    ws = FakeSocket()
    msg = validate("audit_session_query", {"session": "s1"})
    await answer_audit_request(log, ws, ADMIN, msg)  # type: ignore[arg-type]
    reply = decode(ws.sent[0], limit=MAX_ADMIN_FRAME)
    assert reply.type == "audit_session" and reply["more"] is False
    (event,) = reply["events"]
    assert event["receipt"] == {"decision": "granted", "asked": ["view"]}


async def test_a_read_that_cannot_be_logged_is_not_served(tmp_path: Path) -> None:
    audit = await ReadOnlyLog.open(tmp_path)
    try:
        await audit.append("tick", now=T0)
        ws = FakeSocket()
        with pytest.raises(AuditWriteError):
            await answer_audit_request(audit, ws, ADMIN, query())  # type: ignore[arg-type]
        assert ws.sent == []
    finally:
        await audit.close()


async def test_engineers_are_refused_and_the_refusal_logged(log: AuditLog) -> None:
    ws = FakeSocket()
    with pytest.raises(ProtocolError) as info:
        await answer_audit_request(log, ws, ALICE, query())  # type: ignore[arg-type]
    assert info.value.code == "forbidden"
    assert str(info.value) == "the audit log is for admins only"
    assert ws.sent == []
    refused = (await log.events())[-1]
    assert (refused.type, refused.actor) == ("audit_read_refused", "alice")
    assert refused.body == {"request": "audit_query", "role": "engineer"}


async def test_replies_too_big_for_a_frame_are_cut_and_say_more(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        for n in range(200):
            await audit.append("big", now=T0, body={"n": n, "pad": "p" * 7000})
        ws = FakeSocket()
        await answer_audit_request(audit, ws, ADMIN, query(limit=200))  # type: ignore[arg-type]
        page = decode(ws.sent[0], limit=MAX_ADMIN_FRAME)
        assert 0 < len(page["events"]) < 200
        assert page["more"] is True
        assert page["events"][0]["body"]["n"] == 199  # the newest are kept
        read = (await audit.events())[-1]
        assert read.body["returned"] == len(page["events"])
    finally:
        await audit.close()


async def test_event_object_skips_a_receipt_it_cannot_read(log: AuditLog) -> None:
    (event,) = await log.session_events("s1")
    broken = event.__class__(**{**event.__dict__, "personal": {"receipt": "%%%"}})
    assert "receipt" not in event_object(broken, with_receipt=True)
    assert event_object(event)["alias"] is None


async def test_following_the_log_logs_only_reads_that_showed_something(log: AuditLog) -> None:
    """An open audit browser polls with `after_seq`: a poll that finds nothing
    new is not logged, and the reader's own reads are not "new" to them —
    otherwise every poll would find the previous poll's `audit_read`."""
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, query())  # type: ignore[arg-type]
    assert (await log.events())[-1].seq == 3  # the first read, logged
    for _ in range(3):
        await answer_audit_request(log, ws, ADMIN, query(after_seq=2))  # type: ignore[arg-type]
    assert [decode(f, limit=MAX_ADMIN_FRAME)["events"] for f in ws.sent[1:]] == [[], [], []]
    assert len(await log.events()) == 3  # the empty polls were not logged
    await log.append("session_ended", now=T0, session="s1", body={"reason": "engineer_left"})
    await log.append("audit_read", now=T0, actor="someone-else", body={"request": "x"})
    await answer_audit_request(log, ws, ADMIN, query(after_seq=3))  # type: ignore[arg-type]
    page = decode(ws.sent[-1], limit=MAX_ADMIN_FRAME)
    assert [e["type"] for e in page["events"]] == ["audit_read", "session_ended"]
    read = (await log.events())[-1]
    assert (read.type, read.actor) == ("audit_read", "root")
    assert read.body == {"request": "audit_query", "query": {"after_seq": 3, "limit": 50},
                         "returned": 2}
