"""The admin audit API through a real broker process over real TLS: pages,
session detail with the signed receipt, refusal for engineers, and every read
recorded in the log it reads."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

import pexpect
import pytest

from broker.audit.store import AuditLog
from broker.wire.limits import MAX_CONTROL_FRAME
from console.client import ConsoleClient, Forbidden
from console.errors import UsageError
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code


def client_for(dep: Deployment, user: str, key: Path) -> ConsoleClient:
    return ConsoleClient(dep.url, dep.pki.ca_cert, load_file_identity(user, key, None))


def audit_events(dep: Deployment) -> list[dict]:
    result = dep.cli("audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def consented_session(dep: Deployment) -> None:
    """One real session: alice joins "Front Desk", the customer grants control."""
    key = dep.add_engineer("alice", display="Alice Example")
    agent = dep.agent("--alias", "Front Desk")
    console = dep.console(read_code(agent), key, "alice", "--control")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    console.expect(r"\$ ")
    console.send("\x1dq")
    console.expect(pexpect.EOF)
    agent.expect("left the session")


async def test_admin_reads_pages_and_session_detail(running: Deployment) -> None:
    consented_session(running)
    admin_key = running.add_engineer("root", role="admin", display="Root Admin")
    client = client_for(running, "root", admin_key)
    try:
        assert await client.login_check() == ("Root Admin", "admin")

        page, more = await client.audit_query(limit=3)
        newest = page[0]["seq"]
        assert page[0]["type"] == "engineer_login" and page[0]["actor"] == "root"
        assert [e["seq"] for e in page] == [newest, newest - 1, newest - 2]  # newest first
        assert more is True
        # Page on: keyset paging by the smallest seq seen, down to the first event.
        rest, more = await client.audit_query(limit=200, before_seq=page[-1]["seq"])
        assert [e["seq"] for e in page + rest] == list(range(newest, 0, -1))
        assert more is False
        # Alice before anything else but the broker's own start-up records.
        assert [e for e in rest if e["type"] not in ("retention_run", "broker_started")
                ][-1]["type"] == "engineer_added"

        (consent,), _ = await client.audit_query(type="consent_granted")
        assert consent["actor"] == "alice"
        assert consent["body"]["granted"] == ["view", "control"]
        assert "receipt" not in consent  # receipts only in the session detail
        # The console's Device column: a session's events name their device.
        assert consent["alias"] == "Front Desk"

        detail = await client.audit_session(consent["session"])
        types = [e["type"] for e in detail]
        assert types[0] == "join_requested" and "session_ended" in types
        assert [e["seq"] for e in detail] == sorted(e["seq"] for e in detail)
        (granted,) = [e for e in detail if e["type"] == "consent_granted"]
        receipt = granted["receipt"]
        assert receipt["decision"] == "granted"
        assert receipt["engineer"] == "alice"
        assert receipt["session"] == consent["session"]
        assert receipt["asked"] == ["view", "control"]

        # Alias search: case-insensitive, every event of that device.
        by_alias, _ = await client.audit_query(alias="front desk", limit=200)
        connected = [e for e in by_alias if e["type"] == "agent_connected"]
        assert connected and connected[0]["alias"] == "Front Desk"
        assert connected[0]["ip"] == "127.0.0.1"
        assert {e["subject"] for e in by_alias} == {connected[0]["subject"]}
        assert "join_requested" in {e["type"] for e in by_alias}
        assert (await client.audit_query(alias="front")) == ([], False)

        future = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        assert await client.audit_query(since=future) == ([], False)
        window, _ = await client.audit_query(until=future.isoformat(), engineer="alice")
        assert window and {e["actor"] for e in window} == {"alice"}

        with pytest.raises(UsageError, match="unknown audit filter"):
            await client.audit_query(colour="red")
        with pytest.raises(UsageError, match="limit"):
            await client.audit_query(limit=500)

        # A link the broker closed is reopened for the next query.
        assert client._admin is not None
        await client._admin.ws.close()
        again, _ = await client.audit_query(limit=1)
        assert again
    finally:
        await client.close()

    running.stop()
    events = audit_events(running)
    reads = [e for e in events if e["type"] == "audit_read" and e["actor"] == "root"]
    assert len(reads) == 9  # every successful read (8 pages, 1 session), and only those
    first = reads[0]["body"]
    assert first == {"request": "audit_query", "query": {"limit": 3}, "returned": 3}
    alias_read = next(r for r in reads if "alias" in r["body"]["query"])
    assert alias_read["body"]["query"]["alias"] is True  # that, never which
    detail_read = next(r for r in reads if r["body"]["request"] == "audit_session_query")
    assert detail_read["body"]["query"] == {"session": consent["session"]}
    # A page never holds its own read: it is logged after the page is made.
    assert reads[0]["seq"] == newest + 1
    # One login for the first link, one for the reopened one: links are reused.
    logins = [e for e in events if e["type"] == "engineer_login" and e["actor"] == "root"]
    assert len(logins) == 2


async def test_engineers_are_refused_and_the_refusal_is_logged(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    client = client_for(running, "alice", key)
    try:
        assert await client.login_check() == ("Alice Example", "engineer")
        with pytest.raises(Forbidden, match="the audit log is for admins only"):
            await client.audit_query(limit=10)
        with pytest.raises(Forbidden):
            await client.audit_session("some-session")
    finally:
        await client.close()
    running.stop()
    events = audit_events(running)
    refused = [e for e in events if e["type"] == "audit_read_refused"]
    assert [(e["actor"], e["body"]["request"]) for e in refused] == [
        ("alice", "audit_query"), ("alice", "audit_session_query")]
    assert not [e for e in events if e["type"] == "audit_read" and e["actor"] == "alice"]


async def test_large_pages_cross_the_control_frame_limit(deployment: Deployment) -> None:
    # Seeded before the broker starts, so the log is long enough for a big page.
    async def seed() -> None:
        audit = await AuditLog.open(deployment.data_dir)
        try:
            for n in range(250):
                await audit.append("tick", now=dt.datetime.now(dt.UTC), actor="seed",
                                   session=f"session-{n:04d}", body={"n": n, "pad": "x" * 100})
        finally:
            await audit.close()

    await seed()
    deployment.start_broker()
    key = deployment.add_engineer("root", role="admin")
    client = client_for(deployment, "root", key)
    try:
        page, more = await client.audit_query(type="tick", limit=200)
        assert len(json.dumps(page)) > MAX_CONTROL_FRAME
        assert [e["body"]["n"] for e in page] == list(range(249, 49, -1))
        assert more is True
        rest, more = await client.audit_query(type="tick", limit=200,
                                              before_seq=page[-1]["seq"])
        assert [e["body"]["n"] for e in rest] == list(range(49, -1, -1))
        assert more is False
    finally:
        await client.close()
    assert deployment.broker is not None and deployment.broker.poll() is None


async def test_the_broker_still_refuses_big_frames_inbound(running: Deployment) -> None:
    """The larger limit is for the console's reading end alone: the broker
    still refuses big frames from anyone, admin replies included."""
    import ssl

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from broker.wire.messages import encode

    tls = ssl.create_default_context(cafile=str(running.pki.ca_cert))
    async with connect(running.url + "/v1/console", ssl=tls, compression=None,
                       max_size=None) as ws:
        big = encode("audit_page", events=[{
            "seq": 1, "time": "t", "type": "x", "session": None, "actor": None,
            "subject": None, "alias": None, "ip": None, "body": {"pad": "p" * 4000},
        }] * 30, more=False)
        assert len(big) > 64 * 1024
        await ws.send(big)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1009
