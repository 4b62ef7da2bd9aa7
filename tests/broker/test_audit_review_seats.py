"""Reviewing a shared session (`audit show`, `broker.audit.review`) on the
log the broker's own session driver wrote: the roster of engineers, each
with their join, signed receipt, rights changes, departure and bytes."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import nacl.signing
import pytest

from broker.audit_cli.review import format_report, load_session
from broker.registry import Engineer
from broker.server import Broker
from broker.session import AgentLink
from broker.wire.machine.session import AGENT_SESSION, CONSOLE
from broker.wire.messages import b64encode, encode
from broker.wire.receipt import Receipt, sign_receipt
from tests.broker.test_session_driver import MemorySocket, Setup
from tests.broker.test_session_driver import parts as parts  # the fixture
from tests.broker.test_session_driver_seats import consent_for, engineer, invite


@pytest.fixture
def running(parts: tuple[Broker, Engineer, AgentLink]) -> Setup:
    broker, first, link = parts
    return Setup(broker, nacl.signing.SigningKey.generate(), first, link)


async def shared_session(setup: Setup) -> None:
    """alice joins; the customer invites; bob joins and sends output; alice's
    rights narrowed; bob removed; carol joins and leaves; the customer ends."""
    setup.broker.sessions["s1"] = setup.driver
    await setup.start()
    await setup.receive(AGENT_SESSION, b"to alice")
    for n, who in enumerate(("bob", "carol"), start=1):
        await invite(setup)
        person = engineer(who)
        console = await setup.driver.add_seat(MemorySocket(), person, ("view",))  # type: ignore[arg-type]
        request = setup.agent_link.last("join_request")  # type: ignore[attr-defined]
        agent_side = await setup.driver.attach(MemorySocket(), request["token"])  # type: ignore[arg-type]
        assert agent_side is not None and console is not None
        await setup.receive(agent_side, consent_for(setup, person, n))
        if who == "bob":
            await setup.receive(agent_side, b"bob's output!")
            await setup.receive(AGENT_SESSION, encode("rights", granted=["view"]))
            await setup.receive(agent_side, encode("remove"))
        else:
            await setup.receive(console, encode("end", reason="engineer_left"))
    await setup.receive(AGENT_SESSION, encode("end", reason="customer_ended"))


async def test_a_shared_session_shows_each_engineer(running: Setup) -> None:
    await shared_session(running)
    report = await load_session(running.broker.audit, "s1")
    seats = {p["seat"]: p for p in report["participants"]}
    assert [p["engineer"] for p in report["participants"]] == ["alice", "bob", "carol"]
    alice, bob, carol = seats[CONSOLE], seats["console-2"], seats["console-3"]
    for one in (alice, bob, carol):
        (consent,) = one["consents"]
        assert consent["decision"] == "granted" and consent["engineer"] == one["engineer"]
        assert consent["signature_valid"] is True and consent["matches_log"] is True
        assert consent["matches_event"] is True
        assert one["joined"] is not None and one["left"] is not None
    assert [c["granted"] for c in alice["rights_changes"]] == [["view"]]
    assert (bob["outcome"], bob["left_reason"]) == ("removed", "engineer_removed")
    assert (bob["bytes_to_console"], bob["bytes_to_agent"]) == (len(b"bob's output!"), 0)
    removed = next(e for e in report["timeline"] if e["type"] == "engineer_removed")
    assert bob["duration_s"] == removed["body"]["duration_s"]  # as long as they were in it
    assert (carol["outcome"], carol["left_reason"]) == ("left", "engineer_left")
    assert (alice["outcome"], alice["left_reason"]) == ("ended", "customer_ended")
    assert alice["bytes_to_console"] == len(b"to alice")
    # The session as a whole is still the first engineer's story and the totals.
    assert (report["engineer"], report["outcome"], report["end_reason"]) == (
        "alice", "ended", "customer_ended")
    assert report["bytes_to_console"] == len(b"to alice") + len(b"bob's output!")
    assert [c["engineer"] for c in report["consents"]] == ["alice"]
    assert report["invitations"] == 2
    json.dumps(report)  # --json prints it as is

    text = format_report(report)
    assert "3 in this shared session (invitations issued: 2)" in text
    assert "removed by the customer at" in text and "(engineer_removed), after" in text
    assert "13 B to the console" in text
    assert text.count("receipt signature VALID") == 3
    for seq in (c["seq"] for one in (alice, bob, carol) for c in one["consents"]):
        assert f"Signed consent receipt (seq {seq}):" in text  # each one's, to check again
    assert "joined" in text and "bob with view [console-2]" in text


async def test_a_refused_join_is_listed_and_asks_nobody(running: Setup) -> None:
    from broker.wire.limits import MAX_ENGINEERS_PER_SESSION

    setup = running
    await setup.start()
    for n in range(2, MAX_ENGINEERS_PER_SESSION + 2):  # the last one is one too many
        await setup.driver.add_seat(MemorySocket(), engineer(f"eng{n}"),  # type: ignore[arg-type]
                                    ("view",))
    setup.driver.stop()
    report = await load_session(setup.broker.audit, "s1")
    assert [r["engineer"] for r in report["refused_joins"]] == [
        f"eng{MAX_ENGINEERS_PER_SESSION + 1}"]
    assert "session_full; nobody was asked" in format_report(report)


async def test_a_one_engineer_session_has_no_roster(running: Setup) -> None:
    setup = running
    await setup.start()
    await setup.receive(CONSOLE, encode("end", reason="engineer_left"))
    report = await load_session(setup.broker.audit, "s1")
    assert report["participants"] == [] and report["outcome"] == "ended"
    text = format_report(report)
    assert "shared session" not in text and "[console" not in text


async def test_the_tui_session_view_shows_the_roster_from_the_real_reply(
        running: Setup) -> None:
    from broker.admin_api import event_object
    from broker.wire.messages import decode
    from console.screens.audit import session_timeline

    await shared_session(running)
    events = await running.broker.audit.session_events("s1")
    # As the admin's console receives them: the broker's reply frame, decoded.
    frame = encode("audit_session", events=[event_object(e, with_receipt=True) for e in events],
                   more=False)
    text = session_timeline("s1", list(decode(frame)["events"])).plain
    roster = text.split("join_requested", 1)[0]  # above the first event
    assert "3 engineers in this session" in roster
    for who in ("alice [console]", "bob [console-2]", "carol [console-3]"):
        assert who in roster
    assert roster.count("consent granted · receipt valid") == 3
    assert "removed by the customer (engineer_removed)" in roster
    assert "13 B to the console" in roster
    assert "left (engineer_left)" in roster and "in it at the end (customer_ended)" in roster
    assert "rights now view at" in roster
    assert "engineer_removed  bob [console-2]" in text  # the timeline names whose event


async def test_the_tui_session_view_of_one_engineer_has_no_roster(running: Setup) -> None:
    from broker.admin_api import event_object
    from console.screens.audit import session_timeline

    setup = running
    await setup.start()
    await setup.receive(CONSOLE, encode("end", reason="engineer_left"))
    events = [event_object(e, with_receipt=True)
              for e in await setup.broker.audit.session_events("s1")]
    text = session_timeline("s1", events).plain
    assert "engineers in this session" not in text and "[console" not in text


async def test_audit_show_json_has_each_engineer(running: Setup, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from tests.broker.test_audit_review import await_cli

    await shared_session(running)
    await running.broker.audit.close()  # the CLI opens the log itself
    code, out, _ = await_cli(capsys, "audit", "show", "s1", "--json",
                             "--data-dir", str(tmp_path / "var"))
    assert code == 0
    report = json.loads(out)
    assert [(p["seat"], p["engineer"], p["outcome"]) for p in report["participants"]] == [
        ("console", "alice", "ended"), ("console-2", "bob", "removed"),
        ("console-3", "carol", "left")]
    assert all(p["consents"][0]["signature_valid"] for p in report["participants"])
    code, out, _ = await_cli(capsys, "audit", "show", "s1", "--data-dir", str(tmp_path / "var"))
    assert code == 0 and "3 in this shared session" in out


async def test_a_second_engineer_refused_does_not_end_the_session_in_the_review(
        running: Setup) -> None:
    setup = running
    setup.broker.sessions["s1"] = setup.driver
    await setup.start()
    await invite(setup)
    bob = engineer("bob")
    await setup.driver.add_seat(MemorySocket(), bob, ("view",))  # type: ignore[arg-type]
    request = setup.agent_link.last("join_request")  # type: ignore[attr-defined]
    agent_side = await setup.driver.attach(MemorySocket(), request["token"])  # type: ignore[arg-type]
    assert agent_side is not None
    receipt = Receipt.make(
        session="s1", device_id="dev-1", engineer="bob", key_fingerprint=bob.fingerprint,
        asked=("view",), granted=(), decision="denied",
        now=dt.datetime(2025, 3, 1, 13, 0, 9, tzinfo=dt.UTC))
    data, signature = sign_receipt(receipt, setup.device)
    await setup.receive(agent_side, encode("consent", receipt=b64encode(data),
                                           signature=b64encode(signature)))
    report = await load_session(setup.broker.audit, "s1")
    assert report["outcome"] == "active" and report["ended"] is None  # alice goes on
    alice, bob_seat = report["participants"]
    assert (bob_seat["outcome"], bob_seat["joined"]) == ("denied", None)
    assert bob_seat["consents"][0]["signature_valid"] is True
    assert alice["outcome"] == "joined" and alice["left"] is None
    assert "consent denied at" in format_report(report)
    setup.driver.stop()
