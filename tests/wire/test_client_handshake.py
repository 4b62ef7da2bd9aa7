"""The client's handshake (console and agent side), driven with no sockets
and a clock passed in: back to back, and both through the broker's real
session machine; every step, every refusal, every deadline."""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

import pytest

from broker.wire.errors import LocalProtocolError
from broker.wire.machine.actions import Action, Seal
from broker.wire.machine.handshake import (
    _AWAITS,
    MAX_CONSENT_WAIT,
    SEAL_WAIT,
    STEP_TIMEOUT,
    Established,
    Failed,
    Failure,
    Handshake,
    Joined,
    Paired,
    Refused,
    Sealed,
    Send,
    Source,
    Step,
    same_public_key,
)
from broker.wire.machine.protocol import Conn, Phase, may_send
from broker.wire.machine.session import CONSOLE
from broker.wire.messages import Message, b64decode, b64encode, decode, encode
from tests.wire.handshakes import (
    CODE,
    CONN_OF,
    ENGINEER_KEY,
    HOST_KEY,
    ROLE_OF,
    Pair,
    agent_side,
    broker_sends,
    console_side,
    message,
    paired,
)
from tests.wire.test_session_machine import Setup

OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOther"


def kinds(outputs: list[Any]) -> list[str]:
    return [f"send {o.type}" if isinstance(o, Send) else type(o).__name__ for o in outputs]


def signed(setup: Setup, decision: str) -> tuple[bytes, bytes]:
    """A receipt signed with the device key the machine knows."""
    frame = decode(setup.consent(decision))
    return b64decode(frame["receipt"]), b64decode(frame["signature"])


class ThroughBroker:
    """Both handshakes joined through the broker's `SessionMachine` (from
    `Setup`), each broker action performed as its driver would, in order."""

    def __init__(self, setup: Setup, pair: Pair) -> None:
        self.setup, self.pair = setup, pair
        self.queue: deque[tuple[str, Message]] = deque()
        self.now = 1.0

    def start(self) -> None:
        (join,) = self.pair.take("console", self.pair.console.start(0.0))
        assert join.type == "join" and join.fields["nameplate"] == "4821"
        self.broker(self.setup.machine.open(0.0))  # the server accepted the join
        (attach,) = self.pair.take("agent", self.pair.agent.start(0.0))
        self.broker(self.setup.machine.attach(attach.fields["token"], 0.5))

    def broker(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Seal):
                self.queue.append(("agent", message("consent_sealed", seq=7, checkpoint="{}")))
            for conn, msg in broker_sends([action]):
                if conn in ROLE_OF:  # not the agent's control connection
                    self.queue.append((ROLE_OF[conn], msg))
        while self.queue:
            role, msg = self.queue.popleft()
            self.client(role, self.pair.of(role).receive(msg, self.now))

    def client(self, role: str, outputs: list[Any]) -> None:
        for out in self.pair.take(role, outputs):
            self.broker(self.setup.machine.receive(CONN_OF[role], encode(out.type, **out.fields),
                                                   self.now))

    def answer(self, decision: str, granted: tuple[str, ...] = ()) -> None:
        receipt, signature = signed(self.setup, decision)
        self.client("agent", self.pair.agent.answer(receipt=receipt, signature=signature,
                                                    decision=decision, granted=granted,
                                                    now=self.now))


def through_broker(*, agent_code: Any = None, ssh_key: str = ENGINEER_KEY,
                   wants: tuple[str, ...] = ("view",)) -> ThroughBroker:
    setup = Setup(wants)
    pair = Pair(Handshake(console_side(ssh_key, wants), CODE),
                Handshake(agent_side(setup.engineer.public_key), agent_code or CODE))
    run = ThroughBroker(setup, pair)
    run.start()
    return run


# -- through the broker's session machine -------------------------------------

