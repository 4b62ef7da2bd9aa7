"""The broker's session machine, driven with no sockets and a clock passed in:
every transition, every refusal, and one closing event on every way out."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.signing
import pytest

from broker.wire.code import JoinCode
from broker.wire.e2e import Pairing
from broker.wire.errors import LocalProtocolError, ProtocolError
from broker.wire.limits import MAX_FILE_EVENTS_PER_SESSION, OPEN_TIMEOUT
from broker.wire.machine import session as session_module
from broker.wire.machine.actions import (
    Action,
    Close,
    Ended,
    Forward,
    IssueNameplate,
    OpenRelay,
    Record,
    Refuse,
    Seal,
    Send,
    StopRelay,
)
from broker.wire.machine.protocol import INBOUND, Conn, Phase
from broker.wire.machine.session import (
    AGENT,
    AGENT_SESSION,
    CONSOLE,
    UPGRADE,
    AgentFacts,
    SessionMachine,
)
from broker.wire.messages import b64decode, b64encode, encode
from broker.wire.receipt import Receipt, sign_receipt

CLOSING = {"session_ended", "join_abandoned", "pairing_failed", "consent_denied",
           "consent_timeout"}


@dataclass(frozen=True)
class Engineer:
    name: str = "alice"
    display: str = "Alice"
    role: str = "engineer"
    public_key: str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKey"
    fingerprint: str = "SHA256:alicekey"


@dataclass(frozen=True)
class Timeouts:
    idle: float = 100.0
    max_session: float = 1000.0
    handshake: float = 60.0
    resume_window: float = 50.0


def frame(msg_type: str, **fields: Any) -> str:
    return encode(msg_type, **fields)


def kinds(actions: Sequence[Action]) -> list[tuple[str, ...]]:
    """A batch as short tuples, easy to compare."""
    out: list[tuple[str, ...]] = []
    for a in actions:
        match a:
            case Send(to=to, type=t):
                out.append(("send", to, t))
            case Record(event=e):
                out.append(("record", e))
            case Close(to=to, reason=r):
                out.append(("close", to, r))
            case Ended(reason=r):
                out.append(("ended", r))
            case Refuse(to=to, code=c):
                out.append(("refuse", to, c))
            case Seal(to=to, background=bg):
                out.append(("seal", to, "background" if bg else "now"))
            case Forward(to=to):
                out.append(("forward", to))
            case IssueNameplate(to=to):
                out.append(("nameplate", to))
            case OpenRelay():
                out.append(("open_relay",))
            case StopRelay():
                out.append(("stop_relay",))
    return out


def records(actions: Sequence[Action]) -> list[Record]:
    return [a for a in actions if isinstance(a, Record)]


def sent(actions: Sequence[Action], to: str, msg_type: str) -> Send:
    (found,) = [a for a in actions if isinstance(a, Send) and a.to == to and a.type == msg_type]
    return found


class Setup:
    """A machine for one join, a device key that signs the customer's answers."""

    def __init__(self, wants: tuple[str, ...] = ("view",)) -> None:
        self.device = nacl.signing.SigningKey.generate()
        self.engineer = Engineer()
        self.machine = SessionMachine(
            session_id="s1", token="tok", nameplate="4821",
            agent=AgentFacts("dev-1", bytes(self.device.verify_key), "Front Desk"),
            engineer=self.engineer, wants=wants, timeouts=Timeouts(), now=0.0)
        self.seconds = itertools.count()

    def run(self, actions: list[Action]) -> list[Action]:
        # Every frame the machine asks for is one the codec accepts.
        for action in actions:
            if isinstance(action, Send):
                encode(action.type, **action.fields)
        return actions

    def receive(self, conn: str, msg: str | bytes, now: float = 1.0) -> list[Action]:
        return self.run(self.machine.receive(conn, msg, now))

    def consent(self, decision: str = "granted", *, asked: tuple[str, ...] | None = None,
                granted: tuple[str, ...] | None = None, engineer: str | None = None,
                session: str = "s1", key: nacl.signing.SigningKey | None = None) -> str:
        asked = asked if asked is not None else self.machine.seat.wants
        if granted is None:
            granted = asked if decision == "granted" else ()
        receipt = Receipt.make(
            session=session, device_id="dev-1", engineer=engineer or self.engineer.name,
            key_fingerprint=self.engineer.fingerprint, asked=asked, granted=granted,
            decision=decision,
            now=dt.datetime(2025, 3, 1, 12, 0, next(self.seconds), tzinfo=dt.UTC))
        data, signature = sign_receipt(receipt, key or self.device)
        return frame("consent", receipt=b64encode(data), signature=b64encode(signature))

    def to_pairing(self) -> None:
        self.run(self.machine.open(0.0))
        self.run(self.machine.attach("tok", 0.5))

    def to_active(self) -> None:
        self.to_pairing()
        self.receive(AGENT_SESSION, self.consent(), now=2.0)
        assert self.machine.phase(CONSOLE) is Phase.ACTIVE

    def to_control_pending(self) -> None:
        self.to_active()
        self.receive(CONSOLE, frame("request_control"))


