"""End-to-end pairing: SPAKE2 between console and agent, keyed boxes."""

from __future__ import annotations

import re

import pytest

from broker.wire.code import JoinCode, parse_code
from broker.wire.e2e import Pairing
from broker.wire.errors import PairingError, ProtocolError
from broker.wire.messages import b64encode, decode, encode

CODE = parse_code("4821-193-775")


def paired(
    console_code: JoinCode = CODE,
    agent_code: JoinCode = CODE,
    console_session: str = "s-1",
    agent_session: str = "s-1",
) -> tuple[Pairing, Pairing]:
    console = Pairing("console", console_code, console_session)
    agent = Pairing("agent", agent_code, agent_session)
    to_agent, to_console = console.start(), agent.start()
    agent.receive_pake(to_agent)
    console.receive_pake(to_console)
    return console, agent


def test_same_code_same_key() -> None:
    console, agent = paired()
    assert console.ready and agent.ready
    assert console.sas == agent.sas
    assert re.fullmatch(r"[0-9A-F]{4}-[0-9A-F]{4}", console.sas)
    assert agent.open(console.seal({"hello": "agent", "n": 1})) == {"hello": "agent", "n": 1}
    offer = {"host_key": "ssh-ed25519 AAAA", "consent_timeout": 60}
    assert console.open(agent.seal(offer)) == offer


def test_each_pairing_has_its_own_key() -> None:
    first, _ = paired()
    second, _ = paired()
    assert first.sas != second.sas


def test_sealing_is_randomised() -> None:
    console, agent = paired()
    a, b = console.seal({"x": 1}), console.seal({"x": 1})
    assert a != b
    assert agent.open(a) == agent.open(b) == {"x": 1}


def test_wrong_secret_fails_to_open() -> None:
    console, agent = paired(agent_code=JoinCode("4821", "193776"))
    assert console.sas != agent.sas
    with pytest.raises(PairingError):
        agent.open(console.seal({"k": "v"}))
    with pytest.raises(PairingError):
        console.open(agent.seal({"k": "v"}))


def test_code_for_another_nameplate_fails() -> None:
    # Same six secret digits, other agent: the password binds the nameplate.
    console, agent = paired(console_code=JoinCode("4831", CODE.secret))
    with pytest.raises(PairingError):
        agent.open(console.seal({}))


def test_no_reflection() -> None:
    console, agent = paired()
    with pytest.raises(PairingError):
        console.open(console.seal({"echo": True}))
    with pytest.raises(PairingError):
        agent.open(agent.seal({"echo": True}))


def test_pake_reflection_refused() -> None:
    console = Pairing("console", CODE, "s-1")
    own = console.start()
    with pytest.raises(PairingError):
        console.receive_pake(own)


def test_other_session_fails() -> None:
    console, agent = paired(agent_session="s-2")
    with pytest.raises(PairingError):
        agent.open(console.seal({}))
    with pytest.raises(PairingError):
        console.open(agent.seal({}))


def test_tampered_box_fails() -> None:
    console, agent = paired()
    box = bytearray(console.seal({"host_key": "k"}))
    box[-1] ^= 1
    with pytest.raises(PairingError):
        agent.open(bytes(box))
    for junk in (b"", b"short", bytes(100)):
        with pytest.raises(PairingError):
            agent.open(junk)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"A",
        b"B" + bytes(32),  # a message from the wrong side
        b"A" + bytes(32),  # not in the right group
        b"A" + bytes([2]) * 32,  # not a point on the curve
        b"A" + bytes(31),
        b"A" + bytes(200),
    ],
)
def test_garbage_pake_is_a_pairing_error(garbage: bytes) -> None:
    agent = Pairing("agent", CODE, "s-1")
    agent.start()
    with pytest.raises(PairingError):
        agent.receive_pake(garbage)


def test_forged_point_gives_no_shared_key() -> None:
    # A valid curve point from someone who does not know the code is accepted
    # by SPAKE2, but yields a key that opens nothing.
    agent = Pairing("agent", CODE, "s-1")
    to_console = agent.start()
    agent.receive_pake(b"A" + bytes([6]) * 32)
    forger = Pairing("console", JoinCode("4821", "000000"), "s-1")
    forger.start()
    forger.receive_pake(to_console)
    with pytest.raises(PairingError):
        agent.open(forger.seal({}))


def test_order_of_calls() -> None:
    console = Pairing("console", CODE, "s-1")
    with pytest.raises(ProtocolError):
        console.seal({})
    with pytest.raises(ProtocolError):
        console.open(b"x" * 60)
    with pytest.raises(ProtocolError):
        _ = console.sas
    with pytest.raises(ProtocolError):
        console.receive_pake(b"B" + bytes(32))  # before start()
    agent = Pairing("agent", CODE, "s-1")
    console.start()
    with pytest.raises(ProtocolError):
        console.start()
    to_console = agent.start()
    console.receive_pake(to_console)
    with pytest.raises(ProtocolError):
        console.receive_pake(to_console)  # a second pake message


def test_sealed_payload_limits() -> None:
    console, agent = paired()
    big = {"pad": "x" * 2030}
    box = console.seal(big)
    # The largest sealed box still fits the `sealed` message.
    assert decode(encode("sealed", body=b64encode(box)))["body"]
    assert agent.open(box) == big
    with pytest.raises(ProtocolError):
        console.seal({"pad": "x" * 3000})


def test_pake_message_fits_its_field() -> None:
    msg = Pairing("console", CODE, "s-1").start()
    assert decode(encode("pake", body=b64encode(msg)))["body"]


def test_non_object_payload_refused() -> None:
    console, agent = paired()
    with pytest.raises(ProtocolError):
        agent.open(console.seal([1, 2]))  # type: ignore[arg-type]


@pytest.mark.parametrize("plaintext", [b"not json", b'"\xff"', b"[" * 5000 + b"]" * 5000])
def test_unparsable_plaintext_is_a_protocol_error(plaintext: bytes) -> None:
    # A peer holding the key but sending junk: refused, never a traceback.
    # (Sealed through the private box because seal() only emits valid JSON.)
    console, agent = paired()
    box = bytes(console._box("console->peer").encrypt(plaintext))
    with pytest.raises(ProtocolError):
        agent.open(box)
