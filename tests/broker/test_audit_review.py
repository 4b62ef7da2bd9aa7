"""Reviewing one session (`broker.audit.review`, `audit show`): the report,
and every way a stored consent receipt can fail its checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import nacl.signing
import pytest

from broker.audit.review import check_receipt, session_report
from broker.audit.store import AuditLog
from broker.cli import main
from broker.wire.messages import b64encode
from broker.wire.receipt import Receipt, sign_receipt

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
DEVICE = "dev-5b1f0c3e"
FINGERPRINT = "SHA256:abcdef"
SESSION = "sessA1"


def signed(key: nacl.signing.SigningKey, *, asked: tuple[str, ...], granted: tuple[str, ...],
           decision: str = "granted", session: str = SESSION, second: int = 0
           ) -> tuple[bytes, bytes]:
    receipt = Receipt.make(session=session, device_id=DEVICE, engineer="alice",
                           key_fingerprint=FINGERPRINT, asked=asked, granted=granted,
                           decision=decision, now=T0 + dt.timedelta(seconds=second))
    return sign_receipt(receipt, key)


async def record_consent(audit: AuditLog, key: nacl.signing.SigningKey, data: bytes,
                         signature: bytes, *, upgrade: bool = False,
                         device_key: bytes | Literal[False] | None = None, second: int = 2,
                         body: dict[str, Any] | None = None) -> int:
    """A consent event as `broker.server` records it (`device_key` False: without one)."""
    fields = json.loads(data)
    base = {"engineer": "alice", "key_fingerprint": FINGERPRINT, "asked": fields["asked"],
            "granted": fields["granted"], "decision": fields["decision"],
            "receipt_time": fields["time"], "receipt_sha256": hashlib.sha256(data).hexdigest()}
    if upgrade:
        base["upgrade"] = True
    personal = {"receipt": b64encode(data), "receipt_signature": b64encode(signature)}
    if device_key is not False:
        personal["device_key"] = b64encode(device_key or bytes(key.verify_key))
    return await audit.append(
        f"consent_{fields['decision']}", now=T0 + dt.timedelta(seconds=second),
        session=SESSION, actor="alice", subject=DEVICE, body={**base, **(body or {})},
        personal=personal)


async def full_session(audit: AuditLog, key: nacl.signing.SigningKey) -> None:
    """connect, join (view), grant, start, ask for control, grant, a file, narrow, end."""
    await audit.append("agent_connected", now=T0, subject=DEVICE, body={"shared": []},
                       personal={"alias": "Front Desk", "ip": "192.0.2.7"})
    await audit.append("engineer_login", now=T0, actor="alice", body={"role": "engineer"})
    await audit.append("join_requested", now=T0 + dt.timedelta(seconds=1), session=SESSION,
                       actor="alice", subject=DEVICE, body={"wants": ["view"]})
    await record_consent(audit, key, *signed(key, asked=("view",), granted=("view",)))
    await audit.append("session_started", now=T0 + dt.timedelta(seconds=3), session=SESSION,
                       actor="alice", subject=DEVICE, body={"granted": ["view"]})
    await audit.append("control_requested", now=T0 + dt.timedelta(seconds=4),
                       session=SESSION, actor="alice", subject=DEVICE,
                       body={"asked": ["view", "control"]})
    data, sig = signed(key, asked=("view", "control"), granted=("view", "control"), second=5)
    await record_consent(audit, key, data, sig, upgrade=True, second=5)
    await audit.append("rights_changed", now=T0 + dt.timedelta(seconds=5), session=SESSION,
                       actor="alice", subject=DEVICE,
                       body={"granted": ["view", "control"], "by": "customer", "upgrade": True})
    await audit.append("file_transferred", now=T0 + dt.timedelta(seconds=6), session=SESSION,
                       actor="alice", subject=DEVICE,
                       body={"direction": "upload", "bytes": 2048, "outcome": "complete"})
    await audit.append("rights_changed", now=T0 + dt.timedelta(seconds=8), session=SESSION,
                       actor="alice", subject=DEVICE, body={"granted": ["view"], "by": "customer"})
    await audit.append("session_ended", now=T0 + dt.timedelta(seconds=9), session=SESSION,
                       actor="alice", subject=DEVICE, body={
                           "reason": "customer_ended", "duration_s": 6.0,
                           "bytes_to_agent": 1200, "bytes_to_console": 34000,
                           "granted": ["view"]})


async def test_the_report_tells_the_whole_story(log: AuditLog) -> None:
    key = nacl.signing.SigningKey.generate()
    await full_session(log, key)
    events = await log.session_events(SESSION)
    (device,), _ = await log.query(type="agent_connected")
    report = session_report(SESSION, events, device)
    assert report["engineer"] == "alice"
    assert report["subject"] == log.pseudonym(DEVICE)
    assert report["device"]["alias"] == "Front Desk" and report["device"]["ip"] == "192.0.2.7"
    assert report["wants"] == ["view"]
    first, upgrade = report["consents"]
    assert (first["decision"], first["upgrade"], first["granted"]) == ("granted", False, ["view"])
    assert upgrade["upgrade"] is True and upgrade["granted"] == ["view", "control"]
    for consent in (first, upgrade):
        assert consent["signature_valid"] is True
        assert consent["matches_log"] is True and consent["matches_event"] is True
        assert consent["receipt"]["session"] == SESSION
        assert consent["problem"] is None
    assert [c["granted"] for c in report["rights_changes"]] == [["view", "control"], ["view"]]
    assert report["granted"] == ["view"]
    assert len(report["control_requests"]) == 1
    assert (report["outcome"], report["end_reason"]) == ("ended", "customer_ended")
    assert (report["duration_s"], report["bytes_to_agent"], report["bytes_to_console"]) == (
        6.0, 1200, 34000)


async def test_a_refusal_ends_the_story_there(log: AuditLog) -> None:
    key = nacl.signing.SigningKey.generate()
    await log.append("join_requested", now=T0, session=SESSION, actor="alice", subject=DEVICE,
                     body={"wants": ["view", "control"]})
    await record_consent(log, key, *signed(key, asked=("view", "control"), granted=(),
                                           decision="denied"))
    report = session_report(SESSION, await log.session_events(SESSION))
    assert (report["outcome"], report["end_reason"]) == ("denied", "denied")
    assert report["consents"][0]["signature_valid"] is True


async def test_a_receipt_signed_by_another_key_does_not_verify(log: AuditLog) -> None:
    device, impostor = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    await record_consent(log, device, *signed(impostor, asked=("view",), granted=("view",)),
                         device_key=bytes(device.verify_key))
    (event,) = await log.session_events(SESSION)
    checked = check_receipt(event)
    assert checked is not None
    assert checked["signature_valid"] is False
    assert checked["matches_log"] is True  # the bytes are the ones logged, just not signed
    assert "signature is invalid" in checked["problem"]


async def test_a_receipt_that_is_not_the_logged_one_is_caught(log: AuditLog) -> None:
    key = nacl.signing.SigningKey.generate()
    data, sig = signed(key, asked=("view",), granted=("view",))
    # Validly signed, but the chained body names another receipt's hash and
    # says more was granted than the receipt does.
    await record_consent(log, key, data, sig, body={"receipt_sha256": "0" * 64,
                                                    "granted": ["view", "control"]})
    (event,) = await log.session_events(SESSION)
    checked = check_receipt(event)
    assert checked is not None
    assert checked["signature_valid"] is True
    assert checked["matches_log"] is False and checked["matches_event"] is False
    assert "differs from the one whose hash the log recorded" in checked["problem"]


async def test_without_the_device_key_or_the_receipt_nothing_is_claimed(log: AuditLog) -> None:
    key = nacl.signing.SigningKey.generate()
    await record_consent(log, key, *signed(key, asked=("view",), granted=("view",)),
                         device_key=False)
    await log.append("consent_granted", now=T0, session=SESSION, actor="alice",
                     subject=DEVICE, body={"decision": "granted"})  # receipt erased
    old, erased = await log.session_events(SESSION)
    checked = check_receipt(old)
    assert checked is not None and checked["held"] is True
    assert checked["signature_valid"] is None and checked["matches_log"] is True
    assert "device key was not recorded" in checked["problem"]
    gone = check_receipt(erased)
    assert gone is not None and gone["held"] is False and gone["signature_valid"] is None


async def seed(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        key = nacl.signing.SigningKey.generate()
        await full_session(audit, key)
    finally:
        await audit.close()


async def logged(tmp_path: Path, type: str) -> list[Any]:
    audit = await AuditLog.open(tmp_path)
    try:
        return await audit.events(type=type)
    finally:
        await audit.close()


async def test_show_prints_the_timeline_and_logs_the_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, _ = await_cli(capsys, "audit", "show", SESSION, "--data-dir", str(tmp_path))
    assert code == 0
    assert "Front Desk" in out and "192.0.2.7" in out
    assert "receipt: signature VALID (device key), matches the hash in the log" in out
    assert "customer_ended, after 6.0 s; 1.2 KiB to the agent, 33.2 KiB to the console" in out
    assert "the engineer asked for view, control" in out
    assert "2.0 KiB to the customer, complete" in out  # a file: how much, never its name
    timeline = out.split("Timeline (oldest first)")[1]
    types = [line.split()[2] for line in timeline.splitlines()
             if line.startswith("  ") and line.split()[0].isdigit()]
    assert types == ["join_requested", "consent_granted", "session_started",
                     "control_requested", "consent_granted", "rights_changed",
                     "file_transferred", "rights_changed", "session_ended"]
    (read,) = await logged(tmp_path, "audit_read")
    assert read.body == {"command": "show", "session": SESSION, "returned": 9}
    assert read.actor.startswith("cli:")


async def test_show_json_is_one_ascii_object(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, _ = await_cli(capsys, "audit", "show", SESSION, "--json",
                             "--data-dir", str(tmp_path))
    assert code == 0 and out.isascii() and len(out.splitlines()) == 1
    report = json.loads(out)
    assert report["session"] == SESSION and report["events"] == 9
    assert [c["signature_valid"] for c in report["consents"]] == [True, True]
    assert report["timeline"][0]["type"] == "join_requested"
    assert "personal" not in report["timeline"][0]


async def test_show_of_an_unknown_session_fails_and_is_still_logged(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    code, out, err = await_cli(capsys, "audit", "show", "nope", "--data-dir", str(tmp_path))
    assert code == 4 and out == ""
    assert "no audit events for session 'nope'" in err
    (read,) = await logged(tmp_path, "audit_read")
    assert read.body["returned"] == 0


async def test_show_makes_network_strings_inert(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        await audit.append("agent_connected", now=T0, subject=DEVICE,
                           personal={"alias": "evil\x1b]0;pwned\x07\x1b[2J", "ip": "1.2.3.4"})
        await audit.append("join_requested", now=T0, session=SESSION, actor="alice",
                           subject=DEVICE, body={"wants": ["view"], "reason": "\x1b[31mred"})
    finally:
        await audit.close()
    code, out, _ = await_cli(capsys, "audit", "show", SESSION, "--data-dir", str(tmp_path))
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert "\\u001b]0;pwned\\u0007" in out and "\\u001b[31mred" in out


def await_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI runs its own event loop, so it runs in a thread here."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        code = pool.submit(main, list(args)).result()
    out, err = capsys.readouterr()
    return code, out, err


# -- finding a session by the start of its id, and the signed material ------------

LONG = "EY9Y4MyLrpMt"  # as the broker makes them: secrets.token_urlsafe(9)


async def seed_two_sessions(tmp_path: Path) -> None:
    await seed(tmp_path)
    audit = await AuditLog.open(tmp_path)
    try:
        for session in (LONG, "EY9Y4MzQ2bXw"):
            await audit.append("join_requested", now=T0, session=session, actor="alice",
                               subject=DEVICE, body={"wants": ["view"]})
    finally:
        await audit.close()


async def test_show_finds_a_session_by_a_unique_prefix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed_two_sessions(tmp_path)
    code, out, err = await_cli(capsys, "audit", "show", "EY9Y4MyL", "--data-dir", str(tmp_path))
    assert (code, err) == (0, "")
    assert out.startswith(f"Session {LONG}\n")
    code, out, _ = await_cli(capsys, "audit", "show", "sessA", "--json",
                             "--data-dir", str(tmp_path))
    assert code == 0 and json.loads(out)["session"] == SESSION
    reads = await logged(tmp_path, "audit_read")
    assert [r.body["session"] for r in reads] == [LONG, SESSION]
    assert reads[0].body["asked"] == "EY9Y4MyL"


async def test_show_of_an_ambiguous_prefix_lists_the_candidates(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed_two_sessions(tmp_path)
    code, out, err = await_cli(capsys, "audit", "show", "EY9Y4M", "--data-dir", str(tmp_path))
    assert code == 4 and out == ""
    assert "'EY9Y4M' is the start of 2 session ids" in err
    assert "EY9Y4MyLrpMt" in err and "EY9Y4MzQ2bXw" in err
    # Too short to mean one session: not guessed at.
    code, _, err = await_cli(capsys, "audit", "show", "EY9", "--data-dir", str(tmp_path))
    assert code == 4 and "no audit events for session 'EY9'" in err
    (ambiguous, short) = await logged(tmp_path, "audit_read")
    assert ambiguous.body["returned"] == short.body["returned"] == 0


async def test_show_gives_the_signed_receipt_signature_and_device_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    await seed(tmp_path)
    audit = await AuditLog.open(tmp_path)
    try:
        consent = (await audit.events(type="consent_granted"))[0].personal
    finally:
        await audit.close()
    assert consent is not None
    code, out, _ = await_cli(capsys, "audit", "show", SESSION, "--data-dir", str(tmp_path))
    assert code == 0
    for field in ("receipt", "receipt_signature", "device_key"):
        assert consent[field] in out
    code, out, _ = await_cli(capsys, "audit", "show", SESSION, "--json",
                             "--data-dir", str(tmp_path))
    first = json.loads(out)["consents"][0]
    assert first["signed"] == {field: consent[field]
                               for field in ("receipt", "receipt_signature", "device_key")}


async def test_list_is_one_readable_line_per_event(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Whole ids that `audit show` takes; the signed receipt's ~900 characters
    of base64 left to `audit show` and --json."""
    audit = await AuditLog.open(tmp_path)
    try:
        key = nacl.signing.SigningKey.generate()
        data, sig = signed(key, asked=("view", "control"), granted=("view",), session=LONG)
        fields = json.loads(data)
        await audit.append("agent_connected", now=T0, subject=DEVICE, body={"shared": []},
                           personal={"alias": "Front Desk", "ip": "192.0.2.7"})
        await audit.append("join_requested", now=T0, session=LONG, actor="alice",
                           subject=DEVICE, body={"wants": ["view", "control"]})
        await audit.append(
            "consent_granted", now=T0, session=LONG, actor="alice", subject=DEVICE,
            body={"engineer": "alice", "asked": fields["asked"], "granted": fields["granted"],
                  "key_fingerprint": "SHA256:" + "k" * 43, "decision": "granted",
                  "receipt_time": fields["time"],
                  "receipt_sha256": hashlib.sha256(data).hexdigest()},
            personal={"receipt": b64encode(data), "receipt_signature": b64encode(sig),
                      "device_key": b64encode(bytes(key.verify_key))})
        await audit.append("session_started", now=T0, session=LONG, actor="alice",
                           subject=DEVICE, body={"granted": ["view"]})
        await audit.append("session_ended", now=T0, session=LONG, actor="alice",
                           subject=DEVICE, body={"reason": "engineer_left", "duration_s": 61.5,
                                                 "bytes_to_agent": 1200,
                                                 "bytes_to_console": 34000})
    finally:
        await audit.close()
    code, out, _ = await_cli(capsys, "audit", "list", "--data-dir", str(tmp_path))
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == [
        "agent_connected", "join_requested", "consent_granted", "session_started",
        "session_ended"]
    for line in lines[:4]:
        assert len(line) <= 125, line  # was 900 for a consent
    assert len(lines[4]) <= 160
    consent = lines[2]
    assert consent.endswith(f"consent_granted session={LONG} actor=alice "
                            "asked=view,control granted=view receipt=signed")
    assert b64encode(sig) not in out and "device_key" not in out
    assert lines[4].endswith("reason=engineer_left bytes_to_agent=1200 "
                             "bytes_to_console=34000 duration_s=61.5")
    # The device is named where it connected; a session's events name the session.
    assert 'alias="Front Desk"' in lines[0] and "subject=" in lines[0]
    code, out, _ = await_cli(capsys, "audit", "list", "--json", "--data-dir", str(tmp_path))
    assert json.loads(out.splitlines()[2])["personal"]["receipt_signature"] == b64encode(sig)