@pytest.fixture
def setup() -> Setup:
    return Setup()


def assert_ended(actions: list[Action], reason: str, told: Sequence[str]) -> None:
    """The tail of every batch that ends a session: everyone connected hears
    why, then each is closed, then the one `Ended`."""
    tail = kinds(actions)[-(2 * len(told) + 1):]
    assert tail == ([("send", c, "ended") for c in told] + [("close", c, reason) for c in told]
                    + [("ended", reason)])
    for conn in told:
        assert sent(actions, conn, "ended").fields["reason"] == reason
    assert [r.event for r in records(actions) if r.event in CLOSING] != []


# -- opening the join -------------------------------------------------------

def test_open_records_the_join_then_asks_the_agent_and_spends_the_code(setup: Setup) -> None:
    actions = setup.run(setup.machine.open(0.0))
    assert kinds(actions) == [("record", "join_requested"), ("send", AGENT, "join_request"),
                              ("nameplate", AGENT)]
    assert records(actions)[0].body == {"wants": ["view"]}
    assert not records(actions)[0].quiet
    request = sent(actions, AGENT, "join_request").fields
    assert (request["session"], request["token"], request["nameplate"]) == ("s1", "tok", "4821")
    assert request["engineer_login"] == "alice" and request["wants"] == ["view"]
    assert setup.machine.phase(CONSOLE) is Phase.WAITING
    assert setup.machine.deadline() == OPEN_TIMEOUT  # the agent must answer first


def test_attach_sends_joined_and_both_sides_pair(setup: Setup) -> None:
    setup.machine.open(0.0)
    actions = setup.run(setup.machine.attach("tok", 0.5))
    assert kinds(actions) == [("send", CONSOLE, "joined")]
    assert sent(actions, CONSOLE, "joined").fields == {"session": "s1", "alias": "Front Desk"}
    assert setup.machine.phase(CONSOLE) is setup.machine.phase(AGENT_SESSION) is Phase.PAIRING
    assert setup.machine.deadline() == Timeouts().handshake


@pytest.mark.parametrize("case", ["before_open", "wrong_token", "second", "after_end"])
def test_attach_refusals(setup: Setup, case: str) -> None:
    if case != "before_open":
        setup.machine.open(0.0)
    if case == "second":
        setup.machine.attach("tok", 0.5)
    if case == "after_end":
        setup.machine.shutdown(0.5)
    with pytest.raises(ProtocolError) as info:
        setup.machine.attach("nope" if case == "wrong_token" else "tok", 1.0)
    assert info.value.code == "unknown_session"


# -- pairing ----------------------------------------------------------------

@pytest.mark.parametrize("msg_type", ["pake", "sealed"])
def test_pairing_bodies_are_forwarded_unopened(setup: Setup, msg_type: str) -> None:
    setup.to_pairing()
    body = b64encode(b"\x00opaque")
    for src, dst in ((CONSOLE, AGENT_SESSION), (AGENT_SESSION, CONSOLE)):
        actions = setup.receive(src, frame(msg_type, body=body))
        assert actions == [Send(dst, msg_type, {"body": body})]


def test_two_ends_pair_back_to_back_through_the_machine(setup: Setup) -> None:
    """A real SPAKE2 pairing and key confirmation, each message handed to the
    machine by one end and given to the other from the machine's actions."""
    setup.to_pairing()
    code = JoinCode("4821", "193775")
    ends = {CONSOLE: Pairing("console", code, "s1"), AGENT_SESSION: Pairing("agent", code, "s1")}

    def via_broker(src: str, msg_type: str, body: bytes) -> bytes:
        (action,) = setup.receive(src, frame(msg_type, body=b64encode(body)))
        assert isinstance(action, Send) and action.type == msg_type
        return b64decode(action.fields["body"])

    starts = {side: pairing.start() for side, pairing in ends.items()}
    ends[AGENT_SESSION].receive_pake(via_broker(CONSOLE, "pake", starts[CONSOLE]))
    ends[CONSOLE].receive_pake(via_broker(AGENT_SESSION, "pake", starts[AGENT_SESSION]))
    box = via_broker(AGENT_SESSION, "sealed", ends[AGENT_SESSION].seal({"host_key": "k"}))
    assert ends[CONSOLE].open(box) == {"host_key": "k"}
    assert ends[CONSOLE].sas == ends[AGENT_SESSION].sas


@pytest.mark.parametrize("reason", ["wrong_code", "key_mismatch"])
def test_a_failed_pairing_is_its_own_closing_event(setup: Setup, reason: str) -> None:
    setup.to_pairing()
    actions = setup.receive(AGENT_SESSION, frame("pairing_failed", reason=reason))
    assert [(r.event, dict(r.body), r.quiet) for r in records(actions)] == [
        ("pairing_failed", {"reason": reason}, False)]  # no join_abandoned beside it
    assert_ended(actions, reason, [CONSOLE, AGENT_SESSION])
    message = sent(actions, CONSOLE, "ended").fields["message"]
    assert ("code did not match" in message) is (reason == "wrong_code")


