"""A connection before its session: the handshake order from the catalogue,
and how long the broker waits at each step (time passed in)."""

from __future__ import annotations

import pytest

from broker.wire.errors import ProtocolError
from broker.wire.limits import OPEN_TIMEOUT
from broker.wire.machine.lobby import Lobby
from broker.wire.machine.protocol import Conn, Phase
from broker.wire.messages import encode

LOGIN = encode("login", user="alice")
PROOF = encode("login_proof", signature="AA==")
QUERY = encode("audit_query", limit=5)
JOIN = encode("join", nameplate="4821", wants=["view"])
HELLO = encode("hello", device_id="d1", device_key="A" * 43 + "=", alias="Desk")
ATTACH = encode("attach", session="s1", token="t1")


def test_a_console_logs_in_reads_the_log_and_joins_in_that_order() -> None:
    lobby = Lobby(Conn.CONSOLE, 0.0, ready_timeout=600.0)
    steps = [(LOGIN, "login", Phase.LOGIN), (PROOF, "login_proof", Phase.READY),
             (QUERY, "audit_query", Phase.READY), (QUERY, "audit_query", Phase.READY),
             (JOIN, "join", Phase.WAITING)]
    for now, (frame, msg_type, phase) in enumerate(steps, start=1):
        assert lobby.accept(frame, float(now)).type == msg_type
        assert lobby.phase is phase


@pytest.mark.parametrize(
    ("before", "frame"),
    [
        ([], JOIN),  # join before login
        ([], PROOF),
        ([LOGIN], JOIN),  # join before the proof
        ([LOGIN], LOGIN),
        ([LOGIN, PROOF], LOGIN),  # a second login
        ([LOGIN, PROOF], encode("request_control")),
        ([LOGIN, PROOF, JOIN], JOIN),  # one join per connection
        ([LOGIN, PROOF], b"\x00binary"),
        ([], "{not json"),
    ],
)
def test_a_console_out_of_order_is_refused(before: list[str], frame: str | bytes) -> None:
    lobby = Lobby(Conn.CONSOLE, 0.0, ready_timeout=600.0)
    for earlier in before:
        lobby.accept(earlier, 0.0)
    phase = lobby.phase
    with pytest.raises(ProtocolError):
        lobby.accept(frame, 1.0)
    assert lobby.phase is phase


def test_each_opening_step_gets_the_open_timeout_and_ready_its_own() -> None:
    lobby = Lobby(Conn.CONSOLE, 100.0, ready_timeout=600.0)
    assert lobby.timeout(100.0) == OPEN_TIMEOUT
    assert lobby.timeout(104.0) == OPEN_TIMEOUT - 4
    assert lobby.timeout(1000.0) == 0.0  # never negative
    lobby.accept(LOGIN, 105.0)
    assert lobby.timeout(105.0) == OPEN_TIMEOUT  # a fresh step
    lobby.accept(PROOF, 106.0)
    assert lobby.timeout(106.0) == 600.0
    lobby.accept(QUERY, 300.0)
    assert lobby.timeout(310.0) == 590.0  # from the last message
    assert lobby.timed_out().code == "timeout"


def test_an_agent_says_hello_then_only_listens() -> None:
    lobby = Lobby(Conn.AGENT, 0.0)
    assert lobby.timeout(0.0) == OPEN_TIMEOUT
    lobby.accept(HELLO, 1.0)
    assert lobby.phase is Phase.READY
    assert lobby.timeout(10_000.0) is None  # it waits for an engineer as long as it lives
    for frame in (HELLO, encode("end", reason="x"), LOGIN):
        with pytest.raises(ProtocolError) as info:
            lobby.accept(frame, 2.0)
        assert info.value.code == "unexpected_message"


def test_the_agent_side_of_a_join_attaches_first() -> None:
    lobby = Lobby(Conn.AGENT_SESSION, 0.0)
    with pytest.raises(ProtocolError):
        lobby.accept(encode("pake", body="AA=="), 0.5)
    lobby.accept(ATTACH, 1.0)
    assert lobby.phase is Phase.PAIRING  # the session's machine takes it from here
