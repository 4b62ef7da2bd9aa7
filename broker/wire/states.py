"""Which control messages each kind of connection may send, in which phase.

One table, in one file (after ``h11/_state.py``): the broker consults it for
every frame it receives, so a frame that is valid JSON but arrives at the
wrong time is refused the same way as garbage.

Connections:
- ``agent``: the agent's long-lived control connection (/v1/agent)
- ``agent_session``: one per join, opened by the agent (/v1/agent/session)
- ``console``: one per join, opened by the console (/v1/console)

Phases move forward only: login → ready → pairing → active → closed.
A console stays ready while it reads the audit log (admins only: the role is
the broker's business, not the table's), so one connection can run several
queries; a `join` moves it on.
"""

from __future__ import annotations

from enum import StrEnum

from broker.wire.errors import ProtocolError

__all__ = ["Conn", "Phase", "check_binary", "check_inbound"]


class Conn(StrEnum):
    AGENT = "agent"
    AGENT_SESSION = "agent_session"
    CONSOLE = "console"


class Phase(StrEnum):
    HELLO = "hello"  # first frame must introduce the peer
    LOGIN = "login"  # console: challenge issued, proof awaited
    READY = "ready"  # introduced; waiting for work
    PAIRING = "pairing"  # PAKE, key exchange and consent in progress
    ACTIVE = "active"  # consent recorded; binary frames flow
    CLOSED = "closed"


# (connection, phase) -> control types that connection may send in that phase.
INBOUND: dict[tuple[Conn, Phase], frozenset[str]] = {
    (Conn.AGENT, Phase.HELLO): frozenset({"hello"}),
    (Conn.AGENT, Phase.READY): frozenset(),
    (Conn.AGENT_SESSION, Phase.HELLO): frozenset({"attach"}),
    (Conn.AGENT_SESSION, Phase.PAIRING): frozenset(
        {"pake", "sealed", "pairing_failed", "consent", "end"}
    ),
    # `consent` again: the customer's answer to the engineer's request for control.
    # `confirm_live` / `input_dropped`: see their entries in `broker.wire.messages`.
    (Conn.AGENT_SESSION, Phase.ACTIVE): frozenset(
        {"rights", "consent", "confirm_live", "input_dropped", "end"}
    ),
    (Conn.CONSOLE, Phase.HELLO): frozenset({"login"}),
    (Conn.CONSOLE, Phase.LOGIN): frozenset({"login_proof"}),
    (Conn.CONSOLE, Phase.READY): frozenset(
        {"join", "audit_query", "audit_session_query", "audit_verify"}
    ),
    (Conn.CONSOLE, Phase.PAIRING): frozenset({"pake", "sealed", "end"}),
    (Conn.CONSOLE, Phase.ACTIVE): frozenset({"request_control", "end"}),
}

# What the broker sends an agent session, by phase — what the agent must
# accept there (the other connections' replies are one-to-one with requests).
OUTBOUND_AGENT_SESSION: dict[Phase, frozenset[str]] = {
    Phase.PAIRING: frozenset(
        {"joined", "pake", "sealed", "relay_open", "consent_sealed", "ended", "error"}),
    Phase.ACTIVE: frozenset(
        {"control_request", "control_result", "consent_sealed", "ended", "error"}),
}

# Phases in which a connection may send binary (relay) frames.
BINARY: frozenset[tuple[Conn, Phase]] = frozenset(
    {(Conn.AGENT_SESSION, Phase.ACTIVE), (Conn.CONSOLE, Phase.ACTIVE)}
)


def check_inbound(conn: Conn, phase: Phase, msg_type: str) -> None:
    """Raise `ProtocolError` unless `conn` may send `msg_type` in `phase`."""
    if msg_type not in INBOUND.get((conn, phase), frozenset()):
        raise ProtocolError(
            f"{msg_type!r} is not allowed from {conn.value} while {phase.value}",
            "unexpected_message",
        )


def check_binary(conn: Conn, phase: Phase) -> None:
    if (conn, phase) not in BINARY:
        raise ProtocolError(
            f"binary data is not allowed from {conn.value} while {phase.value}",
            "unexpected_binary",
        )
