"""The session driver performs the machine's actions: with a real audit store
and in-memory sockets, what is recorded before what is sent, what a failed
write stops, the seal sent back to the agent, and a lost socket."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncssh
import nacl.signing
import pytest
from websockets.exceptions import ConnectionClosedOK
from websockets.frames import Close as CloseFrame

from broker.audit.interface import AuditStore
from broker.audit.store import AuditLog
from broker.config import BrokerConfig, Timeouts
from broker.errors import AuditWriteError
from broker.registry import Engineer, Registry
from broker.server import Broker
from broker.session import AgentLink, SessionDriver
from broker.wire.machine.session import (
    AGENT_SESSION,
    CONSOLE,
    UPGRADE,
    AgentFacts,
    SessionMachine,
)
from broker.wire.messages import b64encode, decode, encode
from broker.wire.receipt import Receipt, sign_receipt

DEVICE = "dev-1"


class MemorySocket:
    """The two calls the driver makes on a connection, kept in memory."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.closed: tuple[int, str] | None = None

    async def send(self, frame: str) -> None:
        if self.closed is not None:
            raise ConnectionClosedOK(CloseFrame(1000, ""), None)
        self.sent.append(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)

    def types(self) -> list[str]:
        return [json.loads(frame)["type"] for frame in self.sent]

    def last(self, msg_type: str) -> Any:
        return [decode(f) for f in self.sent if json.loads(f)["type"] == msg_type][-1]


class Setup:
    def __init__(self, broker: Broker, device: nacl.signing.SigningKey, engineer: Engineer,
                 link: AgentLink, timeouts: Timeouts | None = None) -> None:
        self.broker, self.device, self.engineer = broker, device, engineer
        self.agent_link = link.ws
        self.agent, self.console = MemorySocket(), MemorySocket()
        self.machine = SessionMachine(
            session_id="s1", token="tok", nameplate="4821",
            agent=AgentFacts(DEVICE, bytes(device.verify_key), "Front Desk"),
            engineer=engineer, wants=("view",), timeouts=timeouts or Timeouts(),
            now=time.monotonic())
        self.driver = SessionDriver(self.machine, broker, link, self.console)  # type: ignore[arg-type]
        self.second = 0

    async def start(self, *, active: bool = True) -> None:
        await self.driver.open()
        await self.driver.attach(self.agent, "tok")  # type: ignore[arg-type]
        if active:
            await self.receive(AGENT_SESSION, self.consent())

    async def receive(self, conn: str, frame: str | bytes) -> None:
        await self.driver.feed(lambda now: self.machine.receive(conn, frame, now))

    def consent(self, decision: str = "granted", *, asked: tuple[str, ...] = ("view",)) -> str:
        self.second += 1
        receipt = Receipt.make(
            session="s1", device_id=DEVICE, engineer=self.engineer.name,
            key_fingerprint=self.engineer.fingerprint, asked=asked,
            granted=asked if decision == "granted" else (), decision=decision,
            now=dt.datetime(2025, 3, 1, 12, 0, self.second, tzinfo=dt.UTC))
        data, signature = sign_receipt(receipt, self.device)
        return encode("consent", receipt=b64encode(data), signature=b64encode(signature))

    async def event_types(self) -> list[str]:
        return [e.type for e in await self.broker.audit.events()]


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[Broker, Engineer, AgentLink]]:
    audit = await AuditLog.open(tmp_path / "var")
    broker = Broker(BrokerConfig(data_dir=tmp_path / "var"), audit,
                    Registry(tmp_path / "var" / "registry.db"))
    key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = Engineer("alice", "Alice", "engineer",
                        key.export_public_key("openssh").decode().strip(),
                        "2025-01-01T00:00:00Z")
    link = AgentLink(conn_id="c1", ws=MemorySocket(),  # type: ignore[arg-type]
                     device_id=DEVICE, device_key=b"", alias="Front Desk", ip="192.0.2.1")
    broker.agents[link.conn_id] = link
    yield broker, engineer, link
    await audit.close()


@pytest.fixture
def setup(parts: tuple[Broker, Engineer, AgentLink]) -> Setup:
    broker, engineer, link = parts
    return Setup(broker, nacl.signing.SigningKey.generate(), engineer, link)


def fail_on(audit: AuditStore, prefix: str) -> None:
    original = audit.append

    async def failing(type: str, **kwargs: Any) -> int:
        if type.startswith(prefix):
            raise AuditWriteError("audit log could not be written: disk full")
        return await original(type, **kwargs)

    audit.append = failing  # type: ignore[method-assign]


async def test_the_join_is_recorded_the_agent_asked_and_given_a_fresh_code(setup: Setup) -> None:
    await setup.driver.open()
    assert await setup.event_types() == ["join_requested"]
    assert setup.agent_link.types() == ["join_request", "nameplate"]  # type: ignore[attr-defined]
    await setup.driver.attach(setup.agent, "tok")  # type: ignore[arg-type]
    assert decode(setup.console.sent[-1])["alias"] == "Front Desk"
    setup.driver.stop()


async def test_a_grant_is_recorded_before_either_end_hears(setup: Setup) -> None:
    await setup.start()
    assert await setup.event_types() == ["join_requested", "consent_granted", "session_started"]
    consent = (await setup.broker.audit.events(type="consent_granted"))[0]
    assert consent.personal is not None and "receipt" in consent.personal
    assert setup.console.types()[-1] == "consent_result"
    assert setup.agent.types() == ["relay_open"]  # no checkpointer here: no seal
    setup.driver.stop()