def test_a_granted_join_through_the_broker() -> None:
    run = through_broker(wants=("view", "control"))
    pair = run.pair
    assert [s.type for s in pair.sent["console"]] == ["join", "pake", "sealed"]
    assert [s.type for s in pair.sent["agent"]] == ["attach", "pake", "sealed"]
    joined, console_paired = pair.events["console"]
    (agent_paired,) = pair.events["agent"]
    assert joined == Joined("s1", "Front Desk")
    assert isinstance(console_paired, Paired) and isinstance(agent_paired, Paired)
    assert console_paired.sas == agent_paired.sas == pair.console.sas == pair.agent.sas
    assert (console_paired.peer_key, console_paired.consent_timeout) == (HOST_KEY, 60.0)
    assert agent_paired.peer_key == run.setup.engineer.public_key
    assert pair.agent.step is Step.ASKING and pair.agent.deadline() is None
    run.answer("granted", ("view", "control"))
    assert pair.console.outcome == pair.agent.outcome == Established(("view", "control"))
    assert run.setup.machine.phase(CONSOLE) is Phase.ACTIVE
    # Both ends are where the broker has them: active, and the handshake is over.
    assert pair.console.phase is pair.agent.phase is Phase.ACTIVE
    assert pair.console.done and pair.agent.done and pair.agent.deadline() is None


@pytest.mark.parametrize("decision", ["denied", "timeout"])
def test_a_refused_join_through_the_broker_is_sealed_then_refused(decision: str) -> None:
    run = through_broker()
    run.answer(decision)
    assert run.pair.console.outcome == Refused(decision)
    assert run.pair.events["agent"][-2:] == [Sealed(7, "{}"), Refused(decision)]
    assert run.setup.machine.ended == decision


def test_a_wrong_code_through_the_broker_spends_it_and_tells_the_engineer() -> None:
    from broker.wire.code import JoinCode
    run = through_broker(agent_code=JoinCode("4821", "000001"))
    assert [s.type for s in run.pair.sent["agent"]][-1] == "pairing_failed"
    assert run.pair.sent["agent"][-1].fields == {"reason": "wrong_code"}
    assert run.pair.agent.outcome == Failed(Failure.WRONG_CODE, "the code did not match: "
                                            "pairing failed", Source.LOCAL)
    outcome = run.pair.console.outcome
    assert isinstance(outcome, Failed)
    assert (outcome.reason, outcome.source) == ("wrong_code", Source.ENDED)
    assert "did not match" in outcome.message
    assert run.setup.machine.ended == "wrong_code"


def test_a_swapped_engineer_key_through_the_broker_is_a_key_mismatch() -> None:
    run = through_broker(ssh_key=OTHER_KEY)
    assert run.pair.sent["agent"][-1] == Send("pairing_failed", {"reason": "key_mismatch"})
    assert isinstance(run.pair.agent.outcome, Failed)
    assert run.pair.agent.outcome.reason == Failure.KEY_MISMATCH
    outcome = run.pair.console.outcome
    assert isinstance(outcome, Failed) and outcome.reason == "key_mismatch"
    assert outcome.source is Source.ENDED
    assert [e for e in run.pair.events["console"] if isinstance(e, Paired)] == []


@pytest.mark.parametrize("who", ["console", "agent"])
def test_a_withdrawal_through_the_broker_ends_the_join_for_both(who: str) -> None:
    run = through_broker()
    reason = "engineer_left" if who == "console" else "agent_quit"
    run.client(who, run.pair.of(who).withdraw(reason))
    assert run.setup.machine.ended == reason
    other = run.pair.agent if who == "console" else run.pair.console
    assert isinstance(other.outcome, Failed)
    assert (other.outcome.reason, other.outcome.source) == (reason, Source.ENDED)


# -- back to back, every step ------------------------------------------------

def test_back_to_back_pairing_reaches_the_customer() -> None:
    pair, _relay = paired()
    assert pair.console.step is Step.CONSENT
    assert pair.agent.step is Step.ASKING
    assert pair.console.deadline() == MAX_CONSENT_WAIT
    assert pair.console.sas == pair.agent.sas and pair.console.sas is not None
    assert kinds(pair.events["console"]) == ["Joined", "Paired"]


