"""Several engineers, driven on the broker's real audit log and nameplate book
(in-memory sockets): the customer's invitation is a code bound to the running
session, a second console joins it as a seat of the same session id, the
limit refuses without asking the customer, one engineer removed leaves the
other relaying, and the customer's end ends it for all."""

from __future__ import annotations

import datetime as dt
import time

import asyncssh
import nacl.signing
import pytest

from broker.registry import Engineer
from broker.server import _INVITE, Broker
from broker.session import AgentLink
from broker.wire.errors import ProtocolError
from broker.wire.limits import MAX_ENGINEERS_PER_SESSION
from broker.wire.machine.session import AGENT_SESSION, CONSOLE
from broker.wire.messages import b64encode, decode, encode
from broker.wire.receipt import Receipt, sign_receipt
from tests.broker.test_session_driver import MemorySocket, Setup
from tests.broker.test_session_driver import parts as parts  # the fixture


@pytest.fixture
def running(parts: tuple[Broker, Engineer, AgentLink]) -> Setup:
    broker, first, link = parts
    return Setup(broker, nacl.signing.SigningKey.generate(), first, link)


def engineer(name: str) -> Engineer:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return Engineer(name, name.title(), "engineer",
                    key.export_public_key("openssh").decode().strip(), "2025-01-01T00:00:00Z")


def consent_for(setup: Setup, who: Engineer, second: int) -> str:
    receipt = Receipt.make(
        session="s1", device_id="dev-1", engineer=who.name, key_fingerprint=who.fingerprint,
        asked=("view",), granted=("view",), decision="granted",
        now=dt.datetime(2025, 3, 1, 13, 0, second, tzinfo=dt.UTC))
    data, signature = sign_receipt(receipt, setup.device)
    return encode("consent", receipt=b64encode(data), signature=b64encode(signature))


async def invite(setup: Setup) -> str:
    """The customer presses Ctrl-] i: the nameplate the broker answers with."""
    await setup.receive(AGENT_SESSION, encode("invite"))
    return str(setup.agent.last("invitation")["nameplate"])


async def test_a_second_engineer_joins_the_same_session_by_invitation(running: Setup) -> None:
    setup = running
    setup.broker.sessions["s1"] = setup.driver
    await setup.start()
    nameplate = await invite(setup)
    assert setup.agent.last("invitation")["expires_in"] == 600
    # The code names this session in the book, and is single use.
    assert setup.broker.book.claim(nameplate, time.monotonic()) == _INVITE + "s1"
    assert setup.broker.book.claim(nameplate, time.monotonic()) is None

    bob, bob_console, bob_agent = engineer("bob"), MemorySocket(), MemorySocket()
    console = await setup.driver.add_seat(bob_console, bob, ("view",))  # type: ignore[arg-type]
    assert console == "console-2"
    request = setup.agent_link.last("join_request")  # type: ignore[attr-defined]
    assert request["session"] == "s1" and request["engineer_login"] == "bob"
    agent_side = await setup.driver.attach(bob_agent, request["token"])  # type: ignore[arg-type]
    assert agent_side == "agent_session-2"
    await setup.receive(agent_side, consent_for(setup, bob, 1))
    assert bob_console.types()[-2:] == ["consent_result", "roster"]
    assert [s["login"] for s in setup.console.last("roster")["seats"]] == ["alice", "bob"]

    # Each seat relays on its own pair (the slow path here: memory sockets).
    await setup.receive(agent_side, b"bob's output")
    await setup.receive(AGENT_SESSION, b"alice's output")
    assert setup.machine.seat_of(console).traffic.to_console == len(b"bob's output")
    for socket, output in ((bob_console, b"bob's output"), (setup.console, b"alice's output")):
        # MemorySocket keeps what the driver sent; relay bytes too, here.
        frames: list[object] = list(socket.sent)
        assert [f for f in frames if isinstance(f, bytes)] == [output]
        socket.sent = [f for f in frames if isinstance(f, str)]  # the rest is control

    # The customer removes bob; alice goes on.
    await setup.receive(agent_side, encode("remove"))
    assert bob_console.last("ended")["reason"] == "engineer_removed"
    assert bob_console.closed is not None and bob_agent.closed is not None
    assert setup.machine.ended is None and setup.console.closed is None
    assert [s["login"] for s in setup.console.last("roster")["seats"]] == ["alice"]

    await setup.receive(AGENT_SESSION, encode("end", reason="customer_ended"))
    assert setup.console.last("ended")["reason"] == "customer_ended"
    assert "s1" not in setup.broker.sessions  # forgotten once over
    events = await setup.broker.audit.events()
    assert [e.type for e in events] == [
        "join_requested", "consent_granted", "session_started", "invite_issued",
        "join_requested", "consent_granted", "engineer_joined", "engineer_removed",
        "session_ended"]
    assert {e.session for e in events} == {"s1"}
    assert [e.actor for e in events if e.type == "consent_granted"] == ["alice", "bob"]
    ended = events[-1].body
    assert [p["engineer"] for p in ended["participants"]] == ["alice", "bob"]
    assert ended["participants"][1]["left"] == "engineer_removed"


async def test_a_join_beyond_the_limit_is_refused_without_asking_the_customer(
        running: Setup) -> None:
    setup = running
    await setup.start()
    for n in range(2, MAX_ENGINEERS_PER_SESSION + 1):
        await setup.driver.add_seat(MemorySocket(), engineer(f"eng{n}"),  # type: ignore[arg-type]
                                    ("view",))
    asked = setup.agent_link.types().count("join_request")  # type: ignore[attr-defined]
    late = MemorySocket()
    assert await setup.driver.add_seat(late, engineer("late"), ("view",)) is None  # type: ignore[arg-type]
    assert (late.last("error")["code"], late.closed) == ("session_full", (1008, "session_full"))
    assert "ask the customer" in decode(late.sent[-1])["message"].lower()
    assert setup.agent_link.types().count("join_request") == asked  # type: ignore[attr-defined]
    assert (await setup.broker.audit.events())[-1].type == "join_refused"
    setup.driver.stop()


async def test_an_invitation_to_an_ended_session_is_an_unknown_code(running: Setup) -> None:
    setup = running
    await setup.start()
    await setup.receive(CONSOLE, encode("end", reason="engineer_left"))
    with pytest.raises(ProtocolError) as info:
        await setup.driver.add_seat(MemorySocket(), engineer("bob"), ("view",))  # type: ignore[arg-type]
    assert info.value.code == "unknown_code"
