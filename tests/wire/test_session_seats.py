"""Several engineers in one session, driven through the broker's machine with
no sockets: an invitation, a second seat that pairs and is consented like
the first, the limit, one engineer removed or leaving while the other goes
on, the customer ending it for all — and one closing event per seat."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from broker.wire.errors import LocalProtocolError, ProtocolError
from broker.wire.limits import MAX_ENGINEERS_PER_SESSION
from broker.wire.machine.actions import Action, Ended, IssueInvite, OpenRelay, Refuse
from broker.wire.machine.protocol import Phase
from broker.wire.machine.session import AGENT, AGENT_SESSION, CONSOLE, UPGRADE
from broker.wire.messages import b64encode, decode, encode
from broker.wire.receipt import Receipt, sign_receipt
from tests.wire.test_session_machine import (
    CLOSING,
    Setup,
    assert_ended,
    frame,
    kinds,
    perform_as_the_driver,
    records,
    sent,
)

B_CONSOLE, B_AGENT = "console-2", "agent_session-2"
# A seat's own closing events, besides the session's.
SEAT_CLOSING = CLOSING | {"engineer_left", "engineer_removed"}


@dataclass(frozen=True)
class Bob:
    name: str = "bob"
    display: str = "Bob"
    role: str = "engineer"
    public_key: str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBob"
    fingerprint: str = "SHA256:bobkey"


class Two(Setup):
    """A running session (alice, with control) and a second engineer, bob."""

    def __init__(self) -> None:
        super().__init__(wants=("view", "control"))
        self.bob = Bob()
        self.seconds_b = itertools.count()

    def consent_for(self, console: str, decision: str = "granted", *,
                    asked: tuple[str, ...] | None = None) -> str:
        # Bob's, whether or not his seat still exists (an undone join).
        engineer = self.bob
        asked = asked if asked is not None else ("view",)
        receipt = Receipt.make(
            session="s1", device_id="dev-1", engineer=engineer.name,
            key_fingerprint=engineer.fingerprint, asked=asked,
            granted=asked if decision == "granted" else (), decision=decision,
            now=dt.datetime(2025, 3, 1, 13, 0, next(self.seconds_b), tzinfo=dt.UTC))
        data, signature = sign_receipt(receipt, self.device)
        return frame("consent", receipt=b64encode(data), signature=b64encode(signature))

    def join_bob(self, now: float = 3.0) -> tuple[str, list[Action]]:
        console, actions = self.machine.join(self.bob, ("view",), "tok-b", now)
        return console, self.run(actions)

    def bob_pairing(self) -> None:
        self.to_active()
        self.join_bob()
        self.run(self.machine.attach("tok-b", 3.5))

    def bob_active(self) -> None:
        self.bob_pairing()
        self.receive(B_AGENT, self.consent_for(B_CONSOLE), now=4.0)
        assert self.machine.phase(B_CONSOLE) is Phase.ACTIVE


@pytest.fixture
def two() -> Two:
    return Two()


def roster_of(actions: list[Action], conn: str) -> list[tuple[str, str, list[str]]]:
    fields = sent(actions, conn, "roster").fields
    return [(s["seat"], s["login"], s["rights"]) for s in fields["seats"]]


# -- the invitation -----------------------------------------------------------

def test_the_customer_asks_for_an_invitation_recorded_first(two: Two) -> None:
    two.to_active()
    actions = two.receive(AGENT_SESSION, frame("invite"))
    assert kinds(actions)[0] == ("record", "invite_issued")
    assert actions[1] == IssueInvite(AGENT_SESSION)
    assert not records(actions)[0].quiet  # no code without its record


def test_no_invitation_before_the_session_runs(two: Two) -> None:
    two.to_pairing()
    actions = two.receive(AGENT_SESSION, frame("invite"))
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "unexpected_message"


def test_an_engineer_cannot_invite(two: Two) -> None:
    two.to_active()
    actions = two.receive(CONSOLE, frame("invite"))
    assert sent(actions, CONSOLE, "error").fields["code"] == "unexpected_message"


# -- a second engineer joins the same session ----------------------------------

def test_a_second_engineer_is_asked_for_in_the_same_session(two: Two) -> None:
    two.to_active()
    console, actions = two.join_bob()
    assert console == B_CONSOLE
    assert kinds(actions) == [("record", "join_requested"), ("send", AGENT, "join_request")]
    joined = records(actions)[0]
    assert (joined.session, joined.actor, dict(joined.body)) == (
        "s1", "bob", {"wants": ["view"], "seat": B_CONSOLE})
    request = sent(actions, AGENT, "join_request").fields
    assert (request["session"], request["token"], request["engineer_login"]) == (
        "s1", "tok-b", "bob")  # the same session, a token of its own
    assert two.machine.phase(B_CONSOLE) is Phase.WAITING
    assert two.machine.agent_side_for("tok-b") == B_AGENT


def test_the_second_seat_pairs_and_is_consented_on_its_own_connections(two: Two) -> None:
    two.bob_pairing()
    assert two.machine.phase(B_AGENT) is Phase.PAIRING
    body = b64encode(b"opaque")
    assert kinds(two.receive(B_CONSOLE, frame("pake", body=body))) == [
        ("send", B_AGENT, "pake")]
    assert kinds(two.receive(B_AGENT, frame("sealed", body=body))) == [
        ("send", B_CONSOLE, "sealed")]
    # A receipt for alice does not answer bob's join (and the customer's
    # side breaking the protocol ends the session, as with one engineer).
    actions = two.receive(B_AGENT, two.consent(asked=("view", "control")))
    assert sent(actions, B_AGENT, "error").fields["code"] == "bad_receipt"
    assert two.machine.ended == "protocol_error"


def test_a_grant_starts_the_seat_and_everyone_hears_the_roster(two: Two) -> None:
    two.bob_pairing()
    actions = two.receive(B_AGENT, two.consent_for(B_CONSOLE), now=4.0)
    assert kinds(actions)[:6] == [
        ("record", "consent_granted"), ("record", "engineer_joined"), ("open_relay",),
        ("send", B_CONSOLE, "consent_result"), ("send", B_AGENT, "relay_open"),
        ("seal", B_AGENT, "background")]
    assert OpenRelay(B_AGENT, B_CONSOLE) in actions
    consent, joined = records(actions)
    assert (consent.session, consent.actor) == ("s1", "bob")
    assert consent.body["seat"] == B_CONSOLE and joined.body["seat"] == B_CONSOLE
    expected = [(CONSOLE, "alice", ["view", "control"]), (B_CONSOLE, "bob", ["view"])]
    for conn in (CONSOLE, AGENT_SESSION, B_CONSOLE, B_AGENT):
        assert roster_of(actions, conn) == expected
    assert sent(actions, B_AGENT, "roster").fields["you"] == B_CONSOLE
    assert sent(actions, AGENT_SESSION, "roster").fields["you"] == CONSOLE
    assert two.machine.active_since == 2.0  # the session's start is the first seat's


def test_output_and_keys_stay_within_each_seat(two: Two) -> None:
    two.bob_active()
    assert kinds(two.receive(B_AGENT, b"out")) == [("forward", B_CONSOLE)]
    assert kinds(two.receive(B_AGENT, b"put")) == [("forward", B_CONSOLE)]
    actions = two.receive(B_CONSOLE, b"keys", now=5.0)
    assert kinds(actions) == [("forward", B_AGENT)]
    two.receive(CONSOLE, b"alice", now=5.0)
    bob, alice = two.machine.seat_of(B_CONSOLE), two.machine.seat
    assert (bob.traffic.to_agent, bob.traffic.to_console) == (4, 6)
    assert (alice.traffic.to_agent, alice.traffic.to_console) == (5, 0)
    assert two.machine.traffic.to_agent == 9


def test_each_seat_has_its_own_rights_and_its_own_request_for_control(two: Two) -> None:
    two.bob_active()
    # Taking control from alice says nothing to bob's console but the roster.
    actions = two.receive(AGENT_SESSION, frame("rights", granted=["view"]))
    assert kinds(actions)[:2] == [("record", "rights_changed"), ("send", CONSOLE, "rights")]
    assert records(actions)[0].actor == "alice"
    assert roster_of(actions, B_CONSOLE) == [(CONSOLE, "alice", ["view"]),
                                             (B_CONSOLE, "bob", ["view"])]
    # Bob asks for control: his agent_session is asked, not alice's.
    actions = two.receive(B_CONSOLE, frame("request_control"))
    assert kinds(actions) == [("record", "control_requested"),
                              ("send", B_AGENT, "control_request")]
    actions = two.receive(B_AGENT, two.consent_for(B_CONSOLE, asked=UPGRADE))
    assert ("send", B_CONSOLE, "control_result") in kinds(actions)
    assert ("send", CONSOLE, "control_result") not in kinds(actions)
    assert two.machine.seat_of(B_CONSOLE).granted == UPGRADE
    assert two.machine.seat.granted == ("view",)


# -- the limit ------------------------------------------------------------------

def test_a_join_beyond_the_limit_is_refused_and_the_customer_is_not_asked(two: Two) -> None:
    two.to_active()
    for n in range(2, MAX_ENGINEERS_PER_SESSION + 1):
        two.machine.join(Bob(name=f"eng{n}"), ("view",), f"tok-{n}", 3.0)
    console, actions = two.machine.join(Bob(name="late"), ("view",), "tok-late", 3.0)
    refusal = actions[-1]
    assert isinstance(refusal, Refuse) and (refusal.to, refusal.code) == (console, "session_full")
    assert str(MAX_ENGINEERS_PER_SESSION) in refusal.message
    assert ("send", AGENT, "join_request") not in kinds(actions)  # nobody prompted
    assert [(r.event, r.quiet, r.actor) for r in records(actions)] == [
        ("join_refused", True, "late")]
    assert two.machine.agent_side_for("tok-late") is None
    assert two.machine.ended is None


def test_a_place_freed_by_a_departure_can_be_taken(two: Two) -> None:
    two.to_active()
    for n in range(2, MAX_ENGINEERS_PER_SESSION + 1):
        two.machine.join(Bob(name=f"eng{n}"), ("view",), f"tok-{n}", 3.0)
    two.run(two.machine.lost("console-2", 3.5))  # still waiting: it leaves
    _, actions = two.machine.join(Bob(name="next"), ("view",), "tok-next", 4.0)
    assert ("send", AGENT, "join_request") in kinds(actions)


def test_a_join_to_an_ended_session_is_an_unknown_code(two: Two) -> None:
    two.to_active()
    two.machine.shutdown(3.0)
    with pytest.raises(ProtocolError) as info:
        two.machine.join(Bob(), ("view",), "tok-b", 3.0)
    assert info.value.code == "unknown_code"


# -- one goes, the other stays -------------------------------------------------

def test_the_customer_removes_one_engineer_and_the_other_goes_on(two: Two) -> None:
    two.bob_active()
    two.receive(B_CONSOLE, b"keys", now=5.0)
    actions = two.receive(B_AGENT, frame("remove"), now=6.0)
    (closing,) = records(actions)
    assert (closing.event, closing.actor, closing.quiet) == ("engineer_removed", "bob", True)
    assert closing.body["bytes_to_agent"] == 4 and closing.body["reason"] == "engineer_removed"
    for conn in (B_CONSOLE, B_AGENT):
        assert sent(actions, conn, "ended").fields["reason"] == "engineer_removed"
        assert ("close", conn, "engineer_removed") in kinds(actions)
    assert roster_of(actions, CONSOLE) == [(CONSOLE, "alice", ["view", "control"])]
    assert not any(isinstance(a, Ended) for a in actions)
    assert two.machine.ended is None
    # Alice goes on; bob's late frames are dropped quietly.
    assert kinds(two.receive(CONSOLE, b"more", now=7.0)) == [("forward", AGENT_SESSION)]
    assert two.receive(B_CONSOLE, b"late") == []


def test_an_engineer_leaving_is_one_event_and_the_other_goes_on(two: Two) -> None:
    two.bob_active()
    actions = two.receive(CONSOLE, frame("end", reason="engineer_left"), now=6.0)
    assert [r.event for r in records(actions)] == ["engineer_left"]
    assert records(actions)[0].actor == "alice"
    assert roster_of(actions, B_CONSOLE) == [(B_CONSOLE, "bob", ["view"])]
    assert two.machine.ended is None


def test_a_lost_console_is_held_then_that_engineer_leaving(two: Two) -> None:
    two.bob_active()
    held = two.run(two.machine.lost(B_CONSOLE, 6.0))
    assert [r.event for r in records(held)] == ["session_interrupted"]
    assert sent(held, B_AGENT, "interrupted").fields["window"] > 0
    window = two.machine.timeouts.resume_window
    assert two.machine.tick(6.0 + window - 0.1) == []
    actions = two.run(two.machine.tick(6.0 + window))
    (left,) = records(actions)
    assert (left.event, left.body["reason"]) == ("engineer_left", "console_lost")
    assert sent(actions, B_AGENT, "ended").fields["reason"] == "console_lost"
    assert two.machine.ended is None


def test_a_refused_second_engineer_leaves_the_first_undisturbed(two: Two) -> None:
    two.bob_pairing()
    actions = two.receive(B_AGENT, two.consent_for(B_CONSOLE, "denied"))
    assert [r.event for r in records(actions)] == ["consent_denied"]
    assert sent(actions, B_CONSOLE, "ended").fields["reason"] == "denied"
    assert not any(isinstance(a, Ended) for a in actions)
    assert "roster" not in {k[2] for k in kinds(actions) if k[0] == "send"}  # nobody new


def test_a_second_pairing_that_fails_or_times_out_is_that_seat_alone(two: Two) -> None:
    two.bob_pairing()
    actions = two.receive(B_AGENT, frame("pairing_failed", reason="wrong_code"))
    assert [r.event for r in records(actions)] == ["pairing_failed"]
    assert two.machine.ended is None
    two.join_bob(now=10.0)  # another try, never attached: abandoned in time
    actions = two.run(two.machine.tick(10.0 + 11.0))
    assert [(r.event, r.body["reason"]) for r in records(actions)] == [
        ("join_abandoned", "agent_unreachable")]
    assert two.machine.ended is None


def test_the_last_engineer_leaving_ends_the_session(two: Two) -> None:
    two.bob_active()
    two.receive(B_AGENT, frame("remove"), now=5.0)
    actions = two.receive(CONSOLE, frame("end", reason="engineer_left"), now=6.0)
    assert [r.event for r in records(actions)] == ["session_ended"]
    assert_ended(actions, "engineer_left", [CONSOLE, AGENT_SESSION])


def test_an_engineer_who_left_early_counts_their_own_time_in_the_summary(two: Two) -> None:
    two.bob_active()  # bob active since 4.0
    two.receive(B_AGENT, frame("remove"), now=6.0)
    actions = two.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=20.0)
    (ended,) = records(actions)
    participants = {p["engineer"]: p for p in ended.body["participants"]}
    assert participants["bob"]["duration_s"] == 2.0  # until he was removed, not the end
    assert participants["bob"]["left"] == "engineer_removed"


# -- the customer ends it for all -----------------------------------------------

def test_the_customer_ending_ends_it_for_every_engineer(two: Two) -> None:
    two.bob_active()
    two.receive(CONSOLE, b"alice", now=5.0)
    two.receive(B_AGENT, b"output", now=5.0)
    actions = two.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=12.0)
    (ended,) = records(actions)
    assert ended.event == "session_ended"
    assert_ended(actions, "customer_ended", [CONSOLE, AGENT_SESSION, B_CONSOLE, B_AGENT])
    body = ended.body
    assert (body["bytes_to_agent"], body["bytes_to_console"]) == (5, 6)
    participants = {p["engineer"]: p for p in body["participants"]}
    assert participants["alice"]["bytes_to_agent"] == 5
    assert participants["bob"]["bytes_to_console"] == 6
    assert participants["bob"]["duration_s"] == 8.0  # active since 4.0
    assert {p["left"] for p in body["participants"]} == {"customer_ended"}


def test_chat_lines_are_counted_per_engineer_and_for_the_session(two: Two) -> None:
    two.bob_active()
    two.receive(CONSOLE, b"alice typed", now=5.0)
    two.receive(B_CONSOLE, b"bob typed", now=5.0)
    two.receive(AGENT_SESSION, b"to alice", now=5.0)
    two.receive(B_AGENT, b"to bob", now=5.0)
    two.receive(AGENT_SESSION, frame("chat_lines", engineer=3, customer=4), now=6.0)
    two.receive(B_AGENT, frame("chat_lines", engineer=2, customer=1), now=6.0)
    actions = two.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=12.0)
    (ended,) = records(actions)
    # Each engineer's lines add up; the customer's are not counted twice.
    assert ended.body["chat_lines"] == {"engineer": 5, "customer": 4}
    participants = {p["engineer"]: p for p in ended.body["participants"]}
    assert participants["alice"]["chat_lines"] == {"engineer": 3, "customer": 4}
    assert participants["bob"]["chat_lines"] == {"engineer": 2, "customer": 1}


def test_a_bad_frame_from_an_engineer_costs_that_seat_only(two: Two) -> None:
    two.bob_active()
    actions = two.receive(B_CONSOLE, frame("rights", granted=["view"]))
    assert sent(actions, B_CONSOLE, "error").fields["code"] == "unexpected_message"
    (left,) = records(actions)
    assert left.body["violation"] == {"by": "console", "code": "unexpected_message"}
    assert two.machine.ended is None


def test_an_undone_input_keeps_the_traffic_the_fast_relay_counts_in(two: Two) -> None:
    two.bob_active()
    counted = two.machine.seat.traffic  # what the driver's fast relay holds
    counted.count(10, to_agent=True, now=50.0)
    two.receive(B_CONSOLE, frame("rights", granted=["view"]), now=51.0)  # undone, bob goes
    assert two.machine.seat.traffic is counted
    counted.count(5, to_agent=True, now=80.0)
    assert two.machine.traffic.to_agent == 15
    assert two.machine.deadline() == 80.0 + two.machine.timeouts.idle


def test_a_bad_frame_from_the_customers_side_ends_it_for_all(two: Two) -> None:
    two.bob_active()
    actions = two.receive(B_AGENT, frame("rights", granted=["view", "control"]))
    assert sent(actions, B_AGENT, "error").fields["code"] == "bad_rights"
    assert two.machine.ended == "protocol_error"
    assert [r.event for r in records(actions)] == ["session_ended"]


def test_a_one_engineer_session_sends_no_roster(two: Two) -> None:
    two.to_active()
    actions = two.receive(AGENT_SESSION, frame("rights", granted=["view"]))
    assert "roster" not in {k[2] for k in kinds(actions) if k[0] == "send"}
    actions = two.receive(AGENT_SESSION, frame("end", reason="customer_ended"))
    assert "participants" not in records(actions)[0].body


def test_an_unrecorded_second_join_refuses_that_engineer_and_ends_closed(two: Two) -> None:
    two.to_active()
    two.join_bob()  # join_requested could not be written
    actions = two.run(two.machine.audit_failed(3.1))
    assert ("refuse", B_CONSOLE, "audit_unavailable") in kinds(actions)
    assert ("send", AGENT, "join_request") not in kinds(actions)
    assert two.machine.ended == "audit_unavailable"
    assert B_CONSOLE not in two.machine.seats  # undone


def test_every_roster_the_machine_sends_is_one_the_codec_accepts(two: Two) -> None:
    two.bob_active()
    actions = two.receive(AGENT_SESSION, frame("rights", granted=["view"]))
    fields = sent(actions, B_CONSOLE, "roster").fields
    assert decode(encode("roster", **fields)).type == "roster"


# -- one closing event per seat, whatever the order of things ---------------------

SEAT_INPUTS: dict[str, Callable[[Two, float], list[Action]]] = {
    "b_attach": lambda s, t: _try(lambda: s.machine.attach("tok-b", t)),
    "b_grant": lambda s, t: s.machine.receive(B_AGENT, s.consent_for(B_CONSOLE), t),
    "b_deny": lambda s, t: s.machine.receive(B_AGENT, s.consent_for(B_CONSOLE, "denied"), t),
    "b_end": lambda s, t: s.machine.receive(B_CONSOLE, frame("end", reason="x"), t),
    "b_remove": lambda s, t: _try(lambda: s.machine.receive(B_AGENT, frame("remove"), t)),
    "b_lost": lambda s, t: s.machine.lost(B_CONSOLE, t),
    "a_end": lambda s, t: s.machine.receive(CONSOLE, frame("end", reason="x"), t),
    "a_lost_agent_side": lambda s, t: s.machine.lost(AGENT_SESSION, t),
    "customer_ends": lambda s, t: s.machine.receive(AGENT_SESSION, frame("end", reason="x"), t),
    "lost_agent": lambda s, t: s.machine.lost(AGENT, t),
    "audit_failed": lambda s, t: _try(lambda: s.machine.audit_failed(t)),
    "late": lambda s, t: s.machine.tick(t + 10_000),
}


def _try(step: Callable[[], list[Action]]) -> list[Action]:
    try:
        return step()
    except (ProtocolError, LocalProtocolError):
        return []


def test_every_path_with_two_seats_records_one_closing_event_each() -> None:
    # Every sequence of three inputs after bob's join (1,728 of them).
    for steps in itertools.product(sorted(SEAT_INPUTS), repeat=3):
        _one_closing_event_per_seat(steps)


def _one_closing_event_per_seat(steps: tuple[str, ...]) -> None:
    two = Two()
    two.to_active()
    performed = [two.join_bob()[1]]
    for index, step in enumerate((*steps, "shutdown")):
        if step == "shutdown":
            batch = two.run(two.machine.shutdown(10.0 + index))
        else:
            batch = two.run(SEAT_INPUTS[step](two, 10.0 + index))
        perform_as_the_driver(performed, step, batch)
    done = [a for batch in performed for a in batch]
    ends = [a for a in done if isinstance(a, Ended)]
    assert len(ends) == 1 and ends[0].reason == two.machine.ended, steps
    closing = [r for r in records(done) if r.event in SEAT_CLOSING]
    # The session's one end, once (alice's seat was active: session_ended)...
    assert [r.event for r in closing].count("session_ended") == 1, (steps, closing)
    # ...and bob, unless he was still there at the end or never asked for
    # (an undone join), has exactly one closing event of his own.
    bob = [r for r in closing if r.actor == "bob"]
    assert len(bob) <= 1, (steps, bob)
    seat = two.machine.seats.get(B_CONSOLE)
    if seat is not None and seat.left != two.machine.ended:
        assert len(bob) == 1, (steps, bob)