def test_a_grant_starts_the_session_recorded_first(setup: Setup) -> None:
    setup.to_pairing()
    answer = setup.consent()
    actions = setup.receive(AGENT_SESSION, answer, now=2.0)
    assert kinds(actions) == [
        ("record", "consent_granted"), ("record", "session_started"), ("open_relay",),
        ("send", CONSOLE, "consent_result"), ("send", AGENT_SESSION, "relay_open"),
        ("seal", AGENT_SESSION, "background")]
    consent, started = records(actions)
    assert consent.sealable and consent.personal is not None
    assert set(consent.personal) == {"receipt", "receipt_signature", "device_key"}
    assert consent.body["granted"] == ["view"] and consent.body["decision"] == "granted"
    assert (consent.session, consent.actor, consent.subject) == ("s1", "alice", "dev-1")
    assert started.body == {"granted": ["view"]}
    result = sent(actions, CONSOLE, "consent_result").fields
    assert result["decision"] == "granted" and result["granted"] == ["view"]
    assert setup.machine.phase(AGENT_SESSION) is Phase.ACTIVE
    assert setup.machine.seat.granted == ("view",)
    assert setup.machine.active_since == 2.0
    assert setup.machine.deadline() == 2.0 + Timeouts().idle


@pytest.mark.parametrize("decision", ["denied", "timeout"])
def test_a_refusal_is_the_closing_event_and_is_sealed_before_the_end(
        setup: Setup, decision: str) -> None:
    setup.to_pairing()
    actions = setup.receive(AGENT_SESSION, setup.consent(decision))
    assert kinds(actions)[:4] == [("stop_relay",), ("record", f"consent_{decision}"),
                                  ("send", CONSOLE, "consent_result"),
                                  ("seal", AGENT_SESSION, "now")]
    assert [r.event for r in records(actions)] == [f"consent_{decision}"]
    assert sent(actions, CONSOLE, "consent_result").fields["granted"] == ["view"]
    assert_ended(actions, decision, [CONSOLE, AGENT_SESSION])


@pytest.mark.parametrize(
    "change",
    [
        {"engineer": "mallory"},  # someone else's receipt
        {"session": "s2"},  # another session's
        {"asked": ("view", "control")},  # not what this join asked
        {"key": nacl.signing.SigningKey.generate()},  # signed by another device
    ],
)
def test_a_receipt_that_does_not_answer_the_join_is_refused(
        setup: Setup, change: dict[str, Any]) -> None:
    setup.to_pairing()
    actions = setup.receive(AGENT_SESSION, setup.consent(**change))
    assert kinds(actions)[0] == ("send", AGENT_SESSION, "error")
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "bad_receipt"
    abandoned = records(actions)[0]
    assert (abandoned.event, abandoned.quiet) == ("join_abandoned", True)
    assert abandoned.body == {"reason": "protocol_error",
                              "violation": {"by": "agent_session", "code": "bad_receipt"}}
    assert_ended(actions, "protocol_error", [CONSOLE, AGENT_SESSION])


# -- what is refused where (the catalogue, through the machine) ----------------

@pytest.mark.parametrize(
    ("conn", "when", "msg"),
    [
        (CONSOLE, "waiting", frame("pake", body="AA==")),  # before the agent is here
        (CONSOLE, "pairing", frame("consent", receipt="AA==", signature="AA==")),
        (CONSOLE, "pairing", frame("request_control")),  # nothing to upgrade yet
        (CONSOLE, "active", frame("pake", body="AA==")),  # re-pairing a live session
        (CONSOLE, "active", frame("rights", granted=["view"])),  # only the customer
        (CONSOLE, "active", frame("join", nameplate="1", wants=["view"])),
        (AGENT_SESSION, "pairing", frame("confirm_live", id=1)),
        (AGENT_SESSION, "pairing", frame("rights", granted=["view"])),
        (AGENT_SESSION, "active", frame("request_control")),  # only the engineer asks
        (AGENT_SESSION, "active", frame("pake", body="AA==")),
        (AGENT_SESSION, "active", frame("pairing_failed", reason="wrong_code")),
        (CONSOLE, "pairing", b"\x00ssh"),  # no byte before consent
        (AGENT_SESSION, "pairing", b"\x00ssh"),
        (CONSOLE, "active", "{not json"),
        (CONSOLE, "active", '{"v":1,"type":"shell_exec"}'),
    ],
)
def test_a_frame_out_of_place_ends_the_session_as_a_protocol_error(
        conn: str, when: str, msg: str | bytes) -> None:
    setup = Setup()
    if when == "waiting":
        setup.machine.open(0.0)
    elif when == "pairing":
        setup.to_pairing()
    else:
        setup.to_active()
    actions = setup.receive(conn, msg)
    error = actions[0]
    assert isinstance(error, Send) and (error.to, error.type) == (conn, "error")
    told = [CONSOLE] if when == "waiting" else [CONSOLE, AGENT_SESSION]
    assert_ended(actions, "protocol_error", told)
    closing = [r for r in records(actions) if r.event in CLOSING]
    assert len(closing) == 1
    assert closing[0].body["violation"] == {"by": Conn(
        "console" if conn == CONSOLE else "agent_session").value, "code": error.fields["code"]}
    expected = "session_ended" if when == "active" else "join_abandoned"
    assert closing[0].event == expected
    assert setup.machine.ended == "protocol_error"


