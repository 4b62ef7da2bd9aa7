"""The protocol in one screen: every control message, who sends it to whom,
in which phase, and what it provokes.

Read this first (after the mailbox server of magic-wormhole, whose websocket
module opens the same way). Each row is one direction of one message type:

    sender -> receiver   phases of the connection the row is about
                         (the sender's for a message to the broker, the
                         receiver's as it reads it for one from the broker)
    then                 the phase that connection moves to when the
                         message does what it is for (None: it stays)
    provokes             what happens next

Connections (the three WebSocket endpoints):
- ``agent``: the agent's long-lived control connection (/v1/agent)
- ``agent_session``: one per join, opened by the agent (/v1/agent/session)
- ``console``: one per join, opened by the console (/v1/console)

Several engineers in one session. A session has up to
`MAX_ENGINEERS_PER_SESSION` seats, one per engineer, each a pair of
connections: the engineer's ``console`` and an ``agent_session`` of its own.
Only the customer makes a code: an active agent_session sends ``invite``,
and the broker answers ``invitation`` with a fresh nameplate bound to that
session (single use, 10 minutes, the same code format; a new invite replaces
the session's previous one). A console that joins with it follows exactly
the first engineer's path — ``join``, ``join_request`` to the agent's
control connection (the same session id, a token of its own), an
``agent_session`` that attaches, PAKE, sealed keys, consent — and becomes a
second seat of the same session. A join beyond the limit is refused to that
engineer (``error session_full``) before the customer is asked anything.

Why one agent_session per seat, not one connection with seats named: each
seat's SSH channel is its own end-to-end SSH connection with the agent, so
the relay stays one socket to one socket per seat, with no seat header in
the binary frames and no demultiplexing on the hot path; backpressure is
per seat for free (a slow engineer pauses reading only their own agent
socket, never the others'); and every existing message (``consent``,
``rights``, ``request_control``, ``confirm_live``, ``input_dropped``,
``chat_lines``) keeps
its meaning because the connection names the seat. Per seat, then:
``rights`` on a seat's agent_session narrows that engineer only,
``remove`` removes that engineer only (``ended`` reason
``engineer_removed`` to their two connections), a console's ``end`` or loss
is that engineer leaving; the others go on. The session ends when its last
seat goes, or for everyone at once on the agent's ``end`` (the shell is
shared: the customer ending, the shell exiting, the agent quitting), a
deadline, a protocol error or the broker stopping. Once a session has had
a second seat, ``roster`` (every active seat: id, login, display, rights,
and which is the receiver's) goes to every active connection whenever
someone joins, changes rights or leaves; a session that only ever had one
engineer sends none, so its frames are as they always were.

Phases move forward only: hello → login → ready → waiting → pairing → active
→ closed (each kind of connection uses some of them), with one loop: an
active seat's connection that breaks is held, a new connection that resumes
it is resuming, and a resume the peer accepts makes it active again. A console stays ready
while it reads the audit log (admins only: the role is the broker's
business, not the table's), so one connection can run several queries; a
`join` moves it on. ``error`` may go to any connection in any phase, just
before the broker closes it.

Everything else here is derived from `CATALOGUE`: the inbound table the
broker checks every frame against (`check_inbound`, `check_binary`), and
what the broker may send (`may_send`), which the session machine checks
before it emits a frame, so the catalogue cannot drift from the code.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from broker.wire.codes import ErrorCode
from broker.wire.errors import ProtocolError

__all__ = [
    "BINARY",
    "CATALOGUE",
    "INBOUND",
    "OUTBOUND",
    "OUTBOUND_AGENT_SESSION",
    "Conn",
    "Party",
    "Phase",
    "Route",
    "check_binary",
    "check_inbound",
    "may_send",
]


class Conn(StrEnum):
    """The kinds of connection the broker serves."""

    AGENT = "agent"
    AGENT_SESSION = "agent_session"
    CONSOLE = "console"


class Party(StrEnum):
    """Who sends or receives a message: a kind of connection, or the broker."""

    AGENT = "agent"
    AGENT_SESSION = "agent_session"
    CONSOLE = "console"
    BROKER = "broker"


class Phase(StrEnum):
    HELLO = "hello"  # first frame must introduce the peer
    LOGIN = "login"  # console: challenge issued, proof awaited
    READY = "ready"  # introduced; waiting for work
    WAITING = "waiting"  # console: joined; the agent has not attached yet
    PAIRING = "pairing"  # PAKE, key exchange and consent in progress
    ACTIVE = "active"  # consent recorded; binary frames flow
    HELD = "held"  # an active seat's connection broke: no socket, kept for a resume
    RESUMING = "resuming"  # a new connection proving it is that seat's end again
    CLOSED = "closed"


@dataclass(frozen=True)
class Route:
    """One direction of one message type (see the module docstring)."""

    type: str
    sender: Party
    receiver: Party
    phases: tuple[Phase, ...]
    then: Phase | None
    provokes: str


A, S, C, B = Party.AGENT, Party.AGENT_SESSION, Party.CONSOLE, Party.BROKER
HELLO, LOGIN, READY = Phase.HELLO, Phase.LOGIN, Phase.READY
WAITING, PAIRING, ACTIVE, CLOSED = Phase.WAITING, Phase.PAIRING, Phase.ACTIVE, Phase.CLOSED
HELD, RESUMING = Phase.HELD, Phase.RESUMING
_UP = (ACTIVE, RESUMING)  # a seat's connection with a socket, once it was active
_ANY = tuple(Phase)

CATALOGUE: tuple[Route, ...] = (
    # -- the agent's control connection ------------------------------------
    Route("hello", A, B, (HELLO,), READY,
          "agent_connected recorded; a nameplate is sent"),
    Route("nameplate", B, A, (READY,), None,
          "the agent shows NAMEPLATE-SECRET; a new one after each join_request "
          "and when the old one expires"),
    Route("join_request", B, A, (READY,), None,
          "an engineer claimed the nameplate: the agent opens an agent_session "
          "with the session id and token"),
    # -- the console, before a session --------------------------------------
    Route("login", C, B, (HELLO,), LOGIN, "a challenge is sent"),
    Route("challenge", B, C, (LOGIN,), None, "the console signs it with the engineer key"),
    Route("login_proof", C, B, (LOGIN,), READY,
          "verified: engineer_login recorded, login_ok; else error login_failed and close"),
    Route("login_ok", B, C, (LOGIN,), READY, "the console may join or read the audit log"),
    Route("audit_query", C, B, (READY,), None, "admins only: audit_page; the read is recorded"),
    Route("audit_page", B, C, (READY,), None, "one page of events, newest first"),
    Route("audit_session_query", C, B, (READY,), None,
          "admins only: audit_session; the read is recorded"),
    Route("audit_session", B, C, (READY,), None, "one session's events, oldest first"),
    Route("audit_verify", C, B, (READY,), None,
          "admins only: the whole-log check runs; audit_verify_result"),
    Route("audit_verify_result", B, C, (READY,), None, "ok, summary, first bad seq"),
    Route("join", C, B, (READY,), WAITING,
          "join_requested recorded; join_request to the agent; the agent gets a fresh "
          "nameplate (single use); nobody waiting: error unknown_code. With an "
          "invitation's nameplate: the same, as a new seat of that session, and no "
          "fresh nameplate; the session full: error session_full, nobody is asked"),
    Route("moved", B, C, (WAITING,), CLOSED,
          "the nameplate is another cluster node's: its URL, then the close; the console "
          "joins there (once); nothing is recorded, nobody is asked"),
    # -- one session: the agent's side attaches, both pair ------------------
    Route("attach", S, B, (HELLO,), PAIRING,
          "the agent's side of the join is bound; joined is sent to the console"),
    Route("joined", B, C, (WAITING,), PAIRING, "the console starts the PAKE"),
    Route("pake", C, B, (PAIRING,), None, "forwarded unopened to the agent session"),
    Route("pake", S, B, (PAIRING,), None, "forwarded unopened to the console"),
    Route("pake", B, S, (PAIRING,), None, "SPAKE2 message of the console"),
    Route("pake", B, C, (PAIRING,), None, "SPAKE2 message of the agent"),
    Route("sealed", C, B, (PAIRING,), None, "forwarded unopened to the agent session"),
    Route("sealed", S, B, (PAIRING,), None, "forwarded unopened to the console"),
    Route("sealed", B, S, (PAIRING,), None, "the engineer's key exchange, under the PAKE key"),
    Route("sealed", B, C, (PAIRING,), None, "the agent's key exchange, under the PAKE key"),
    Route("pairing_failed", S, B, (PAIRING,), CLOSED,
          "pairing_failed recorded (the closing event); ended with that reason to both"),
    Route("consent", S, B, (PAIRING,), ACTIVE,
          "the answer to the join, receipt checked. granted: consent_granted and "
          "session_started recorded, consent_result, relay_open, consent_sealed. "
          "refused: consent_denied/_timeout recorded (the closing event), "
          "consent_result, consent_sealed, ended"),
    Route("consent_result", B, C, (PAIRING,), ACTIVE,
          "the customer's signed answer; granted: the console starts SSH"),
    Route("relay_open", B, S, (PAIRING,), ACTIVE, "binary frames flow both ways"),
    Route("consent_sealed", B, S, (PAIRING, ACTIVE), None,
          "the signed checkpoint covering a consent event, kept beside the receipt"),
    # -- an active session --------------------------------------------------
    Route("request_control", C, B, (ACTIVE,), None,
          "for its right (control, or files): control_requested recorded, "
          "control_request to the agent; nothing to ask (the right held, a request "
          "pending): control_result unchanged"),
    Route("control_request", B, S, (ACTIVE,), None, "the customer is asked for the right"),
    Route("consent", S, B, (ACTIVE,), None,
          "the answer to control_request, receipt checked: consent_* recorded "
          "(granted: rights_changed too); control_result to both"),
    Route("control_result", B, C, (ACTIVE,), None, "the rights now in force"),
    Route("control_result", B, S, (ACTIVE,), None,
          "the agent opens its input gate only on this"),
    Route("rights", S, B, (ACTIVE,), None,
          "narrowing only: rights_changed recorded; rights to the console"),
    Route("rights", B, C, (ACTIVE,), None, "the customer withdrew control"),
    Route("confirm_live", S, B, (ACTIVE,), None, "live with the same id"),
    Route("live", B, S, (ACTIVE,), None, "the session is still live: held input may go"),
    Route("input_dropped", S, B, (ACTIVE,), None,
          "a bounded claim, recorded in session_ended"),
    Route("file_transferred", S, B, (ACTIVE,), None,
          "file_transferred recorded (direction, bytes, outcome; no name), at most "
          "MAX_FILE_EVENTS_PER_SESSION per session"),
    Route("chat_lines", S, B, (ACTIVE,), None,
          "running totals of chat lines (engineer's, customer's; never text), "
          "a bounded claim recorded in session_ended"),
    # -- several engineers --------------------------------------------------
    Route("invite", S, B, (ACTIVE,), None,
          "invite_issued recorded; invitation with a fresh nameplate bound to this "
          "session (single use, 10 minutes; it replaces the session's previous one)"),
    Route("invitation", B, S, (ACTIVE,), None,
          "the agent draws the secret and shows NAMEPLATE-SECRET to the customer"),
    Route("remove", S, B, (ACTIVE,), CLOSED,
          "this seat's engineer is removed: engineer_removed recorded (session_ended "
          "if they were the last), ended engineer_removed to their two connections, "
          "roster to the others"),
    Route("roster", B, S, (ACTIVE,), None,
          "who is in the session now, with rights (names escaped before display)"),
    Route("roster", B, C, (ACTIVE,), None,
          "who is in the session now, with rights (names escaped before display)"),
    # -- surviving a drop (broker.wire.resume) ------------------------------
    # An active seat's connection that breaks is held (HELD) for
    # RESUME_WINDOW_SECONDS, not ended: session_interrupted recorded, its
    # peer told `interrupted`. Binary frames the peer sends meanwhile are
    # dropped (its replay buffer has them). The end that comes back proves
    # it is the paired end to the peer, never to the broker, which cannot.
    Route("resume", C, B, (READY,), RESUMING,
          "after logging in again: this engineer's held seat of the session takes the "
          "new connection; resume (without token) to the agent side, or interrupted "
          "back when that side is held too; none held: error unknown_session"),
    Route("resume", S, B, (HELLO,), RESUMING,
          "the agent side of a held seat, with its token: the same, towards the console"),
    Route("resume", B, S, _UP, None, "the console is back: the agent challenges it"),
    Route("resume", B, C, _UP, None, "the agent side is back: the console challenges it"),
    Route("resume_challenge", S, B, _UP, None, "forwarded unopened to the console"),
    Route("resume_challenge", C, B, _UP, None, "forwarded unopened to the agent side"),
    Route("resume_challenge", B, S, (RESUMING,), None,
          "the console's proof and nonce: checked, then resume_proof"),
    Route("resume_challenge", B, C, (RESUMING,), None,
          "the agent's proof and nonce: checked, then resume_proof"),
    Route("resume_proof", S, B, (RESUMING,), None, "forwarded unopened to the console"),
    Route("resume_proof", C, B, (RESUMING,), None, "forwarded unopened to the agent side"),
    Route("resume_proof", B, S, _UP, None, "checked: resume_accepted or resume_refused"),
    Route("resume_proof", B, C, _UP, None, "checked: resume_accepted or resume_refused"),
    Route("resume_accepted", S, B, _UP, None,
          "session_resumed recorded with the gap; the relay opens again; resumed to both"),
    Route("resume_accepted", C, B, _UP, None,
          "session_resumed recorded with the gap; the relay opens again; resumed to both"),
    Route("resume_refused", S, B, _UP, None,
          "resume_refused recorded; error resume_refused to the one resuming, closed; "
          "the seat stays held"),
    Route("resume_refused", C, B, _UP, None,
          "resume_refused recorded; error resume_refused to the one resuming, closed; "
          "the seat stays held"),
    Route("interrupted", B, S, _UP, None, "the console's link broke: wait, keep the shell"),
    Route("interrupted", B, C, _UP, None, "the agent's link broke: wait, reconnect nothing"),
    Route("resumed", B, S, _UP, ACTIVE, "both ends replay what the other lacks"),
    Route("resumed", B, C, _UP, ACTIVE, "both ends replay what the other lacks"),
    Route("ack", S, B, (ACTIVE,), None, "forwarded to the console (a peer that is held: dropped)"),
    Route("ack", C, B, (ACTIVE,), None, "forwarded to the agent side (a peer held: dropped)"),
    Route("ack", B, S, (ACTIVE,), None, "the console has the stream up to offset"),
    Route("ack", B, C, (ACTIVE,), None, "the agent has the stream up to offset"),
    # -- the end ------------------------------------------------------------
    Route("end", S, B, (PAIRING, ACTIVE, RESUMING), CLOSED,
          "the session ends for every engineer: customer_ended, shell_exited or agent_quit"),
    Route("end", C, B, (WAITING, PAIRING, ACTIVE, RESUMING), CLOSED,
          "this engineer leaves: engineer_left recorded and the others go on; the "
          "last one: the session ends, engineer_left"),
    Route("ended", B, S, (PAIRING, ACTIVE, RESUMING), CLOSED,
          "why it ended; the closing event is recorded first"),
    Route("ended", B, C, (WAITING, PAIRING, ACTIVE, RESUMING), CLOSED,
          "why it ended; the closing event is recorded first"),
    Route("error", B, A, _ANY, CLOSED, "what the peer did wrong, then the close"),
    Route("error", B, S, _ANY, CLOSED, "what the peer did wrong, then the close"),
    Route("error", B, C, _ANY, CLOSED, "what the peer did wrong, then the close"),
)

_CONN_OF = {Party.AGENT: Conn.AGENT, Party.AGENT_SESSION: Conn.AGENT_SESSION,
            Party.CONSOLE: Conn.CONSOLE}


def _inbound() -> dict[tuple[Conn, Phase], frozenset[str]]:
    table: dict[tuple[Conn, Phase], set[str]] = {}
    for route in CATALOGUE:
        if route.receiver is Party.BROKER:
            for phase in route.phases:
                table.setdefault((_CONN_OF[route.sender], phase), set()).add(route.type)
    return {key: frozenset(types) for key, types in table.items()}


def _outbound() -> dict[tuple[Conn, Phase], frozenset[str]]:
    table: dict[tuple[Conn, Phase], set[str]] = {}
    for route in CATALOGUE:
        if route.sender is Party.BROKER:
            for phase in route.phases:
                table.setdefault((_CONN_OF[route.receiver], phase), set()).add(route.type)
    return {key: frozenset(types) for key, types in table.items()}


# (connection, phase) -> control types that connection may send in that phase.
INBOUND: dict[tuple[Conn, Phase], frozenset[str]] = _inbound()
# (connection, phase) -> control types the broker may send it, in the phase
# the receiver is in as it reads them.
OUTBOUND: dict[tuple[Conn, Phase], frozenset[str]] = _outbound()
# What the broker sends an agent session, by phase — what the agent must accept there.
OUTBOUND_AGENT_SESSION: dict[Phase, frozenset[str]] = {
    phase: types for (conn, phase), types in OUTBOUND.items()
    if conn is Conn.AGENT_SESSION and phase in (PAIRING, ACTIVE)
}
# Phases in which a connection may send binary (relay) frames.
BINARY: frozenset[tuple[Conn, Phase]] = frozenset(
    {(Conn.AGENT_SESSION, ACTIVE), (Conn.CONSOLE, ACTIVE)}
)


def check_inbound(conn: Conn, phase: Phase, msg_type: str) -> None:
    """Raise `ProtocolError` unless `conn` may send `msg_type` in `phase`."""
    if msg_type not in INBOUND.get((conn, phase), frozenset()):
        raise ProtocolError(
            f"{msg_type[:40]!r} is not allowed from {conn.value} while {phase.value}",
            ErrorCode.UNEXPECTED_MESSAGE,
        )


def check_binary(conn: Conn, phase: Phase) -> None:
    if (conn, phase) not in BINARY:
        raise ProtocolError(
            f"binary data is not allowed from {conn.value} while {phase.value}",
            ErrorCode.UNEXPECTED_BINARY,
        )


def may_send(conn: Conn, phase: Phase, msg_type: str) -> bool:
    """May the broker send `msg_type` to `conn` while it is in `phase`?

    A message that moves its receiver on (`Route.then`) may also be sent
    just after the move, since a machine records the move as it decides."""
    if msg_type in OUTBOUND.get((conn, phase), frozenset()):
        return True
    party = Party(conn.value)
    return any(r.type == msg_type and r.sender is Party.BROKER and r.receiver is party
               and r.then is phase for r in CATALOGUE)
