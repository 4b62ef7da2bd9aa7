"""Reviewing a real session and verifying the log, through a real broker:
`audit show` checks the customer's signed receipt with the device key the
broker kept, `audit export` leaves personal data out, and admins have the
broker verify the whole log over the admin API (`audit_verify`)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from console.client import Forbidden
from tests.e2e.conftest import Deployment
from tests.e2e.test_admin_api import audit_events, client_for, consented_session


def session_of(dep: Deployment) -> str:
    (granted,) = [e for e in audit_events(dep) if e["type"] == "consent_granted"]
    return str(granted["session"])


def test_show_checks_the_receipt_and_export_leaves_personal_data_out(
        running: Deployment) -> None:
    consented_session(running)
    running.stop()
    session = session_of(running)

    shown = running.cli("audit", "show", session, "--json")
    assert shown.returncode == 0, shown.stderr
    report = json.loads(shown.stdout)
    (consent,) = report["consents"]
    assert consent["decision"] == "granted" and consent["granted"] == ["view", "control"]
    assert consent["signature_valid"] is True, consent["problem"]
    assert consent["matches_log"] is True and consent["matches_event"] is True
    assert consent["receipt"]["session"] == session
    assert report["device"]["alias"] == "Front Desk" and report["device"]["ip"] == "127.0.0.1"
    assert report["engineer"] == "alice" and report["outcome"] == "ended"
    assert report["end_reason"] == "engineer_left"
    assert report["duration_s"] > 0
    assert report["bytes_to_agent"] > 0 and report["bytes_to_console"] > 0

    human = running.cli("audit", "show", session)
    assert "receipt: signature VALID (device key), matches the hash in the log" in human.stdout

    exported = running.cli("audit", "export", "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    assert session in exported.stdout
    assert "Front Desk" not in exported.stdout and "127.0.0.1" not in exported.stdout

    subject = running.cli("audit", "export", "--subject", "front desk")
    assert subject.returncode == 0, subject.stderr
    assert "Front Desk" in subject.stdout

    reads = [e for e in audit_events(running) if e["type"] in ("audit_read", "audit_exported",
                                                                "subject_exported")]
    # Every read is in the log: a list, two shows, the two exports.
    assert [e["type"] for e in reads] == ["audit_read", "audit_read", "audit_read",
                                          "audit_exported", "subject_exported"]
    assert [e["body"].get("command") for e in reads[1:3]] == ["show", "show"]
    assert reads[3]["body"]["format"] == "csv" and reads[3]["body"]["complete"] is True


def edit_body(data_dir: Path, seq: int, body: dict[str, object]) -> None:
    """What an attacker with the file could do: bypass the append-only trigger."""
    conn = sqlite3.connect(data_dir / "audit.db", isolation_level=None)
    try:
        (trigger,) = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                                  "AND name = 'events_no_update'").fetchone()
        conn.execute("DROP TRIGGER events_no_update")
        conn.execute("UPDATE events SET body = ? WHERE seq = ?", (json.dumps(body), seq))
        conn.execute(trigger)
    finally:
        conn.close()


async def test_admins_have_the_broker_verify_the_log(running: Deployment) -> None:
    consented_session(running)
    admin = client_for(running, "root", running.add_engineer("root", role="admin"))
    alice_key = running.root / "alice_ed25519"
    try:
        result = await admin.audit_verify()
        assert result["ok"] is True, result
        assert "audit log intact" in result["summary"]
        assert result["first_bad_seq"] is None

        # The session detail carries the receipt, checked as it is read.
        detail = await admin.audit_session(session_of(running))
        (granted,) = [e for e in detail if e["type"] == "consent_granted"]
        assert granted["receipt_verified"] is True
    finally:
        await admin.close()

    alice = client_for(running, "alice", alice_key)
    try:
        with pytest.raises(Forbidden):
            await alice.audit_verify()
    finally:
        await alice.close()

    # Someone edits an old event in the file; the broker's check names it.
    running.stop_broker()
    join = next(e for e in audit_events(running) if e["type"] == "join_requested")
    edit_body(running.data_dir, join["seq"], {"wants": ["view"]})
    running.start_broker()
    admin = client_for(running, "root", running.root / "root_ed25519")
    try:
        result = await admin.audit_verify()
    finally:
        await admin.close()
    assert result["ok"] is False
    assert result["first_bad_seq"] == join["seq"]
    assert "NOT intact" in result["summary"]

    running.stop_broker()
    verified = [e for e in audit_events(running) if e["type"] == "audit_verified"]
    assert [(e["actor"], e["body"]["ok"], e["body"]["first_bad_seq"]) for e in verified] == [
        ("root", True, None), ("root", False, join["seq"])]
    refused = [e for e in audit_events(running) if e["type"] == "audit_read_refused"]
    assert [(e["actor"], e["body"]["request"]) for e in refused] == [("alice", "audit_verify")]
