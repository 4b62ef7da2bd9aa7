"""The session machine across a broken link: a seat is held, resumed by a
new connection only when the peer accepts its proof, its byte counts kept
honest, and ended as agent_lost / console_lost when nobody comes back."""

from __future__ import annotations

import base64

import pytest

from broker.wire.errors import ProtocolError
from broker.wire.limits import RESUME_STEP_TIMEOUT
from broker.wire.machine.actions import OpenRelay, Refuse
from broker.wire.machine.protocol import Phase
from broker.wire.machine.session import AGENT_SESSION, CONSOLE
from broker.wire.messages import Message, decode
from tests.wire.test_session_machine import Setup, frame, kinds, records, sent

NONCE = base64.b64encode(b"n" * 32).decode()
PROOF = base64.b64encode(b"p" * 32).decode()


def resume_msg(received: int, attempt: int = 1, token: str | None = None) -> Message:
    fields: dict[str, object] = {"session": "s1", "attempt": attempt, "nonce": NONCE,
                                 "received": received}
    if token is not None:
        fields["token"] = token
    return decode(frame("resume", **fields))


@pytest.fixture
def active() -> Setup:
    setup = Setup()
    setup.to_active()
    # Some traffic each way before the drop: 100 bytes to the agent, 300 back.
    setup.receive(CONSOLE, b"k" * 100, now=2.5)
    setup.receive(AGENT_SESSION, b"o" * 300, now=2.5)
    return setup


def exchange(setup: Setup, resumer: str, verifier: str, *, resumer_has: int,
             verifier_has: int, now: float) -> list:
    """resume -> challenge -> proof, as the broker routes them; returns the
    batch that forwarded the proof."""
    asked = setup.run(setup.machine.resume(resumer, resume_msg(resumer_has), now))
    assert kinds(asked) == [("send", verifier, "resume")]
    assert sent(asked, verifier, "resume").fields["received"] == resumer_has
    assert "token" not in sent(asked, verifier, "resume").fields  # never passed on
    challenged = setup.receive(verifier, frame("resume_challenge", nonce=NONCE,
                                               received=verifier_has, proof=PROOF), now=now)
    assert kinds(challenged) == [("send", resumer, "resume_challenge")]
    proved = setup.receive(resumer, frame("resume_proof", proof=PROOF), now=now)
    assert kinds(proved) == [("send", verifier, "resume_proof")]
    return proved


def test_a_console_back_within_the_window_resumes_once_the_agent_accepts(
        active: Setup) -> None:
    active.run(active.machine.lost(CONSOLE, 3.0))
    assert active.machine.held_console("alice") == CONSOLE
    assert active.machine.held_console("mallory") is None
    # The console got 250 of the agent's 300 bytes; the agent all 100 of its.
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=250, verifier_has=100, now=5.0)
    assert active.machine.phase(CONSOLE) is Phase.RESUMING
    accepted = active.receive(AGENT_SESSION, frame("resume_accepted"), now=6.5)
    assert kinds(accepted) == [("record", "session_resumed"), ("open_relay",),
                               ("send", CONSOLE, "resumed"), ("send", AGENT_SESSION, "resumed")]
    (event,) = records(accepted)
    assert event.body == {"side": "console", "gap_s": 3.5} and not event.quiet
    assert sent(accepted, CONSOLE, "resumed").fields["gap_ms"] == 3500
    relay = next(a for a in accepted if isinstance(a, OpenRelay))
    assert (relay.agent, relay.console) == (AGENT_SESSION, CONSOLE)
    assert active.machine.phase(CONSOLE) is active.machine.phase(AGENT_SESSION) is Phase.ACTIVE
    assert active.machine.deadline() != 3.0 + active.machine.timeouts.resume_window
    # The agent replays its last 50 bytes, which the broker had counted: not again.
    traffic = active.machine.seat.traffic
    active.receive(AGENT_SESSION, b"o" * 50 + b"new", now=7.0)
    assert (traffic.to_agent, traffic.to_console) == (100, 303)


def test_a_forged_resume_is_refused_and_the_seat_waits_for_the_real_end(
        active: Setup) -> None:
    active.run(active.machine.lost(CONSOLE, 3.0))
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=300, verifier_has=100, now=4.0)
    refused = active.receive(AGENT_SESSION, frame("resume_refused"), now=4.1)
    assert kinds(refused) == [("record", "resume_refused"), ("refuse", CONSOLE, "resume_refused")]
    assert records(refused)[0].body == {"side": "console", "reason": "resume_refused"}
    assert active.machine.phase(CONSOLE) is Phase.HELD
    # Its socket closing afterwards changes nothing; the real console resumes.
    assert active.machine.lost(CONSOLE, 4.2) == []
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=300, verifier_has=100, now=8.0)
    accepted = active.receive(AGENT_SESSION, frame("resume_accepted"), now=8.0)
    assert records(accepted)[0].body["gap_s"] == 5.0  # from the first break