def test_every_message_a_session_connection_may_send_has_a_handler() -> None:
    session_phases = {(Conn.AGENT_SESSION, Phase.PAIRING), (Conn.AGENT_SESSION, Phase.ACTIVE),
                      (Conn.AGENT_SESSION, Phase.RESUMING),
                      (Conn.CONSOLE, Phase.WAITING), (Conn.CONSOLE, Phase.PAIRING),
                      (Conn.CONSOLE, Phase.ACTIVE), (Conn.CONSOLE, Phase.RESUMING)}
    types = {t for key in session_phases for t in INBOUND[key]}
    assert types == set(session_module._HANDLERS)


def test_the_machine_never_sends_what_the_catalogue_does_not_list(setup: Setup) -> None:
    setup.machine.open(0.0)  # console waiting: it may not be sent a consent result
    with pytest.raises(LocalProtocolError):
        setup.machine._send(CONSOLE, "consent_result", decision="granted", granted=["view"],
                            receipt="AA==", signature="AA==")
    with pytest.raises(LocalProtocolError):
        setup.machine.receive("console-2", frame("end", reason="x"), 1.0)


# -- an active session --------------------------------------------------------

def test_binary_frames_flow_and_are_counted_never_kept(setup: Setup) -> None:
    setup.to_active()
    assert setup.receive(CONSOLE, b"keys", now=3.0) == [Forward(AGENT_SESSION, b"keys")]
    assert setup.receive(AGENT_SESSION, b"output!", now=4.0) == [Forward(CONSOLE, b"output!")]
    traffic = setup.machine.traffic
    assert (traffic.to_agent, traffic.to_console, traffic.last_activity) == (4, 7, 4.0)
    assert setup.machine.deadline() == 4.0 + Timeouts().idle


def test_confirm_live_is_answered_to_the_agent_only_and_not_recorded(setup: Setup) -> None:
    setup.to_active()
    assert setup.receive(AGENT_SESSION, frame("confirm_live", id=7)) == [
        Send(AGENT_SESSION, "live", {"id": 7})]


def test_dropped_input_is_a_bounded_claim_in_session_ended(setup: Setup) -> None:
    setup.to_active()
    setup.receive(CONSOLE, b"x" * 1000)
    for total in (300, 100):  # a total never shrinks
        assert setup.receive(AGENT_SESSION, frame("input_dropped", bytes=total)) == []
    assert setup.machine.seat.input_dropped == 300
    setup.receive(AGENT_SESSION, frame("input_dropped", bytes=10**9))  # more than relayed
    actions = setup.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=12.0)
    (ended,) = records(actions)
    assert (ended.event, ended.quiet) == ("session_ended", True)
    assert ended.body == {"reason": "customer_ended", "duration_s": 10.0,
                          "bytes_to_agent": 1000, "bytes_to_console": 0,
                          "input_dropped_bytes": 1000,
                          "chat_lines": {"engineer": 0, "customer": 0}, "granted": ["view"]}


def test_chat_lines_are_bounded_claims_in_session_ended(setup: Setup) -> None:
    setup.to_active()
    setup.receive(CONSOLE, b"x" * 40)
    setup.receive(AGENT_SESSION, b"y" * 30)
    for engineer, customer in ((3, 2), (1, 1)):  # a total never shrinks
        assert setup.receive(AGENT_SESSION, frame("chat_lines", engineer=engineer,
                                                  customer=customer)) == []
    assert (setup.machine.seat.chat_engineer, setup.machine.seat.chat_customer) == (3, 2)
    # More lines than bytes relayed their way cannot be true.
    setup.receive(AGENT_SESSION, frame("chat_lines", engineer=10**6, customer=10**6))
    actions = setup.receive(AGENT_SESSION, frame("end", reason="customer_ended"), now=12.0)
    (ended,) = records(actions)
    assert ended.body["chat_lines"] == {"engineer": 40, "customer": 30}


