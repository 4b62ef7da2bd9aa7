"""`audit_verify` on the admin API, with a real store and a fake socket: the
answer, its record, and what happens when the check cannot be had."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from broker.admin_api import answer_audit_request
from broker.audit.store import AuditLog
from broker.errors import AuditWriteError
from broker.registry import Engineer
from broker.wire.errors import ProtocolError
from broker.wire.messages import decode, validate

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
ADMIN = Engineer("root", "Root Admin", "admin", "ssh-ed25519 AAAA", "2025-01-01T00:00:00Z")
ALICE = Engineer("alice", "Alice", "engineer", "ssh-ed25519 AAAB", "2025-01-01T00:00:00Z")
VERIFY = validate("audit_verify", {})


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, frame: str) -> None:
        self.sent.append(frame)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    audit = await AuditLog.open(tmp_path)
    for n in range(5):
        await audit.append("tick", now=T0, body={"n": n})
    yield audit
    await audit.close()


async def test_an_intact_log_is_reported_and_the_check_recorded(log: AuditLog) -> None:
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, VERIFY)  # type: ignore[arg-type]
    (frame,) = ws.sent
    reply = decode(frame)
    assert reply.type == "audit_verify_result"
    assert reply["ok"] is True and reply.get("first_bad_seq") is None
    assert "audit log intact: 5 events" in reply["summary"]
    # No checkpoint in this log yet: the admin is told all five are unsealed.
    assert "5 events after the newest checkpoint" in reply["summary"]
    (event,) = await log.events(type="audit_verified")
    assert event.actor == "root"
    assert event.body == {"ok": True, "first_bad_seq": None, "independent_key": False,
                          "request": "audit_verify"}


async def test_engineers_are_refused(log: AuditLog) -> None:
    ws = FakeSocket()
    with pytest.raises(ProtocolError) as info:
        await answer_audit_request(log, ws, ALICE, VERIFY)  # type: ignore[arg-type]
    assert info.value.code == "forbidden" and ws.sent == []
    assert [e.type for e in await log.events(type="audit_read_refused")] == [
        "audit_read_refused"]


async def test_a_check_that_cannot_be_recorded_is_not_reported(tmp_path: Path) -> None:
    class Full(AuditLog):
        async def append(self, type: str, **kwargs: Any) -> int:
            if type == "audit_verified":
                raise AuditWriteError("audit log could not be written: disk full")
            return await super().append(type, **kwargs)

    base = await AuditLog.open(tmp_path)
    await base.close()
    audit = await Full.open(tmp_path)
    try:
        ws = FakeSocket()
        with pytest.raises(AuditWriteError):
            await answer_audit_request(audit, ws, ADMIN, VERIFY)  # type: ignore[arg-type]
        assert ws.sent == []
    finally:
        await audit.close()


async def test_a_broker_without_the_verifier_says_so(
        log: AuditLog, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "broker.audit.verify", None)  # the import fails
    ws = FakeSocket()
    await answer_audit_request(log, ws, ADMIN, VERIFY)  # type: ignore[arg-type]
    reply = json.loads(ws.sent[0])
    assert reply["ok"] is False and reply["summary"] == "verify is not available on this broker"
    assert "first_bad_seq" not in reply
