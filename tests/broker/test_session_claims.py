"""What the agent tells the broker about a session's end and its input:
a failed pairing ends with the failure it was (a key mismatch is no wrong
code), liveness questions are answered only while the session is live, and
the dropped-input total is a bounded claim recorded in `session_ended`.
A real audit store, fake sockets (the fixture of test_control_upgrade)."""

from __future__ import annotations

import pytest

from broker.wire.machine.protocol import Conn, Phase
from broker.wire.messages import decode, validate
from tests.broker import test_control_upgrade
from tests.broker.test_control_upgrade import Setup

setup = test_control_upgrade.setup  # the same fixture: a broker, a session, fake sockets


@pytest.mark.parametrize("reason", ["key_mismatch", "wrong_code"])
async def test_a_failed_pairing_ends_with_its_own_reason(setup: Setup, reason: str) -> None:
    setup.session.phase = Phase.PAIRING
    await setup.broker.on_control(setup.session, Conn.AGENT_SESSION,
                                  validate("pairing_failed", {"reason": reason}))
    for socket in (setup.console, setup.agent):
        ended = decode(socket.sent[-1])
        assert (ended.type, ended["reason"]) == ("ended", reason)
    events = await setup.broker.audit.events()
    assert [e.type for e in events] == ["pairing_failed"]  # no join_abandoned beside it
    assert events[0].body == {"reason": reason}
    if reason == "key_mismatch":
        message = decode(setup.console.sent[-1])["message"]
        assert "key" in message and "code did not match" not in message


async def test_confirm_live_is_answered_while_the_session_is_live(setup: Setup) -> None:
    await setup.broker.on_control(setup.session, Conn.AGENT_SESSION,
                                  validate("confirm_live", {"id": 7}))
    live = decode(setup.agent.sent[-1])
    assert (live.type, live["id"]) == ("live", 7)
    assert setup.console.sent == []  # the engineer hears nothing of it
    assert await setup.event_types() == []  # nor does the log: no event per question


async def test_dropped_input_is_a_bounded_claim_in_session_ended(setup: Setup) -> None:
    setup.session.bytes_to_agent = 1000

    async def claim(total: int) -> None:
        await setup.broker.on_control(setup.session, Conn.AGENT_SESSION,
                                      validate("input_dropped", {"bytes": total}))

    await claim(300)
    await claim(100)  # a total never shrinks
    assert setup.session.input_dropped == 300
    await claim(10**9)  # more than was ever relayed to the agent: capped
    assert setup.session.input_dropped == 1000
    await setup.broker.end(setup.session, "customer_ended")
    ended = (await setup.broker.audit.events(type="session_ended"))[0]
    assert ended.body["input_dropped_bytes"] == 1000
    assert ended.body["reason"] == "customer_ended"
