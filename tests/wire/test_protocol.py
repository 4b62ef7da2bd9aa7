"""The catalogue and the tables drawn from it: which connection may send
what, and when, and what the broker may send."""

from __future__ import annotations

import pytest

from broker.wire.errors import ProtocolError
from broker.wire.machine.protocol import (
    BINARY,
    CATALOGUE,
    INBOUND,
    OUTBOUND,
    Conn,
    Party,
    Phase,
    check_binary,
    check_inbound,
    may_send,
)
from broker.wire.messages import SCHEMA

A, S, C = Conn.AGENT, Conn.AGENT_SESSION, Conn.CONSOLE

# The protocol as the design describes it, written out independently of the
# table so that a change to the table has to be a change to this list too.
# What an end that stayed (active) or came back (resuming) says in a resume.
_RESUME_PEER = {"resume_challenge", "resume_accepted", "resume_refused"}
ALLOWED = {
    (A, Phase.HELLO): {"hello"},
    (S, Phase.HELLO): {"attach", "resume"},
    (S, Phase.PAIRING): {"pake", "sealed", "pairing_failed", "consent", "end"},
    # consent: answering request_control; confirm_live, input_dropped, chat_lines:
    # agent claims; invite: a code for another engineer; rights, remove: this
    # seat's engineer only; ack: how much of the stream arrived
    (S, Phase.ACTIVE): {"rights", "consent", "confirm_live", "input_dropped", "end",
                        "invite", "remove", "file_transferred", "chat_lines", "ack",
                        *_RESUME_PEER},
    # Back after a drop: the proof exchange, or the customer ending it.
    (S, Phase.RESUMING): {"resume_proof", "end", *_RESUME_PEER},
    (C, Phase.HELLO): {"login"},
    (C, Phase.LOGIN): {"login_proof"},
    (C, Phase.READY): {"join", "resume", "audit_query", "audit_session_query", "audit_verify"},
    (C, Phase.WAITING): {"end"},  # joined, the agent not attached yet: leaving is all
    (C, Phase.PAIRING): {"pake", "sealed", "end"},
    (C, Phase.ACTIVE): {"request_control", "end", "ack", *_RESUME_PEER},
    (C, Phase.RESUMING): {"resume_proof", "end", *_RESUME_PEER},
}

ALL = [(conn, phase, t) for conn in Conn for phase in Phase for t in sorted(SCHEMA)]


@pytest.mark.parametrize(("conn", "phase", "msg_type"), ALL)
def test_inbound_matches_the_protocol(conn: Conn, phase: Phase, msg_type: str) -> None:
    if msg_type in ALLOWED.get((conn, phase), set()):
        check_inbound(conn, phase, msg_type)
    else:
        with pytest.raises(ProtocolError) as info:
            check_inbound(conn, phase, msg_type)
        assert info.value.code == "unexpected_message"


def test_table_names_only_real_message_types() -> None:
    for types in INBOUND.values():
        assert types <= set(SCHEMA)


@pytest.mark.parametrize(
    ("conn", "phase", "msg_type"),
    [
        (C, Phase.HELLO, "join"),  # join before login
        (C, Phase.LOGIN, "join"),  # join before the proof
        (C, Phase.HELLO, "login_proof"),
        (C, Phase.READY, "login"),  # a second login
        (C, Phase.ACTIVE, "pake"),  # re-pairing a live session
        (C, Phase.PAIRING, "consent"),  # only the agent signs consent
        (C, Phase.ACTIVE, "rights"),  # only the agent changes rights
        (S, Phase.PAIRING, "join"),
        (S, Phase.PAIRING, "request_control"),  # only the engineer asks for control
        (C, Phase.PAIRING, "request_control"),  # nothing to upgrade before consent
        (C, Phase.READY, "request_control"),
        (C, Phase.ACTIVE, "audit_query"),  # the audit API is not for live sessions
        (C, Phase.HELLO, "audit_query"),  # nor before login
        (C, Phase.LOGIN, "audit_session_query"),
        (S, Phase.ACTIVE, "control_result"),  # the broker's answer, never the agent's
        (C, Phase.ACTIVE, "control_result"),
        (C, Phase.READY, "audit_page"),  # replies only flow outwards
        (C, Phase.READY, "audit_verify_result"),
        (C, Phase.ACTIVE, "audit_verify"),
        (A, Phase.READY, "hello"),
        (A, Phase.READY, "end"),
        (A, Phase.HELLO, "login"),
    ],
)
def test_notable_refusals(conn: Conn, phase: Phase, msg_type: str) -> None:
    with pytest.raises(ProtocolError):
        check_inbound(conn, phase, msg_type)