def test_the_customer_narrows_rights_and_the_engineer_hears(setup: Setup) -> None:
    setup = Setup(wants=("view", "control"))
    setup.to_active()
    actions = setup.receive(AGENT_SESSION, frame("rights", granted=["view"]))
    assert kinds(actions) == [("record", "rights_changed"), ("send", CONSOLE, "rights")]
    assert records(actions)[0].body == {"granted": ["view"], "by": "customer"}
    assert setup.machine.seat.granted == ("view",)


@pytest.mark.parametrize("granted", [["view", "control"], ["control"]])
def test_rights_are_never_widened_or_left_without_view(granted: list[str]) -> None:
    setup = Setup()
    setup.to_active()
    actions = setup.receive(AGENT_SESSION, frame("rights", granted=granted))
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "bad_rights"
    assert setup.machine.ended == "protocol_error"


def test_a_request_for_control_is_recorded_then_forwarded_once(setup: Setup) -> None:
    setup.to_active()
    actions = setup.receive(CONSOLE, frame("request_control"))
    assert kinds(actions) == [("record", "control_requested"),
                              ("send", AGENT_SESSION, "control_request")]
    assert records(actions)[0].body == {"asked": list(UPGRADE)}
    again = setup.receive(CONSOLE, frame("request_control"))  # already with the customer
    assert again == [Send(CONSOLE, "control_result",
                          {"decision": "unchanged", "granted": ["view"]})]


def test_a_granted_request_is_recorded_before_anyone_hears(setup: Setup) -> None:
    setup.to_control_pending()
    actions = setup.receive(AGENT_SESSION, setup.consent(asked=UPGRADE))
    assert kinds(actions) == [("record", "consent_granted"), ("record", "rights_changed"),
                              ("send", CONSOLE, "control_result"),
                              ("send", AGENT_SESSION, "control_result"),
                              ("seal", AGENT_SESSION, "background")]
    consent, rights = records(actions)
    assert consent.body["upgrade"] is True and consent.sealable and consent.personal
    assert rights.body == {"granted": ["view", "control"], "by": "customer", "upgrade": True}
    for conn in (CONSOLE, AGENT_SESSION):
        assert sent(actions, conn, "control_result").fields == {
            "decision": "granted", "granted": ["view", "control"]}
    # Control is in force: a new request has nothing to ask.
    assert sent(setup.receive(CONSOLE, frame("request_control")), CONSOLE,
                "control_result").fields["decision"] == "unchanged"


def test_files_are_asked_for_later_with_every_right_the_seat_holds() -> None:
    """A seat with view and control asks for files: the customer is asked
    for all three (an upgrade takes nothing away), the grant must be all
    three, and a second request for a held right has nothing to ask."""
    setup = Setup(wants=("view", "control"))
    setup.to_active()
    actions = setup.receive(CONSOLE, frame("request_control", right="files"))
    assert kinds(actions) == [("record", "control_requested"),
                              ("send", AGENT_SESSION, "control_request")]
    assert records(actions)[0].body == {"asked": ["view", "control", "files"]}
    assert sent(actions, AGENT_SESSION, "control_request").fields == {"right": "files"}
    asked = ("view", "control", "files")
    actions = setup.receive(AGENT_SESSION, setup.consent(asked=asked))
    assert sent(actions, CONSOLE, "control_result").fields == {
        "decision": "granted", "granted": list(asked)}
    assert setup.machine.seat.granted == asked
    for right in ("files", "control"):
        again = setup.receive(CONSOLE, frame("request_control", right=right))
        assert sent(again, CONSOLE, "control_result").fields["decision"] == "unchanged"


def test_a_grant_of_files_must_grant_what_was_asked() -> None:
    setup = Setup(wants=("view",))
    setup.to_active()
    setup.receive(CONSOLE, frame("request_control", right="files"))
    # Control instead of files: not the answer to this request.
    actions = setup.receive(AGENT_SESSION, setup.consent(
        asked=("view", "files"), granted=("view", "control")))
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "bad_receipt"


def test_a_transferred_file_is_recorded_without_a_name(setup: Setup) -> None:
    setup.to_active()
    actions = setup.receive(AGENT_SESSION, frame(
        "file_transferred", direction="download", bytes=42, outcome="cancelled"))
    assert kinds(actions) == [("record", "file_transferred")]
    body = records(actions)[0].body
    assert body == {"direction": "download", "bytes": 42, "outcome": "cancelled"}


def test_file_events_are_bounded_per_session(setup: Setup) -> None:
    setup.to_active()
    report = frame("file_transferred", direction="upload", bytes=1, outcome="complete")
    for _ in range(MAX_FILE_EVENTS_PER_SESSION):
        assert kinds(setup.receive(AGENT_SESSION, report)) == [("record", "file_transferred")]
    assert setup.receive(AGENT_SESSION, report) == []  # dropped, not an error