def test_deadlines_of_each_step() -> None:
    console, agent = Handshake(console_side(), CODE), Handshake(agent_side(), CODE)
    assert console.deadline() is None
    console.start(10.0)
    agent.start(10.0)
    assert console.deadline() == agent.deadline() == 10.0 + STEP_TIMEOUT
    (pake, _joined) = console.receive(message("joined", session="s1", alias="a"), 20.0)
    assert console.deadline() == 20.0 + STEP_TIMEOUT
    assert isinstance(pake, Send)
    (reply,) = agent.receive(message("pake", **pake.fields), 30.0)
    assert agent.deadline() == 30.0 + STEP_TIMEOUT
    assert isinstance(reply, Send)
    (sealed,) = console.receive(message("pake", **reply.fields), 40.0)
    assert isinstance(sealed, Send)
    agent_sealed, _paired = agent.receive(message("sealed", **sealed.fields), 50.0)
    assert agent.deadline() is None  # the customer's prompt has its own timeout
    assert isinstance(agent_sealed, Send)
    console.receive(message("sealed", **agent_sealed.fields), 60.0)
    assert console.deadline() == 60.0 + MAX_CONSENT_WAIT
    agent.answer(receipt=b"r", signature=b"s", decision="granted", granted=("view",), now=70.0)
    assert agent.deadline() == 70.0 + STEP_TIMEOUT


def test_after_a_refusal_the_seal_is_awaited_briefly_and_the_refusal_stands() -> None:
    pair, _relay = paired()
    (consent,) = pair.agent.answer(receipt=b"r", signature=b"s", decision="denied", granted=(),
                                   now=100.0)
    assert isinstance(consent, Send) and consent.type == "consent"
    assert b64decode(consent.fields["receipt"]) == b"r"
    assert pair.agent.deadline() == 100.0 + SEAL_WAIT
    assert pair.agent.tick(100.0 + SEAL_WAIT) == [Refused("denied")]


@pytest.mark.parametrize("how", ["seal", "ended", "lost"])
def test_a_refusal_ends_refused_however_the_broker_closes(how: str) -> None:
    pair, _relay = paired()
    pair.agent.answer(receipt=b"r", signature=b"s", decision="timeout", granted=(), now=1.0)
    if how == "seal":
        out = pair.agent.receive(message("consent_sealed", seq=3, checkpoint="c"), 2.0)
        assert out == [Sealed(3, "c"), Refused("timeout")]
    elif how == "ended":
        out = pair.agent.receive(message("ended", reason="timeout", message="m"), 2.0)
        assert out == [Refused("timeout")]
    else:
        assert pair.agent.lost(2.0) == [Refused("timeout")]


def test_a_grant_keeps_seals_that_come_before_the_relay() -> None:
    pair, _relay = paired()
    pair.agent.answer(receipt=b"r", signature=b"s", decision="granted", granted=("view",),
                      now=1.0)
    assert pair.agent.receive(message("consent_sealed", seq=3, checkpoint="c"), 2.0) == [
        Sealed(3, "c")]
    assert pair.agent.receive(message("relay_open"), 2.0) == [Established(("view",))]
    assert pair.agent.receive(message("consent_sealed", seq=4, checkpoint="d"), 3.0) == []


def test_the_console_hears_the_customers_answer() -> None:
    pair, _relay = paired()
    result = {"receipt": "AA==", "signature": "AA=="}
    assert pair.console.receive(message("consent_result", decision="denied", granted=["view"],
                                        **result), 2.0) == [Refused("denied")]
    pair, _relay = paired()
    assert pair.console.receive(message("consent_result", decision="granted",
                                        granted=["view", "control"], **result), 2.0) == [
        Established(("view", "control"))]


# -- refusals: wrong code, tampering, bad key exchange -----------------------

def test_a_wrong_code_is_found_by_the_agent_which_says_so() -> None:
    from broker.wire.code import JoinCode
    pair, _relay = paired(agent_code=JoinCode("4821", "193776"))
    assert pair.sent["agent"][-1] == Send("pairing_failed", {"reason": "wrong_code"})
    assert isinstance(pair.agent.outcome, Failed)
    assert pair.agent.outcome.reason == Failure.WRONG_CODE
    assert pair.console.step is Step.SEALED  # it hears the broker's `ended` next
    assert pair.agent.sas is None or pair.agent.sas != pair.console.sas


def _flip(body: object) -> str:
    raw = bytearray(base64.b64decode(str(body)))
    raw[-1] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("sender", ["console", "agent"])