def test_closed_refuses_everything() -> None:
    for conn in Conn:
        for t in SCHEMA:
            with pytest.raises(ProtocolError):
                check_inbound(conn, Phase.CLOSED, t)
        with pytest.raises(ProtocolError):
            check_binary(conn, Phase.CLOSED)


def test_unknown_type_refused_everywhere() -> None:
    for conn in Conn:
        for phase in Phase:
            with pytest.raises(ProtocolError):
                check_inbound(conn, phase, "shell_exec")


@pytest.mark.parametrize(("conn", "phase"), [(c, p) for c in Conn for p in Phase])
def test_binary_only_when_active_on_a_session(conn: Conn, phase: Phase) -> None:
    if (conn, phase) in {(S, Phase.ACTIVE), (C, Phase.ACTIVE)}:
        check_binary(conn, phase)
    else:
        with pytest.raises(ProtocolError) as info:
            check_binary(conn, phase)
        assert info.value.code == "unexpected_binary"
    assert (A, Phase.ACTIVE) not in BINARY


def test_agent_session_accepts_the_consent_seal_where_the_broker_sends_it() -> None:
    from broker.wire.machine.protocol import OUTBOUND_AGENT_SESSION

    for phase in (Phase.PAIRING, Phase.ACTIVE):
        assert "consent_sealed" in OUTBOUND_AGENT_SESSION[phase]
    for types in OUTBOUND_AGENT_SESSION.values():
        assert types <= set(SCHEMA)


def test_every_message_of_the_schema_is_in_the_catalogue_and_back() -> None:
    assert {route.type for route in CATALOGUE} == set(SCHEMA)


def test_every_route_has_a_direction_through_the_broker_and_says_what_it_provokes() -> None:
    for route in CATALOGUE:
        assert Party.BROKER in (route.sender, route.receiver), route
        assert route.sender is not route.receiver, route
        assert route.phases and route.provokes.strip(), route
    # Rows of one direction of a type (consent: to the join, to a request for
    # control) cover disjoint phases: an overlap would hide a contradiction.
    seen: set[tuple[str, Party, Party, Phase]] = set()
    for r in CATALOGUE:
        for phase in r.phases:
            key = (r.type, r.sender, r.receiver, phase)
            assert key not in seen, key
            seen.add(key)


def test_what_peers_send_and_what_the_broker_sends_are_apart() -> None:
    # Replies only flow outwards, requests only inwards.
    inbound = {t for types in INBOUND.values() for t in types}
    outbound = {t for types in OUTBOUND.values() for t in types}
    # pake, sealed, the resume's proofs and acks: forwarded end to end;
    # rights: the customer's, told the engineer
    assert inbound & outbound == {"pake", "sealed", "rights", "resume", "resume_challenge",
                                  "resume_proof", "ack"}
    assert "error" in outbound and "error" not in inbound
    assert "ended" in outbound and "end" in inbound


@pytest.mark.parametrize(
    ("conn", "phase", "msg_type", "allowed"),
    [
        (C, Phase.WAITING, "joined", True),
        (C, Phase.PAIRING, "joined", True),  # the move it makes, just recorded
        (C, Phase.ACTIVE, "joined", False),
        (S, Phase.PAIRING, "relay_open", True),
        (S, Phase.ACTIVE, "relay_open", True),
        (S, Phase.HELLO, "relay_open", False),
        (C, Phase.READY, "consent_result", False),
        (S, Phase.ACTIVE, "control_request", True),
        (C, Phase.ACTIVE, "control_request", False),
        (A, Phase.READY, "join_request", True),
        (A, Phase.HELLO, "error", True),
        (C, Phase.CLOSED, "ended", True),  # `ended` moves it to closed
        (C, Phase.CLOSED, "rights", False),
    ],
)
def test_what_the_broker_may_send(conn: Conn, phase: Phase, msg_type: str, allowed: bool) -> None:
    assert may_send(conn, phase, msg_type) is allowed