def test_a_request_for_control_keeps_the_files_the_seat_holds() -> None:
    setup = Setup(wants=("view", "files"))
    setup.to_active()
    actions = setup.receive(CONSOLE, frame("request_control"))
    assert records(actions)[0].body == {"asked": ["view", "control", "files"]}
    # An upgrade that would drop files does not answer this request.
    assert kinds(setup.receive(AGENT_SESSION, setup.consent(
        asked=("view", "control"))))[0] != ("record", "consent_granted")


def test_a_granted_request_at_a_files_seat_grants_all_three() -> None:
    setup = Setup(wants=("view", "files"))
    setup.to_control_pending()
    actions = setup.receive(AGENT_SESSION, setup.consent(asked=("view", "control", "files")))
    _, rights = records(actions)
    assert rights.body["granted"] == ["view", "control", "files"]
    assert sent(actions, CONSOLE, "control_result").fields["granted"] == [
        "view", "control", "files"]


def test_the_customer_may_narrow_files_away() -> None:
    setup = Setup(wants=("view", "control", "files"))
    setup.to_active()
    actions = setup.receive(AGENT_SESSION, frame("rights", granted=["view", "control"]))
    assert sent(actions, CONSOLE, "rights").fields == {"granted": ["view", "control"]}


@pytest.mark.parametrize("decision", ["denied", "timeout"])
def test_a_refused_request_leaves_view_only_and_may_be_asked_again(
        setup: Setup, decision: str) -> None:
    setup.to_control_pending()
    actions = setup.receive(AGENT_SESSION, setup.consent(decision, asked=UPGRADE))
    assert [r.event for r in records(actions)] == [f"consent_{decision}"]
    assert sent(actions, CONSOLE, "control_result").fields == {"decision": decision,
                                                              "granted": ["view"]}
    assert setup.machine.ended is None and setup.machine.seat.granted == ("view",)
    assert kinds(setup.receive(CONSOLE, frame("request_control")))[-1] == (
        "send", AGENT_SESSION, "control_request")


@pytest.mark.parametrize(
    "change",
    [
        {"asked": ("view",)},  # not a request for control
        {"asked": ("control",)},
        {"decision": "granted", "asked": UPGRADE, "granted": ("view",)},  # without control
        {"engineer": "mallory", "asked": UPGRADE},
        {"key": nacl.signing.SigningKey.generate(), "asked": UPGRADE},  # another device
    ],
)
def test_receipts_that_do_not_answer_the_request_are_refused(
        setup: Setup, change: dict[str, Any]) -> None:
    setup.to_control_pending()
    actions = setup.receive(AGENT_SESSION, setup.consent(**change))
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "bad_receipt"
    assert ("send", CONSOLE, "control_result") not in kinds(actions)
    assert setup.machine.seat.granted == ("view",)


def test_an_answer_nobody_asked_for_is_refused(setup: Setup) -> None:
    setup.to_active()
    actions = setup.receive(AGENT_SESSION, setup.consent(asked=UPGRADE))
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "unexpected_message"


def test_an_old_receipt_is_not_a_new_answer(setup: Setup) -> None:
    setup.to_control_pending()
    answer = setup.consent("denied", asked=UPGRADE)
    setup.receive(AGENT_SESSION, answer)
    setup.receive(CONSOLE, frame("request_control"))
    actions = setup.receive(AGENT_SESSION, answer)
    assert sent(actions, AGENT_SESSION, "error").fields["code"] == "bad_receipt"


# -- the end: every way in, one closing event ----------------------------------

@pytest.mark.parametrize(
    ("conn", "said", "reason"),
    [
        (CONSOLE, "engineer_left", "engineer_left"),
        (CONSOLE, "customer_ended", "engineer_left"),  # an engineer cannot say that
        (AGENT_SESSION, "customer_ended", "customer_ended"),
        (AGENT_SESSION, "shell_exited", "shell_exited"),
        (AGENT_SESSION, "agent_quit", "agent_quit"),
        (AGENT_SESSION, "engineer_left", "customer_ended"),
    ],
)
def test_end_says_who_ended_it(setup: Setup, conn: str, said: str, reason: str) -> None:
    setup.to_active()
    actions = setup.receive(conn, frame("end", reason=said))
    assert kinds(actions)[:2] == [("stop_relay",), ("record", "session_ended")]
    assert_ended(actions, reason, [CONSOLE, AGENT_SESSION])
    assert setup.machine.phase(CONSOLE) is setup.machine.phase(AGENT_SESSION) is Phase.CLOSED


def test_an_engineer_leaving_before_the_agent_came_abandons_the_join(setup: Setup) -> None:
    setup.machine.open(0.0)
    actions = setup.receive(CONSOLE, frame("end", reason="engineer_left"))
    assert records(actions)[0].event == "join_abandoned"
    assert_ended(actions, "engineer_left", [CONSOLE])  # nobody on the agent side to tell


