"""Data-subject requests: find, export and erase one device, and only that one."""

from __future__ import annotations

import base64
import datetime as dt
import json
import sqlite3
import sys
from pathlib import Path

import pexpect
import pytest

from broker.audit.store import AuditLog
from broker.audit.subjects import erase_subject, export_subject, find_subjects
from broker.errors import AuditError
from tests.broker.helpers import run_cli

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)
LAPTOP_1 = "dev-11111111-0000-4000-8000-000000000001"
LAPTOP_2 = "dev-22222222-0000-4000-8000-000000000002"
DESK = "dev-33333333-0000-4000-8000-000000000003"
RECEIPT = {"asked": ["view"], "decision": "granted", "device_id": LAPTOP_1,
           "engineer": "alice", "granted": ["view"], "key_fingerprint": "SHA256:x",
           "session": "s-1", "time": "2025-03-01T09:00:05Z"}


def t(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


async def populate(log: AuditLog) -> None:
    """Two devices called 'Laptop' (any case), one 'desk', with sessions."""
    receipt = base64.b64encode(json.dumps(RECEIPT, sort_keys=True,
                                          separators=(",", ":")).encode()).decode()
    await log.append("agent_connected", now=t(0), subject=LAPTOP_1, body={"shared": ["os_user"]},
                     personal={"alias": "Laptop", "ip": "10.99.88.77", "os_user": "marie"})
    await log.append("consent_granted", now=t(1), session="s-1", actor="alice",
                     subject=LAPTOP_1, body={"granted": ["view"]},
                     personal={"receipt": receipt, "receipt_signature": "c2ln"})
    await log.append("agent_connected", now=t(2), subject=LAPTOP_2, body={"shared": []},
                     personal={"alias": "laptop", "ip": "10.66.55.44"})
    await log.append("agent_connected", now=t(3), subject=DESK, body={"shared": []},
                     personal={"alias": "desk", "ip": "10.11.22.33"})
    await log.append("session_ended", now=t(20), session="s-1", actor="alice",
                     subject=LAPTOP_1, body={"reason": "engineer_left"})
    await log.append("agent_connected", now=t(30), subject=LAPTOP_1, body={"shared": []},
                     personal={"alias": "Marie's laptop", "ip": "10.99.88.78"})


def file_bytes(tmp_path: Path) -> bytes:
    return b"".join((tmp_path / name).read_bytes() for name in
                    ("audit.db", "audit.db-wal", "audit.db-shm") if (tmp_path / name).exists())


def stored_secrets(tmp_path: Path, pseudonym: str) -> list[bytes]:
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        found = [r[0] for r in conn.execute(
            "SELECT wrapped_key FROM subjects WHERE pseudonym = ?", (pseudonym,))]
        found += [r[0] for r in conn.execute(
            "SELECT ciphertext FROM personal WHERE pseudonym = ?", (pseudonym,))]
        found += [r[0] for r in conn.execute(
            "SELECT alias_tag FROM personal WHERE pseudonym = ?", (pseudonym,))]
    finally:
        conn.close()
    return [bytes(b) for b in found if b]


async def test_find_subjects_by_alias(log: AuditLog) -> None:
    await populate(log)
    found = await find_subjects(log, "LAPTOP")
    assert [s.pseudonym for s in found] == [log.pseudonym(LAPTOP_1), log.pseudonym(LAPTOP_2)]
    first = found[0]
    assert (first.first_seen, first.last_seen) == ("2025-03-01T09:00:00.000000Z",
                                                   "2025-03-01T09:30:00.000000Z")
    assert first.aliases == ("Laptop", "Marie's laptop")
    assert not first.erased and first.shredded_at is None
    assert await find_subjects(log, "nobody") == []
    # A lookup alone is not recorded (its caller does that); it writes nothing.
    assert [e.type for e in await log.events()][-1] == "agent_connected"


async def test_export_is_exactly_one_devices_data(log: AuditLog) -> None:
    await populate(log)
    export = await export_subject(log, "desk", now=t(40), actor="cli:dpo")
    assert export["subject"]["pseudonym"] == log.pseudonym(DESK)
    assert [e["seq"] for e in export["events"]] == [4]
    (event,) = export["events"]
    assert event["personal"] == {"alias": "desk", "ip": "10.11.22.33"}
    assert event["shredded"] == {}
    text = json.dumps(export)
    for other in ("10.99.88.77", "10.66.55.44", "marie", log.pseudonym(LAPTOP_1)):
        assert other not in text
    # The export is recorded with the pseudonym only.
    recorded = (await log.events())[-1]
    assert (recorded.seq, recorded.type, recorded.actor) == (export["export_seq"],
                                                            "subject_exported", "cli:dpo")
    assert recorded.subject == log.pseudonym(DESK)
    assert recorded.body == {"events": 1} and recorded.personal is None


async def test_export_decrypts_every_field_and_decodes_the_receipt(log: AuditLog) -> None:
    await populate(log)
    export = await export_subject(log, "laptop", LAPTOP_1, now=t(40))
    events = export["events"]
    assert [e["type"] for e in events] == ["agent_connected", "consent_granted",
                                           "session_ended", "agent_connected"]
    assert events[0]["personal"] == {"alias": "Laptop", "ip": "10.99.88.77", "os_user": "marie"}
    assert events[0]["body"] == {"shared": ["os_user"]}
    receipt = events[1]["personal"]
    assert receipt["receipt"] == RECEIPT
    assert json.loads(base64.b64decode(receipt["receipt_base64"])) == RECEIPT
    assert (events[1]["session"], events[1]["actor"]) == ("s-1", "alice")
    assert export["subject"]["aliases"] == ["Laptop", "Marie's laptop"]
    assert "10.66.55.44" not in json.dumps(export)  # the other 'laptop'


async def test_an_alias_of_several_devices_asks_which(log: AuditLog) -> None:
    await populate(log)
    with pytest.raises(AuditError) as caught:
        await export_subject(log, "laptop", now=t(40))
    message = str(caught.value)
    assert message.startswith("2 devices are called 'laptop': pass --device with one of: ")
    assert log.pseudonym(LAPTOP_1) in message and log.pseudonym(LAPTOP_2) in message
    assert "first seen 2025-03-01T09:02:00.000000Z" in message
    # Named by pseudonym or by device id, the same device.
    by_pseudonym = await export_subject(log, "laptop", log.pseudonym(LAPTOP_2), now=t(41))
    by_device_id = await export_subject(log, "laptop", LAPTOP_2, now=t(42))
    assert by_pseudonym["subject"] == by_device_id["subject"]
    assert [e["type"] for e in by_device_id["events"]] == ["agent_connected", "subject_exported"]
    assert [e["personal"]["ip"] for e in by_pseudonym["events"]] == ["10.66.55.44"]
    # A device that is not called so is refused, not exported.
    with pytest.raises(AuditError, match="is not called 'laptop'"):
        await export_subject(log, "laptop", DESK, now=t(43))
    with pytest.raises(AuditError, match="no device 'dev-unknown' in the audit log"):
        await export_subject(log, "laptop", "dev-unknown", now=t(44))
    lookups = await log.events(type="subject_lookup")
    assert [e.body for e in lookups] == [
        {"request": "export", "outcome": "ambiguous", "devices": 2},
        {"request": "export", "outcome": "mismatch"},
        {"request": "export", "outcome": "not_found"},
    ]


async def test_unknown_alias(log: AuditLog) -> None:
    await populate(log)
    with pytest.raises(AuditError, match="no device with alias 'printer'"):
        await erase_subject(log, "printer", now=t(40))
    (lookup,) = await log.events(type="subject_lookup")
    assert lookup.body == {"request": "erase", "outcome": "not_found"}


async def test_an_alias_is_shown_inert(log: AuditLog) -> None:
    with pytest.raises(AuditError) as caught:
        await export_subject(log, "evil\x1b]0;owned\x07", now=t(0))
    assert "\x1b" not in str(caught.value) and "\\x1b" in str(caught.value)


async def test_erasure_shreds_one_device_down_to_the_bytes(
    log: AuditLog, tmp_path: Path
) -> None:
    await populate(log)
    one, two = log.pseudonym(LAPTOP_1), log.pseudonym(LAPTOP_2)
    secrets_two = stored_secrets(tmp_path, two)
    # The tag of 'Laptop' is also the other device's tag of 'laptop' (any case).
    secrets_one = [s for s in stored_secrets(tmp_path, one) if s not in secrets_two]
    assert len(secrets_one) == 5  # key, three ciphertexts, one alias tag of its own
    data = file_bytes(tmp_path)
    assert all(s in data for s in secrets_one + secrets_two)

    report = await erase_subject(log, "LAPTOP", LAPTOP_1, now=t(50), actor="cli:dpo")
    assert (report.pseudonym, report.personal_rows, report.already_erased) == (one, 3, False)
    assert report.wal_truncated
    for closed in (False, True):
        if closed:  # and again with the log closed
            await log.close()
        data = file_bytes(tmp_path)
        assert not [s for s in secrets_one if s in data]
        assert all(s in data for s in secrets_two)
        assert b"10.99.88.77" not in data and b"marie" not in data
    log = await AuditLog.open(tmp_path)
    try:
        assert await log.verify_chain() is None
        erased = (await log.events())[-1]
        assert (erased.seq, erased.type, erased.subject, erased.actor) == (
            report.event_seq, "subject_erased", one, "cli:dpo")
        assert erased.body == {"personal_rows": 3}
        # The other 'laptop' is untouched, and now the only one of that name.
        (remaining,) = await find_subjects(log, "laptop")
        assert remaining.pseudonym == two and remaining.aliases == ("laptop",)
        export = await export_subject(log, "laptop", one, now=t(60))
        assert export["subject"]["erased"] is True
        assert export["subject"]["shredded_at"] == "2025-03-01T09:50:00.000000Z"
        connected = export["events"][0]
        assert connected["personal"] is None
        assert set(connected["shredded"]) == {"alias", "ip", "os_user"}
        assert connected["shredded"]["ip"] == (
            "erased at 2025-03-01T09:50:00.000000Z on the data subject's request")
        assert [e["type"] for e in export["events"]][-1] == "subject_erased"
        # Erasing again is recorded and harmless.
        again = await erase_subject(log, "laptop", one, now=t(70))
        assert (again.personal_rows, again.already_erased) == (0, True)
        # The device comes back: new data under a new key; the old stays erased.
        await log.append("agent_connected", now=t(80), subject=LAPTOP_1,
                         personal={"alias": "Laptop", "ip": "10.1.1.1"})
        export = await export_subject(log, "laptop", LAPTOP_1, now=t(90))
        assert [e["personal"]["ip"] for e in export["events"] if e["personal"]] == ["10.1.1.1"]
        assert export["subject"]["erased"] is False
    finally:
        await log.close()


# -- `consentry-broker audit erase` -----------------------------------------------------


async def seeded(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path / "data")
    try:
        await populate(audit)
    finally:
        await audit.close()


async def erased_rows(tmp_path: Path) -> list[str]:
    audit = await AuditLog.open(tmp_path / "data")
    try:
        return [e.subject or "" for e in await audit.events(type="subject_erased")]
    finally:
        await audit.close()


async def test_cli_erase_with_yes(tmp_path: Path) -> None:
    await seeded(tmp_path)
    ambiguous = run_cli(tmp_path, "audit", "erase", "--subject", "laptop", "--yes")
    assert ambiguous.returncode == 4
    assert "2 devices are called 'laptop': pass --device with one of: " in ambiguous.stderr
    assert "Traceback" not in ambiguous.stderr

    result = run_cli(tmp_path, "audit", "erase", "--subject", "desk", "--yes")
    assert result.returncode == 0, result.stderr
    audit = await AuditLog.open(tmp_path / "data")
    try:
        desk = audit.pseudonym(DESK)
        assert result.stdout.startswith(f"erased device {desk}: 1 personal record(s) deleted")
        (event,) = await audit.events(type="subject_erased")
        assert (event.subject, event.body) == (desk, {"personal_rows": 1})
        assert event.actor is not None and event.actor.startswith("cli:")
        assert await audit.verify_chain() is None
        assert await find_subjects(audit, "desk") == []
    finally:
        await audit.close()
    assert b"10.11.22.33" not in file_bytes(tmp_path / "data")


async def test_cli_erase_refuses_without_yes_off_a_terminal(tmp_path: Path) -> None:
    await seeded(tmp_path)
    result = run_cli(tmp_path, "audit", "erase", "--subject", "desk")
    assert result.returncode == 2
    assert result.stderr == ("consentry-broker: error: refusing to erase without --yes: there "
                             "is no terminal to confirm on (stdin is not a TTY)\n")
    assert await erased_rows(tmp_path) == []


@pytest.mark.parametrize(("answer", "erased"), [("erase", True), ("y", False)])
async def test_cli_erase_asks_at_a_terminal(tmp_path: Path, answer: str, erased: bool) -> None:
    await seeded(tmp_path)
    child = pexpect.spawn(sys.executable, ["-m", "broker", "audit", "erase", "--subject", "desk",
                                           "--data-dir", "data"],
                          cwd=str(tmp_path), timeout=30, encoding="utf-8")
    try:
        child.expect("It cannot be undone")
        child.expect("Type 'erase' to confirm: ")
        child.sendline(answer)
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == (0 if erased else 1)
    assert ("erased device" in (child.before or "")) is erased
    assert len(await erased_rows(tmp_path)) == (1 if erased else 0)