@pytest.mark.parametrize("msg_type", ["pake", "sealed"])
def test_a_tampered_message_fails_as_a_wrong_code(sender: str, msg_type: str) -> None:
    def tamper(role: str, t: str, fields: dict[str, object]) -> dict[str, object]:
        return {**fields, "body": _flip(fields["body"])} if (role, t) == (sender,
                                                                            msg_type) else fields

    pair, _relay = paired(tamper=tamper)
    failed = [o for o in (pair.console.outcome, pair.agent.outcome) if isinstance(o, Failed)]
    assert [f.reason for f in failed] == [Failure.WRONG_CODE]
    # Only the agent tells the broker (the code is spent, the engineer told).
    agent_said = [s.type for s in pair.sent["agent"]]
    assert ("pairing_failed" in agent_said) is isinstance(pair.agent.outcome, Failed)
    assert "pairing_failed" not in [s.type for s in pair.sent["console"]]
    assert not [e for e in pair.events["agent"] if isinstance(e, Paired)] or \
        not [e for e in pair.events["console"] if isinstance(e, Paired)]


def _console_at_sealed() -> tuple[Handshake, Any]:
    """A console waiting for the agent's key exchange, and the agent's pairing."""
    from broker.wire.e2e import Pairing
    console = Handshake(console_side(), CODE)
    console.start(0.0)
    (pake, _joined) = console.receive(message("joined", session="s1", alias="a"), 0.0)
    assert isinstance(pake, Send)
    agent = Pairing("agent", CODE, "s1")
    ours = agent.start()
    agent.receive_pake(b64decode(pake.fields["body"]))
    console.receive(message("pake", body=b64encode(ours)), 0.0)
    return console, agent


@pytest.mark.parametrize("payload", [
    {"consent_timeout": 60},  # no host key
    {"host_key": "", "consent_timeout": 60},
    {"host_key": "k" * 201, "consent_timeout": 60},
    {"host_key": HOST_KEY, "consent_timeout": 0},
    {"host_key": HOST_KEY, "consent_timeout": 601},
    {"host_key": HOST_KEY, "consent_timeout": True},
    {"host_key": HOST_KEY, "consent_timeout": "60"},
])
def test_a_key_exchange_without_a_usable_host_key_or_timeout_fails(
        payload: dict[str, object]) -> None:
    console, agent = _console_at_sealed()
    out = console.receive(message("sealed", body=b64encode(agent.seal(payload))), 1.0)
    assert kinds(out) == ["Failed"]
    assert isinstance(out[0], Failed) and out[0].reason == Failure.BAD_SEALED


def test_a_key_exchange_that_opens_but_is_no_object_fails() -> None:
    console, agent = _console_at_sealed()
    box = agent._box("agent->peer").encrypt(b"[1, 2]")
    out = console.receive(message("sealed", body=b64encode(bytes(box))), 1.0)
    assert isinstance(out[0], Failed) and out[0].reason == Failure.BAD_SEALED


@pytest.mark.parametrize("offered", [{}, {"ssh_key": 5}, {"ssh_key": OTHER_KEY},
                                     {"ssh_key": "not a key"}])
def test_an_engineer_key_that_is_not_the_announced_one_is_refused(
        offered: dict[str, object]) -> None:
    from broker.wire.e2e import Pairing
    agent = Handshake(agent_side(), CODE)
    agent.start(0.0)
    console = Pairing("console", CODE, "s1")
    (reply,) = agent.receive(message("pake", body=b64encode(console.start())), 0.0)
    assert isinstance(reply, Send)
    console.receive_pake(b64decode(reply.fields["body"]))
    out = agent.receive(message("sealed", body=b64encode(console.seal(offered))), 1.0)
    assert kinds(out) == ["send pairing_failed", "Failed"]
    assert out[0] == Send("pairing_failed", {"reason": "key_mismatch"})
    assert isinstance(agent.outcome, Failed) and agent.outcome.reason == Failure.KEY_MISMATCH


def test_a_key_with_another_comment_is_the_same_key() -> None:
    assert same_public_key(ENGINEER_KEY + " alice@laptop", ENGINEER_KEY)
    assert not same_public_key(OTHER_KEY, ENGINEER_KEY)
    assert not same_public_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIKey", ENGINEER_KEY)  # name
    assert not same_public_key("ssh-ed25519", "ssh-ed25519")
    assert not same_public_key("ssh-ed25519 !!!", "ssh-ed25519 !!!")
    assert not same_public_key("ssh-ed25519 AAAA", "ssh-ed25519 AAAA")  # blob too short


