"""Fail closed, for real: a broker whose audit log cannot be written starts
no session, and the customer and the engineer are both told why.

The log is made unwritable the way it happens in production: the operator's
quota (`serve --audit-max-mb`) is SQLite's `max_page_count`, and the log is
filled to it, so each refused write is a genuine SQLITE_FULL. Fillers are
nearly a page each, so once one no longer fits, any event needs a page past
the cap: every later append fails, whichever table it touches. The filling
is done by this test through the store, with the same cap, into the very
file the broker has open — before the broker starts, or between two steps
of a join.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from pathlib import Path

import pexpect
import pytest

from broker.audit.store import AuditLog
from broker.errors import AuditWriteError
from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.errors import BrokerError
from console.identity import load_file_identity
from console.status_line import Progress
from tests.e2e.conftest import Deployment, read_code, transcript

CAP_MB = 1
REASON = "cannot record sessions right now"


async def fill(data_dir: Path) -> int:
    audit = await AuditLog.open(data_dir, max_bytes=CAP_MB * 1024 * 1024)
    count = 0
    try:
        while True:
            await audit.append("filler", now=dt.datetime.now(dt.UTC), body={"pad": "x" * 3800})
            count += 1
    except AuditWriteError:
        return count
    finally:
        await audit.close()


def fill_now(data_dir: Path) -> None:
    """`fill` from synchronous code, even inside a running event loop."""
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(fill(data_dir))))
    thread.start()
    thread.join(60)
    assert result and result[0] > 0


def audit_types(dep: Deployment) -> list[str]:
    result = dep.cli("audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["type"] for line in result.stdout.splitlines() if line.strip()]


def nothing_was_relayed(dep: Deployment) -> None:
    dep.stop_broker()
    types = audit_types(dep)
    for never in ("join_requested", "consent_granted", "session_started", "session_ended"):
        assert never not in types, types


def test_a_full_log_refuses_agents_and_consoles_with_the_reason(
        deployment: Deployment) -> None:
    key = deployment.add_engineer("alice", display="Alice Example")
    fill_now(deployment.data_dir)
    deployment.start_broker(0, "--audit-max-mb", str(CAP_MB))

    agent = deployment.agent("--alias", "Front Desk")
    agent.expect(pexpect.EOF, timeout=30)
    agent.close()
    said = " ".join(transcript(agent).split())  # the terminal may wrap the sentence
    assert REASON in said and "ask the operator" in said
    assert "Your support code" not in said  # no code was ever shown
    assert agent.exitstatus == 3

    console = deployment.console("1234-456-789", key, "alice")
    console.expect(pexpect.EOF, timeout=30)
    console.close()
    assert REASON in " ".join(transcript(console).split())
    assert console.exitstatus != 0

    # Refused for the real reason: SQLite's own "full", at the quota.
    assert ("audit log unavailable: audit log could not be written: database or disk is full"
            in deployment.broker_stdout.read_text())
    assert deployment.broker is not None and deployment.broker.poll() is None  # still serving
    nothing_was_relayed(deployment)


async def test_a_join_the_log_cannot_record_is_refused_at_both_ends(
        deployment: Deployment) -> None:
    key = deployment.add_engineer("alice", display="Alice Example")
    deployment.start_broker(0, "--audit-max-mb", str(CAP_MB))
    agent = deployment.agent("--alias", "Front Desk")
    code = await asyncio.to_thread(read_code, agent)
    client = ConsoleClient(deployment.url, deployment.pki.ca_cert,
                           load_file_identity("alice", key, None))

    def on_progress(step: Progress) -> None:
        # Logged in (which was recorded): now the log fills up, before the join.
        if step.state == "logged_in":
            fill_now(deployment.data_dir)

    with pytest.raises(BrokerError) as info:
        await client.join(parse_code(code), ("view",), on_progress)
    assert "The broker cannot record sessions right now" in str(info.value)

    # The agent's code was spent by the join: it is told why, and keeps
    # retrying (each reconnection must be recorded, and is refused).
    await asyncio.to_thread(agent.expect, "cannot start sessions right now", timeout=30)
    said = " ".join(transcript(agent).split())
    assert REASON in said
    assert "wants to" not in said and "deny" not in said  # the customer was never asked
    nothing_was_relayed(deployment)


def test_a_consent_the_log_cannot_record_starts_no_session(deployment: Deployment) -> None:
    key = deployment.add_engineer("alice", display="Alice Example")
    deployment.start_broker(0, "--audit-max-mb", str(CAP_MB))
    agent = deployment.agent("--alias", "Front Desk")
    console = deployment.console(read_code(agent), key, "alice", "--control")
    agent.expect(r"\[n/Enter\] deny")
    fill_now(deployment.data_dir)  # the request was recorded; the answer cannot be
    agent.send("c")

    agent.expect("The support connection ended", timeout=30)
    agent.expect("none can start", timeout=10)
    console.expect(pexpect.EOF, timeout=30)
    console.close()
    said = " ".join(transcript(console).split())
    assert "The broker cannot record sessions right now, so none can start" in said
    assert console.exitstatus != 0
    assert "$ " not in said.split("Waiting for the customer")[-1]  # no shell, no byte
    nothing_after_consent = audit_types_after_stop(deployment)
    assert "join_requested" in nothing_after_consent
    for never in ("consent_granted", "session_started", "session_ended"):
        assert never not in nothing_after_consent


def audit_types_after_stop(dep: Deployment) -> list[str]:
    dep.stop_broker()
    return audit_types(dep)
