"""The broker's side of a request for control, with a real audit store and
fake sockets: what is recorded, in which order, who hears what, and what a
misbehaving agent's answer gets."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import nacl.signing
import pytest

from broker.audit.store import AuditLog
from broker.config import BrokerConfig
from broker.errors import AuditWriteError
from broker.registry import Engineer, Registry
from broker.server import Broker
from broker.session import AgentLink, Session
from broker.wire.errors import ProtocolError
from broker.wire.machine.protocol import Phase
from broker.wire.messages import b64encode, decode, validate
from broker.wire.receipt import Receipt, sign_receipt

DEVICE = "dev-1"


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send(self, frame: str) -> None:
        self.sent.append(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        pass

    def types(self) -> list[str]:
        return [json.loads(frame)["type"] for frame in self.sent]


class Setup:
    def __init__(self, broker: Broker, session: Session, device: nacl.signing.SigningKey,
                 console: FakeSocket, agent: FakeSocket) -> None:
        self.broker, self.session, self.device = broker, session, device
        self.console, self.agent = console, agent

    def consent(self, decision: str = "granted", *, asked: tuple[str, ...] = ("view", "control"),
                granted: tuple[str, ...] | None = None, engineer: str | None = None,
                second: int = 0) -> Any:
        if granted is None:
            granted = asked if decision == "granted" else ()
        receipt = Receipt.make(
            session=self.session.id, device_id=DEVICE,
            engineer=engineer or self.session.engineer.name,
            key_fingerprint=self.session.engineer.fingerprint, asked=asked, granted=granted,
            decision=decision, now=dt.datetime(2025, 3, 1, 12, 0, second, tzinfo=dt.UTC),
        )
        data, signature = sign_receipt(receipt, self.device)
        return validate("consent", {"receipt": b64encode(data),
                                    "signature": b64encode(signature)})

    async def event_types(self) -> list[str]:
        return [e.type for e in await self.broker.audit.events()]


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    audit = await AuditLog.open(tmp_path / "var")
    broker = Broker(BrokerConfig(data_dir=tmp_path / "var"), audit,
                    Registry(tmp_path / "var" / "registry.db"))
    device = nacl.signing.SigningKey.generate()
    console, agent = FakeSocket(), FakeSocket()
    key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = Engineer("alice", "Alice", "engineer",
                        key.export_public_key("openssh").decode().strip(),
                        "2025-01-01T00:00:00Z")
    link = AgentLink(conn_id="c1", ws=agent,  # type: ignore[arg-type]
                     device_id=DEVICE, device_key=bytes(device.verify_key), alias="Front Desk",
                     ip="192.0.2.1")
    session = Session(id="s1", token="t", agent=link, console=console,  # type: ignore[arg-type]
                      engineer=engineer, wants=("view",), agent_ws=agent,  # type: ignore[arg-type]
                      phase=Phase.ACTIVE, granted=("view",))
    yield Setup(broker, session, device, console, agent)
    await audit.close()


async def test_a_request_is_recorded_then_forwarded_once(setup: Setup) -> None:
    await setup.broker.consents.request_control(setup.session)
    assert setup.agent.types() == ["control_request"]
    assert await setup.event_types() == ["control_requested"]
    # Already with the customer: answered "unchanged", nobody is asked twice.
    await setup.broker.consents.request_control(setup.session)
    assert setup.agent.types() == ["control_request"]
    unchanged = decode(setup.console.sent[-1])
    assert (unchanged.type, unchanged["decision"], unchanged["granted"]) == (
        "control_result", "unchanged", ["view"])
    assert await setup.event_types() == ["control_requested"]


async def test_a_grant_is_recorded_before_anyone_hears_of_it(setup: Setup) -> None:
    await setup.broker.consents.request_control(setup.session)
    await setup.broker.consents.record_upgrade(setup.session, setup.consent())
    assert await setup.event_types() == ["control_requested", "consent_granted",
                                         "rights_changed"]
    consent = (await setup.broker.audit.events(type="consent_granted"))[0]
    assert consent.body["upgrade"] is True
    assert consent.personal is not None and "receipt" in consent.personal
    assert setup.session.granted == ("view", "control")
    for socket in (setup.console, setup.agent):
        result = decode(socket.sent[-1])
        assert (result.type, result["decision"], result["granted"]) == (
            "control_result", "granted", ["view", "control"])
    # Control is in force now: a new request has nothing to ask.
    await setup.broker.consents.request_control(setup.session)
    assert decode(setup.console.sent[-1])["decision"] == "unchanged"


@pytest.mark.parametrize("decision", ["denied", "timeout"])
async def test_a_refusal_leaves_view_only(setup: Setup, decision: str) -> None:
    await setup.broker.consents.request_control(setup.session)
    await setup.broker.consents.record_upgrade(setup.session, setup.consent(decision))
    assert await setup.event_types() == ["control_requested", f"consent_{decision}"]
    assert setup.session.granted == ("view",)
    assert decode(setup.console.sent[-1])["decision"] == decision
    # The engineer may ask again.
    await setup.broker.consents.request_control(setup.session)
    assert setup.agent.types()[-1] == "control_request"


async def test_an_answer_nobody_asked_for_is_refused(setup: Setup) -> None:
    with pytest.raises(ProtocolError) as info:
        await setup.broker.consents.record_upgrade(setup.session, setup.consent())
    assert info.value.code == "unexpected_message"
    assert setup.session.granted == ("view",)


@pytest.mark.parametrize(
    "change",
    [
        {"asked": ("view",)},  # not a request for control
        {"asked": ("control",)},
        {"decision": "granted", "granted": ("view",)},  # "granted" without control
        {"engineer": "mallory"},  # someone else's receipt
    ],
)
async def test_receipts_that_do_not_answer_the_request_are_refused(
    setup: Setup, change: dict[str, Any]
) -> None:
    await setup.broker.consents.request_control(setup.session)
    with pytest.raises(ProtocolError) as info:
        await setup.broker.consents.record_upgrade(setup.session, setup.consent(**change))
    assert info.value.code == "bad_receipt"
    assert setup.session.granted == ("view",)
    assert "control_result" not in setup.console.types()


async def test_a_receipt_signed_by_another_key_is_refused(setup: Setup) -> None:
    await setup.broker.consents.request_control(setup.session)
    setup.device = nacl.signing.SigningKey.generate()
    with pytest.raises(ProtocolError) as info:
        await setup.broker.consents.record_upgrade(setup.session, setup.consent())
    assert info.value.code == "bad_receipt"


async def test_an_old_receipt_is_not_a_new_answer(setup: Setup) -> None:
    await setup.broker.consents.request_control(setup.session)
    answer = setup.consent("denied")
    await setup.broker.consents.record_upgrade(setup.session, answer)
    await setup.broker.consents.request_control(setup.session)
    with pytest.raises(ProtocolError) as info:
        await setup.broker.consents.record_upgrade(setup.session, answer)
    assert info.value.code == "bad_receipt"
    await setup.broker.consents.record_upgrade(setup.session, setup.consent(second=1))
    assert setup.session.granted == ("view", "control")


async def test_no_control_without_the_record(setup: Setup) -> None:
    await setup.broker.consents.request_control(setup.session)
    audit = setup.broker.audit
    original = audit.append

    async def failing(type: str, **kwargs: Any) -> int:
        if type.startswith("consent_"):
            raise AuditWriteError("audit log could not be written: disk full")
        return await original(type, **kwargs)

    audit.append = failing  # type: ignore[method-assign]
    with pytest.raises(AuditWriteError):
        await setup.broker.consents.record_upgrade(setup.session, setup.consent())
    assert setup.session.granted == ("view",)
    assert "control_result" not in setup.console.types()
    assert "control_result" not in setup.agent.types()


async def test_the_answer_is_sealed_back_to_the_agent(setup: Setup, tmp_path: Path) -> None:
    from broker.audit.checkpoint_record import parse_checkpoint
    from broker.audit.checkpoints import Checkpointer

    checkpointer = Checkpointer(setup.broker.audit, tmp_path / "var", poll=0.01)
    await checkpointer.start()
    setup.broker.consents.checkpoints = checkpointer
    try:
        await setup.broker.consents.request_control(setup.session)
        await setup.broker.consents.record_upgrade(setup.session, setup.consent())
        # Sent beside the session (the relay never waits for it).
        await asyncio.gather(*setup.broker.consents._sealing)
    finally:
        await checkpointer.stop()
    sealed = [decode(f) for f in setup.agent.sent if json.loads(f)["type"] == "consent_sealed"]
    (msg,) = sealed
    consent = (await setup.broker.audit.events(type="consent_granted"))[0]
    assert msg["seq"] == consent.seq
    assert parse_checkpoint(msg["checkpoint"]).seq >= consent.seq