@pytest.mark.parametrize("msg", [
    frame("resume_accepted"),
    frame("resume_challenge", nonce=NONCE, received=0, proof=PROOF),
    frame("resume_proof", proof=PROOF),  # before any challenge: no proof either
])
def test_the_one_resuming_cannot_accept_challenge_or_prove_unasked(msg: str) -> None:
    setup = Setup()
    setup.to_active()
    setup.run(setup.machine.lost(CONSOLE, 3.0))
    setup.run(setup.machine.resume(CONSOLE, resume_msg(0), 4.0))
    actions = setup.receive(CONSOLE, msg, now=4.0)
    assert ("send", CONSOLE, "error") in kinds(actions)  # a protocol error: that seat goes
    assert setup.machine.ended == "protocol_error"


def test_an_agent_side_resumes_with_its_token_only(active: Setup) -> None:
    active.run(active.machine.lost(AGENT_SESSION, 3.0))
    assert active.machine.held_agent_side("tok") == AGENT_SESSION
    assert active.machine.held_agent_side("tok2") is None
    assert active.machine.held_agent_side("") is None
    exchange(active, AGENT_SESSION, CONSOLE, resumer_has=300, verifier_has=100, now=4.0)
    accepted = active.receive(CONSOLE, frame("resume_accepted"), now=4.0)
    assert records(accepted)[0].body["side"] == "agent"


def test_with_both_ends_down_the_first_back_waits_and_challenges_the_second(
        active: Setup) -> None:
    active.run(active.machine.lost(CONSOLE, 3.0))
    second_drop = active.run(active.machine.lost(AGENT_SESSION, 3.5))
    assert kinds(second_drop) == [("stop_relay",)]  # one interruption, recorded once
    parked = active.run(active.machine.resume(AGENT_SESSION, resume_msg(300, token="tok"), 4.0))
    assert kinds(parked) == [("send", AGENT_SESSION, "interrupted")]
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=300, verifier_has=100, now=6.0)
    accepted = active.receive(AGENT_SESSION, frame("resume_accepted"), now=6.0)
    assert ("send", AGENT_SESSION, "resumed") in kinds(accepted)
    assert active.machine.phase(AGENT_SESSION) is Phase.ACTIVE


def test_a_resume_that_stalls_is_dropped_and_the_seat_still_waits(active: Setup) -> None:
    active.run(active.machine.lost(CONSOLE, 3.0))
    active.run(active.machine.resume(CONSOLE, resume_msg(0), 4.0))
    stalled = active.run(active.machine.tick(4.0 + RESUME_STEP_TIMEOUT))
    assert kinds(stalled) == [("record", "resume_refused"), ("refuse", CONSOLE, "resume_timeout")]
    assert active.machine.phase(CONSOLE) is Phase.HELD and active.machine.ended is None


def test_the_customer_ends_from_a_resuming_link(active: Setup) -> None:
    active.run(active.machine.lost(AGENT_SESSION, 3.0))
    active.run(active.machine.resume(AGENT_SESSION, resume_msg(0, token="tok"), 4.0))
    actions = active.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=4.0)
    assert active.machine.ended == "customer_ended"
    assert ("send", CONSOLE, "ended") in kinds(actions)
    assert ("send", AGENT_SESSION, "ended") in kinds(actions)


def test_a_connection_that_is_not_held_cannot_be_resumed(active: Setup) -> None:
    with pytest.raises(ProtocolError):
        active.machine.resume(CONSOLE, resume_msg(0), 3.0)
    setup = Setup()
    setup.to_pairing()  # a drop before consent ends the join, as always
    setup.run(setup.machine.lost(CONSOLE, 1.0))
    assert setup.machine.ended is not None


def test_acks_reach_the_peer_only_while_it_is_there(active: Setup) -> None:
    ack = active.receive(CONSOLE, frame("ack", offset=300), now=3.0)
    assert kinds(ack) == [("send", AGENT_SESSION, "ack")]
    active.run(active.machine.lost(AGENT_SESSION, 3.0))
    assert active.receive(CONSOLE, frame("ack", offset=300), now=3.1) == []


def test_a_refusal_goes_to_the_one_resuming_not_to_the_peer(active: Setup) -> None:
    active.run(active.machine.lost(CONSOLE, 3.0))
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=0, verifier_has=0, now=4.0)
    refused = active.receive(AGENT_SESSION, frame("resume_refused"), now=4.0)
    (refusal,) = [a for a in refused if isinstance(a, Refuse)]
    assert refusal.to == CONSOLE and "prove" in refusal.message


def test_a_resume_may_take_an_active_seat_whose_link_died_silently(active: Setup) -> None:
    # The end noticed the dead link (its keepalive) before the broker did:
    # the driver holds the connection first, then resumes it.
    assert active.machine.held_console("alice") == CONSOLE
    assert active.machine.held_agent_side("tok") == AGENT_SESSION
    active.run(active.machine.lost(CONSOLE, 3.0))
    exchange(active, CONSOLE, AGENT_SESSION, resumer_has=300, verifier_has=100, now=3.0)


def test_nothing_is_resumable_before_consent_or_after_the_end() -> None:
    setup = Setup()
    setup.to_pairing()
    assert setup.machine.held_console("alice") is None
    assert setup.machine.held_agent_side("tok") is None