# -- refusals: messages out of place, the broker's word ----------------------

def _at(role: str, step: str) -> Handshake:
    """A handshake of `role` at `step` (reached by a real pairing)."""
    if step == "joining":
        hs = Handshake(console_side() if role == "console" else agent_side(), CODE)
        hs.start(0.0)
        return hs
    if step == "pake":  # console only
        hs = Handshake(console_side(), CODE)
        hs.start(0.0)
        hs.receive(message("joined", session="s1", alias="a"), 0.0)
        return hs
    if step == "sealed":
        return _console_at_sealed()[0] if role == "console" else _agent_at_sealed()
    pair, _relay = paired()
    hs = pair.of(role)
    if step == "answered":
        hs.answer(receipt=b"r", signature=b"s", decision="granted", granted=("view",), now=1.0)
    return hs


def _agent_at_sealed() -> Handshake:
    from broker.wire.e2e import Pairing
    agent = Handshake(agent_side(), CODE)
    agent.start(0.0)
    agent.receive(message("pake", body=b64encode(Pairing("console", CODE, "s1").start())), 0.0)
    return agent


OUT_OF_PLACE = [
    ("console", "joining", message("pake", body="AA==")),  # before the agent is there
    ("console", "joining", message("consent_result", decision="granted", granted=["view"],
                                   receipt="AA==", signature="AA==")),
    ("console", "pake", message("sealed", body="AA==")),  # sealed before pake
    ("console", "pake", message("joined", session="s1", alias="a")),  # a second joined
    ("console", "sealed", message("consent_result", decision="granted", granted=["view"],
                                  receipt="AA==", signature="AA==")),  # consent unpaired
    ("console", "consent", message("relay_open")),  # not the console's
    ("console", "consent", message("pake", body="AA==")),  # re-pairing
    ("console", "consent", message("nameplate", nameplate="1234", expires_in=5)),
    ("agent", "joining", message("sealed", body="AA==")),
    ("agent", "joining", message("joined", session="s1", alias="a")),  # the console's
    ("agent", "sealed", message("pake", body="AA==")),  # a second pake
    ("agent", "asking", message("pake", body="AA==")),
    ("agent", "asking", message("relay_open")),  # a relay with no answer given
    ("agent", "answered", message("consent_result", decision="granted", granted=["view"],
                                  receipt="AA==", signature="AA==")),
    ("agent", "answered", message("control_request")),  # not before the relay
]


@pytest.mark.parametrize(("role", "step", "msg"), OUT_OF_PLACE,
                         ids=[f"{r}-{s}-{m.type}" for r, s, m in OUT_OF_PLACE])
def test_a_message_out_of_place_fails_the_handshake(role: str, step: str, msg: Message) -> None:
    hs = _at(role, step)
    out = hs.receive(msg, 1.0)
    assert kinds(out) == ["Failed"]  # nothing is sent in answer
    assert isinstance(out[0], Failed)
    assert (out[0].reason, out[0].source) == (Failure.UNEXPECTED, Source.LOCAL)
    assert msg.type in out[0].message
    assert hs.done and hs.receive(msg, 2.0) == []


def test_a_relay_for_a_refused_answer_fails() -> None:
    pair, _relay = paired()
    pair.agent.answer(receipt=b"r", signature=b"s", decision="denied", granted=(), now=1.0)
    (out,) = pair.agent.receive(message("relay_open"), 2.0)
    assert isinstance(out, Failed) and out.reason == Failure.UNEXPECTED


@pytest.mark.parametrize("frame", ["{not json", b"\x00binary", encode("live", id=1)[:-1],
                                   '{"v": 2, "type": "pake", "body": "AA=="}'])
def test_a_frame_that_is_no_message_fails(frame: str | bytes) -> None:
    hs = _at("console", "joining")
    (out,) = hs.receive_frame(frame, 1.0)
    assert isinstance(out, Failed) and out.reason == Failure.UNREADABLE
    assert hs.receive_frame(frame, 1.0) == []


STEPS = [("console", "joining"), ("console", "pake"), ("console", "sealed"),
         ("console", "consent"), ("agent", "joining"), ("agent", "sealed"),
         ("agent", "asking"), ("agent", "answered")]