@pytest.mark.parametrize(
    ("when", "at", "reason", "closing"),
    [
        ("waiting", OPEN_TIMEOUT, "agent_unreachable", "join_abandoned"),
        ("pairing", Timeouts().handshake, "timeout", "join_abandoned"),
        ("active", 2.0 + Timeouts().idle, "idle_timeout", "session_ended"),
    ],
)
def test_deadlines_end_the_session_on_time(when: str, at: float, reason: str,
                                           closing: str) -> None:
    setup = Setup()
    {"waiting": lambda: setup.machine.open(0.0), "pairing": setup.to_pairing,
     "active": setup.to_active}[when]()
    assert setup.machine.deadline() == at
    assert setup.machine.tick(at - 0.001) == []
    actions = setup.run(setup.machine.tick(at))
    assert [r.event for r in records(actions)] == [closing]
    assert records(actions)[0].quiet
    assert setup.machine.ended == reason
    assert setup.machine.deadline() is None and setup.machine.tick(at + 1000) == []


def test_activity_pushes_the_idle_deadline_but_not_the_longest_session() -> None:
    setup = Setup()
    setup.to_active()  # active since 2.0
    limit = 2.0 + Timeouts().max_session
    now = 2.0
    while now + 50 < limit:  # traffic every 50 s, well inside the idle limit
        now += 50
        setup.receive(CONSOLE, b"k", now=now)
        assert setup.machine.tick(now) == []
    assert setup.machine.deadline() == limit
    setup.run(setup.machine.tick(limit))
    assert setup.machine.ended == "max_duration"


@pytest.mark.parametrize(("late", "reason"), [(Timeouts().idle + 1, "idle_timeout"),
                                              (Timeouts().max_session + 1, "max_duration")])
def test_a_late_tick_names_the_longest_session_before_idling(late: float, reason: str) -> None:
    setup = Setup()
    setup.to_active()  # active since 2.0, no traffic since
    setup.run(setup.machine.tick(2.0 + late))
    assert setup.machine.ended == reason


def test_lost_connections(setup: Setup) -> None:
    setup.machine.open(0.0)
    actions = setup.run(setup.machine.lost(AGENT, 0.1))  # join_request could not be sent
    assert setup.machine.ended == "agent_unreachable"
    assert_ended(actions, "agent_unreachable", [CONSOLE])
    assert setup.machine.lost(CONSOLE, 0.2) == []  # already ended: nothing more


@pytest.mark.parametrize(("conn", "reason"), [(AGENT_SESSION, "agent_lost"),
                                              (CONSOLE, "console_lost")])
def test_a_lost_side_is_held_for_the_window_then_the_session_ends(
        setup: Setup, conn: str, reason: str) -> None:
    setup.to_active()
    assert setup.machine.lost(AGENT, 3.0) == []  # the control link no longer matters
    other = CONSOLE if conn == AGENT_SESSION else AGENT_SESSION
    held = setup.run(setup.machine.lost(conn, 3.0))
    assert kinds(held) == [("stop_relay",), ("record", "session_interrupted"),
                           ("send", other, "interrupted")]
    assert setup.machine.phase(conn) is Phase.HELD and setup.machine.ended is None
    assert records(held)[0].quiet  # a teardown-like fact: it never blocks the session
    # The other side's bytes meanwhile are dropped, not relayed nor counted.
    if other == CONSOLE:
        assert setup.receive(CONSOLE, b"typed while down", now=4.0) == []
        assert setup.machine.seat.traffic.to_agent == 0
    window = setup.machine.timeouts.resume_window
    assert setup.machine.deadline() == 3.0 + window
    # A second drop (the resumer's new link breaking) does not extend it.
    actions = setup.run(setup.machine.tick(3.0 + window))
    assert_ended(actions, reason, [other])



def test_shutdown_ends_once(setup: Setup) -> None:
    setup.to_pairing()
    actions = setup.run(setup.machine.shutdown(1.0))
    assert_ended(actions, "broker_shutdown", [CONSOLE, AGENT_SESSION])
    assert setup.machine.shutdown(2.0) == []


def test_late_frames_of_the_teardown_are_dropped_without_error(setup: Setup) -> None:
    setup.to_active()
    setup.receive(AGENT_SESSION, frame("end", reason="shell_exited"))
    assert setup.receive(CONSOLE, b"last keystroke") == []
    assert setup.receive(CONSOLE, frame("end", reason="engineer_left")) == []
    assert setup.receive(CONSOLE, "garbage") == []


# -- fail closed: a record that cannot be written undoes its input ---------------

def test_an_unrecorded_join_refuses_both_and_spends_nothing(setup: Setup) -> None:
    setup.machine.open(0.0)  # the driver could not write join_requested
    actions = setup.run(setup.machine.audit_failed(0.1))
    assert ("refuse", AGENT, "audit_unavailable") in kinds(actions)
    assert kinds(actions)[-1] == ("ended", "audit_unavailable")
    assert records(actions)[0].event == "join_abandoned"
    assert sent(actions, CONSOLE, "ended").fields["reason"] == "audit_unavailable"