async def test_no_control_without_the_record(setup: Setup) -> None:
    await setup.start()
    await setup.receive(CONSOLE, encode("request_control"))
    fail_on(setup.broker.audit, "consent_")
    await setup.receive(AGENT_SESSION, setup.consent(asked=UPGRADE))
    assert setup.machine.seat.granted == ("view",)
    for socket in (setup.console, setup.agent):
        assert "control_result" not in socket.types()
        assert (socket.types()[-1], socket.last("ended")["reason"]) == (
            "ended", "audit_unavailable")
        assert socket.closed is not None
    ended = (await setup.broker.audit.events(type="session_ended"))[0]
    assert ended.body["reason"] == "audit_unavailable"


async def test_an_unrecorded_join_refuses_the_agent_link_too(setup: Setup) -> None:
    fail_on(setup.broker.audit, "join_requested")
    await setup.driver.open()
    link: MemorySocket = setup.agent_link  # type: ignore[assignment]
    assert link.types() == ["error"] and link.closed == (1008, "audit_unavailable")
    assert setup.console.last("ended")["reason"] == "audit_unavailable"
    assert await setup.event_types() == ["join_abandoned"]


async def test_the_answer_is_sealed_back_to_the_agent(setup: Setup, tmp_path: Path) -> None:
    from broker.audit.checkpoint_record import parse_checkpoint
    from broker.audit.checkpoints import Checkpointer

    checkpointer = Checkpointer(setup.broker.audit, tmp_path / "var", poll=0.01)
    await checkpointer.start()
    setup.broker.checkpoints = checkpointer
    try:
        await setup.start()
        await setup.driver.settle()  # sent beside the session: the relay never waits
    finally:
        await checkpointer.stop()
        setup.driver.stop()
    assert setup.agent.types() == ["relay_open", "consent_sealed"]
    consent = (await setup.broker.audit.events(type="consent_granted"))[0]
    sealed = setup.agent.last("consent_sealed")
    assert sealed["seq"] == consent.seq
    assert parse_checkpoint(sealed["checkpoint"]).seq >= consent.seq


async def test_a_refusal_is_sealed_before_the_agent_is_told_the_end(
        setup: Setup, tmp_path: Path) -> None:
    from broker.audit.checkpoints import Checkpointer

    checkpointer = Checkpointer(setup.broker.audit, tmp_path / "var", poll=0.01)
    await checkpointer.start()
    setup.broker.checkpoints = checkpointer
    try:
        await setup.start(active=False)
        await setup.receive(AGENT_SESSION, setup.consent("denied"))
    finally:
        await checkpointer.stop()
    assert setup.agent.types() == ["consent_sealed", "ended"]
    assert setup.console.types()[-2:] == ["consent_result", "ended"]
    assert await setup.event_types() == ["join_requested", "consent_denied"]


@pytest.mark.parametrize("reason", ["key_mismatch", "wrong_code"])
async def test_a_failed_pairing_ends_with_its_own_reason(setup: Setup, reason: str) -> None:
    await setup.start(active=False)
    await setup.receive(AGENT_SESSION, encode("pairing_failed", reason=reason))
    for socket in (setup.console, setup.agent):
        assert setup.machine.ended == socket.last("ended")["reason"] == reason
    assert await setup.event_types() == ["join_requested", "pairing_failed"]


async def test_dropped_input_is_a_bounded_claim_in_session_ended(setup: Setup) -> None:
    await setup.start()
    await setup.receive(CONSOLE, b"x" * 1000)  # plain sockets: relayed by the machine
    await setup.receive(AGENT_SESSION, encode("input_dropped", bytes=10**9))
    await setup.receive(AGENT_SESSION, encode("end", reason="customer_ended"))
    ended = (await setup.broker.audit.events(type="session_ended"))[0]
    assert ended.body["input_dropped_bytes"] == 1000 == ended.body["bytes_to_agent"]
    assert ended.body["reason"] == "customer_ended"


async def test_a_send_to_a_gone_console_ends_the_session(setup: Setup) -> None:
    await setup.start(active=False)
    setup.console.closed = (1006, "")  # its connection dropped
    await setup.receive(AGENT_SESSION, encode("pake", body="AA=="))
    assert setup.machine.ended == "console_lost"
    assert setup.agent.last("ended")["reason"] == "console_lost"
    assert (await setup.event_types())[-1] == "join_abandoned"


async def test_a_closing_record_that_cannot_be_written_still_tells_both(setup: Setup) -> None:
    await setup.start()
    fail_on(setup.broker.audit, "session_ended")
    await setup.receive(CONSOLE, encode("end", reason="engineer_left"))
    assert setup.agent.last("ended")["reason"] == "engineer_left"
    assert setup.driver.finished.is_set()


async def test_the_watchdog_ends_a_pairing_that_never_finishes(
        parts: tuple[Broker, Engineer, AgentLink]) -> None:
    broker, engineer, link = parts
    setup = Setup(broker, nacl.signing.SigningKey.generate(), engineer, link,
                  timeouts=replace(Timeouts(), handshake=0.05))
    await setup.start(active=False)
    await asyncio.wait_for(setup.driver.finished.wait(), 5)
    assert setup.machine.ended == "timeout"
    abandoned = (await broker.audit.events(type="join_abandoned"))[0]
    assert abandoned.body == {"reason": "timeout"}  # the join is closed in the log