@pytest.mark.parametrize(("role", "step"), STEPS)
def test_the_broker_ending_or_refusing_ends_every_step(role: str, step: str) -> None:
    hs = _at(role, step)
    assert hs.receive(message("ended", reason="broker_shutdown", message="stopping"), 1.0) == [
        Failed("broker_shutdown", "stopping", Source.ENDED)]
    hs = _at(role, step)
    assert hs.receive(message("error", code="unknown_code", message="nobody"), 1.0) == [
        Failed("unknown_code", "nobody", Source.ERROR)]
    hs = _at(role, step)
    assert hs.lost(1.0, "gone") == [Failed(Failure.CLOSED, "gone", Source.LOCAL)]
    assert hs.lost(2.0) == [] and hs.tick(1e9) == []


@pytest.mark.parametrize(("role", "step"), STEPS)
def test_a_step_that_hears_nothing_in_time_fails(role: str, step: str) -> None:
    hs = _at(role, step)
    deadline = hs.deadline()
    if (role, step) == ("agent", "asking"):
        assert deadline is None and hs.tick(1e9) == []  # the prompt's own timeout rules
        return
    assert deadline is not None
    assert hs.tick(deadline - 0.001) == []
    assert hs.tick(deadline) == [Failed(Failure.TIMEOUT, "the broker did not answer in time",
                                        Source.LOCAL)]
    assert hs.done and hs.deadline() is None and hs.tick(deadline + 100) == []


@pytest.mark.parametrize(("role", "step"), STEPS)
def test_withdrawing_says_end_where_the_broker_has_a_join(role: str, step: str) -> None:
    hs = _at(role, step)
    reason = "engineer_left" if role == "console" else "agent_quit"
    out = hs.withdraw(reason)
    assert out[0] == Send("end", {"reason": reason})
    assert hs.done and isinstance(hs.outcome, Failed)
    assert hs.outcome.reason == Failure.WITHDRAWN
    assert hs.withdraw(reason) == []


def test_withdrawing_before_the_join_says_nothing() -> None:
    hs = Handshake(console_side(), CODE)
    assert hs.withdraw("engineer_left") == []
    assert hs.done


def test_our_own_mistakes_are_local_protocol_errors() -> None:
    hs = Handshake(console_side(), CODE)
    with pytest.raises(LocalProtocolError):
        hs.receive(message("joined", session="s1", alias="a"), 0.0)  # before start
    hs.start(0.0)
    with pytest.raises(LocalProtocolError):
        hs.start(0.0)
    with pytest.raises(LocalProtocolError):  # the console gives no consent
        hs.answer(receipt=b"r", signature=b"s", decision="granted", granted=(), now=0.0)
    agent = _at("agent", "sealed")
    with pytest.raises(LocalProtocolError):  # not before the customer was asked
        agent.answer(receipt=b"r", signature=b"s", decision="granted", granted=(), now=0.0)


def test_every_awaited_message_is_one_the_catalogue_lets_the_broker_send() -> None:
    """The handshake's own table cannot drift from the catalogue."""
    conn_phase = {("console", Step.JOINING): (Conn.CONSOLE, Phase.WAITING)}
    for (role, step), types in _AWAITS.items():
        conn, phase = conn_phase.get((role, step), (
            Conn.CONSOLE if role == "console" else Conn.AGENT_SESSION, Phase.PAIRING))
        for msg_type in types:
            assert may_send(conn, phase, msg_type) or may_send(conn, Phase.ACTIVE, msg_type), (
                role, step, msg_type)


def test_a_cluster_nodes_moved_answer_to_the_join_ends_it_with_the_url() -> None:
    hs = _at("console", "joining")
    assert hs.receive(message("moved", url="wss://node2.example:8443"), 1.0) == [
        Failed("moved", "wss://node2.example:8443", Source.MOVED)]
    # Only in answer to the join: once paired, a `moved` is the broker's mistake.
    hs = _at("console", "pake")
    [failed] = hs.receive(message("moved", url="wss://node2.example:8443"), 1.0)
    assert isinstance(failed, Failed) and failed.reason == Failure.UNEXPECTED
    hs = _at("agent", "joining")
    [failed] = hs.receive(message("moved", url="wss://node2.example:8443"), 1.0)
    assert isinstance(failed, Failed) and failed.reason == Failure.UNEXPECTED