def test_an_unrecorded_consent_never_starts_the_session(setup: Setup) -> None:
    setup.to_pairing()
    setup.receive(AGENT_SESSION, setup.consent(), now=2.0)  # consent_granted not written
    actions = setup.run(setup.machine.audit_failed(2.1))
    assert ("refuse", AGENT, "audit_unavailable") not in kinds(actions)  # code was spent
    assert [r.event for r in records(actions)] == ["join_abandoned"]
    assert setup.machine.active_since is None and setup.machine.seat.granted == ()
    assert_ended(actions, "audit_unavailable", [CONSOLE, AGENT_SESSION])


def test_no_control_without_the_record(setup: Setup) -> None:
    setup.to_control_pending()
    setup.receive(AGENT_SESSION, setup.consent(asked=UPGRADE))
    actions = setup.run(setup.machine.audit_failed(3.0))
    assert setup.machine.seat.granted == ("view",)
    assert ("send", CONSOLE, "control_result") not in kinds(actions)
    assert records(actions)[0].event == "session_ended"
    assert setup.machine.ended == "audit_unavailable"


def test_an_unrecorded_refusal_ends_as_audit_unavailable(setup: Setup) -> None:
    setup.to_pairing()
    setup.receive(AGENT_SESSION, setup.consent("denied"))  # consent_denied not written
    actions = setup.run(setup.machine.audit_failed(2.0))
    assert [r.event for r in records(actions)] == ["join_abandoned"]
    assert setup.machine.ended == "audit_unavailable"


# -- exactly one closing event, whatever the order of things -----------------------

INPUTS: dict[str, Callable[[Setup, float], list[Action]]] = {
    "attach": lambda s, t: _try_attach(s, t),
    "console_pake": lambda s, t: s.machine.receive(CONSOLE, frame("pake", body="AA=="), t),
    "grant": lambda s, t: s.machine.receive(AGENT_SESSION, s.consent(), t),
    "deny": lambda s, t: s.machine.receive(AGENT_SESSION, s.consent("denied"), t),
    "pairing_failed": lambda s, t: s.machine.receive(
        AGENT_SESSION, frame("pairing_failed", reason="wrong_code"), t),
    "request": lambda s, t: s.machine.receive(CONSOLE, frame("request_control"), t),
    "bytes": lambda s, t: s.machine.receive(CONSOLE, b"k", t),
    "console_end": lambda s, t: s.machine.receive(CONSOLE, frame("end", reason="x"), t),
    "agent_end": lambda s, t: s.machine.receive(AGENT_SESSION, frame("end", reason="x"), t),
    "lost_agent": lambda s, t: s.machine.lost(AGENT, t),
    "lost_console": lambda s, t: s.machine.lost(CONSOLE, t),
    "lost_agent_session": lambda s, t: s.machine.lost(AGENT_SESSION, t),
    "audit_failed": lambda s, t: _try_audit_failed(s, t),
    "late": lambda s, t: s.machine.tick(t + 10_000),
    "shutdown": lambda s, t: s.machine.shutdown(t),
}


def _try_audit_failed(setup: Setup, now: float) -> list[Action]:
    try:  # only after a batch that asked for a record that had to be written
        return setup.machine.audit_failed(now)
    except LocalProtocolError:
        return []


def _try_attach(setup: Setup, now: float) -> list[Action]:
    try:
        return setup.machine.attach("tok", now)
    except ProtocolError:
        return []


def test_every_path_into_the_end_records_one_closing_event() -> None:
    # Every sequence of three inputs after the attach (3,375 of them).
    for steps in itertools.product(sorted(INPUTS), repeat=3):
        _one_closing_event(steps)


def perform_as_the_driver(performed: list[list[Action]], step: str,
                          batch: list[Action]) -> None:
    """Add `batch` to what was performed; after `audit_failed`, the batch
    before it stops at its first record that had to be written."""
    if step == "audit_failed" and batch:
        before = performed[-1]
        cut = next(i for i, a in enumerate(before) if isinstance(a, Record) and not a.quiet)
        performed[-1] = before[:cut]
    performed.append(batch)


def _one_closing_event(steps: tuple[str, ...]) -> None:
    """Performed as the driver does: `audit_failed` means the batch before it
    stopped at its first record that had to be written."""
    setup = Setup()
    performed = [setup.run(setup.machine.open(0.0))]
    for index, step in enumerate(("attach", *steps, "shutdown")):
        batch = setup.run(INPUTS[step](setup, 1.0 + index))
        perform_as_the_driver(performed, step, batch)
    done = [a for batch in performed for a in batch]
    ends = [a for a in done if isinstance(a, Ended)]
    assert len(ends) == 1 and ends[0].reason == setup.machine.ended, steps
    closing = [r.event for r in records(done) if r.event in CLOSING]
    assert len(closing) == 1, (steps, closing)
    for batch in performed:
        if any(isinstance(a, Ended) for a in batch):
            assert isinstance(batch[-1], Ended), steps
