"""One support session, broker side, as a sans-I/O machine.

Everything that decides what happens in a session lives here (after
``h11/_state.py``): the phase of each connection, which message each may
send (`protocol.CATALOGUE`), what each message provokes, the deadlines, and
the end. The driver (`broker.session.SessionDriver`) only feeds it inputs with `now` (a
monotonic clock) and performs the actions it returns, in order
(`broker.wire.machine.actions`):

    open(now)                   the join was accepted: ask the agent
    join(engineer, wants, token, now)
                                another console came with this session's
                                invitation: a new seat (or session_full)
    attach(token, now)          an agent side of a join connected
    receive(conn, frame, now)   a frame from one of the session's connections
    lost(conn, now)             a connection went away (or a send to it failed)
    tick(now)                   time passed; call again at `deadline()`
    audit_failed(now)           a non-quiet `Record` could not be written
    shutdown(now)               the broker is stopping

Connections are named by id: `AGENT` (the agent's control connection),
and per seat its console's id and its agent_session's id (the first seat's
are `CONSOLE` and `AGENT_SESSION`, the next `console-2`/`agent_session-2`,
...). Everything per engineer is held in a `Seat` keyed by its console's
id; see the protocol module's docstring for why each seat has an
agent_session of its own.

A seat that goes while others stay goes through `_depart`: one closing
event for that seat — `engineer_left` / `engineer_removed` (with its bytes)
once it was active, else what the path brings (`pairing_failed`, a refused
consent) or `join_abandoned` — its two connections told why and closed,
and a roster to the others. The last seat's departure is the session's end.
Every way into the end goes through `_end`, which sets the session's one
end reason and emits its one closing event (the transit relay's "mood"):
`session_ended` once consent was recorded (with each participant's bytes
when there were several), else the event the path brings, else
`join_abandoned`. An ended session takes no more input: late frames of the
teardown are dropped.
"""

from __future__ import annotations

import copy
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from broker.wire.codes import UPGRADE as _UPGRADE
from broker.wire.codes import EndReason, ErrorCode, Right, upgrade_for
from broker.wire.errors import LocalProtocolError, ProtocolError
from broker.wire.limits import (
    AGENT_END_REASONS,
    CONSOLE_END_REASONS,
    MAX_ENGINEERS_PER_SESSION,
    MAX_FILE_EVENTS_PER_SESSION,
    OPEN_TIMEOUT,
    RESUME_STEP_TIMEOUT,
)
from broker.wire.machine.actions import (
    Action,
    Close,
    Ended,
    Forward,
    IssueInvite,
    IssueNameplate,
    OpenRelay,
    Record,
    Refuse,
    Seal,
    Send,
    StopRelay,
)
from broker.wire.machine.consent import CheckedReceipt, check_receipt
from broker.wire.machine.participants import (
    AgentFacts,
    EngineerFacts,
    Seat,
    SessionTimeouts,
    Traffic,
)
from broker.wire.machine.protocol import Conn, Phase, check_binary, check_inbound, may_send
from broker.wire.machine.reasons import AUDIT_UNAVAILABLE, end_message
from broker.wire.messages import Message, b64encode, decode

__all__ = ["AGENT", "AGENT_SESSION", "CONSOLE", "SESSION_FULL", "UPGRADE", "AgentFacts",
           "EngineerFacts", "Seat", "SessionMachine", "SessionTimeouts", "Traffic"]

AGENT = "agent"  # the agent's control connection, where join_request goes
AGENT_SESSION = "agent_session"
CONSOLE = "console"  # the first seat's console; the next are console-2, console-3, ...

# What a request for control asks for, and so what its receipt must say was asked.
UPGRADE = _UPGRADE
# A refused consent's decision -> the reason its session ends with.
_REFUSAL_REASON = {"denied": EndReason.DENIED, "timeout": EndReason.TIMEOUT}
# A seat's departure -> the event that closes it (once it was active).
_DEPARTURE_EVENT: dict[str, str] = {EndReason.ENGINEER_REMOVED: "engineer_removed"}
_UP = (Phase.ACTIVE, Phase.RESUMING)  # an active seat's connection that has a socket
# Messages whose handling changes no state (forwarded or dropped as they are).
_READ_ONLY = frozenset({"ack"})
_REFUSED_RESUME = ("the other end of the session did not accept this resume: it could not "
                   "prove it is the paired end")
_STALLED = f"the resume did not complete within {RESUME_STEP_TIMEOUT:.0f} s; try again"
SESSION_FULL = (f"this session already has {MAX_ENGINEERS_PER_SESSION} engineers, the most "
                "one session may have; the customer was not asked. Ask the customer to "
                "remove one, or to start a new session for you")


@dataclass
class _State:
    """Everything an input may change; copied before each input so that an
    input whose record could not be written is undone (`audit_failed`)."""

    phases: dict[str, Phase]
    seats: dict[str, Seat]  # by console id, in the order they joined
    agent_sides: dict[str, str] = field(default_factory=dict)  # agent_session id -> console id
    shared: bool = False  # a second seat joined: rosters go out from now on
    joined: int = 1  # seats ever made (names the next one)
    active_since: float | None = None
    ended: str | None = None  # the end reason, once ended
    file_events: int = 0  # `file_transferred` recorded (bounded per session)


Handler = Callable[["SessionMachine", str, Message, float], list[Action]]


class SessionMachine:
    """The broker's side of one session: inputs in, actions out, no I/O."""

    def __init__(self, *, session_id: str, token: str, nameplate: str, agent: AgentFacts,
                 engineer: EngineerFacts, wants: tuple[str, ...], timeouts: SessionTimeouts,
                 now: float, node_url: str | None = None) -> None:
        self.id = session_id
        # A cluster node's own URL, told the agent for its session connection.
        self.node_url = node_url
        self.token = token
        self.nameplate = nameplate
        self.agent = agent
        self.engineer = engineer  # the first engineer's
        self.timeouts = timeouts
        self.created = now
        self._kinds = {AGENT: Conn.AGENT, AGENT_SESSION: Conn.AGENT_SESSION,
                       CONSOLE: Conn.CONSOLE}
        first = Seat(CONSOLE, wants, agent_session=AGENT_SESSION, engineer=engineer,
                     token=token, created=now, traffic=Traffic(last_activity=now))
        self._s = _State(
            phases={AGENT: Phase.READY, AGENT_SESSION: Phase.HELLO, CONSOLE: Phase.WAITING},
            seats={CONSOLE: first}, agent_sides={AGENT_SESSION: CONSOLE},
        )
        self._saved = copy.deepcopy(self._s)
        # The last batch asked for a record that must be durable: only then
        # may `audit_failed` undo it.
        self._undoable = False
        # The console whose `join` the last batch answered (refused too if
        # its join_requested cannot be written).
        self._joining: str | None = None

    # -- what the driver may ask --------------------------------------------

    def phase(self, conn: str) -> Phase:
        return self._s.phases[self._known(conn)]

    @property
    def seat(self) -> Seat:
        """The first engineer's seat."""
        return self._s.seats[CONSOLE]

    @property
    def seats(self) -> dict[str, Seat]:
        """Every seat the session has had, by console id (departed ones have `left`)."""
        return dict(self._s.seats)

    def seat_of(self, conn: str) -> Seat:
        """The seat a console or agent_session connection belongs to."""
        return self._seat_of(self._known(conn))

    def agent_side_for(self, token: str) -> str | None:
        """The agent_session id awaited with `token`, if any."""
        seat = self._awaited(token)
        return seat.agent_session if seat is not None else None

    @property
    def traffic(self) -> Traffic:
        """The whole session's traffic: every seat's, added up."""
        seats = self._s.seats.values()
        return Traffic(to_agent=sum(s.traffic.to_agent for s in seats),
                       to_console=sum(s.traffic.to_console for s in seats),
                       last_activity=max(s.traffic.last_activity for s in seats))

    @property
    def ended(self) -> str | None:
        """The end reason once the session has ended, else None."""
        return self._s.ended

    @property
    def active_since(self) -> float | None:
        return self._s.active_since

    def deadline(self) -> float | None:
        """When `tick` must next be called (None: nothing is due, ever)."""
        due = self._deadlines()
        return min(at for at, _, _ in due) if due else None

    # -- inputs -------------------------------------------------------------

    def open(self, now: float) -> list[Action]:
        """The join was accepted: record it, ask the agent, spend its code."""
        self._save()
        self._joining = None
        seat = self.seat
        actions: list[Action] = [
            self._record("join_requested", {"wants": list(seat.wants)}),
            self._join_request(seat, self.nameplate),
            IssueNameplate(AGENT),  # single use: whatever happens next, it is spent
        ]
        seat.requested = True
        return self._out(actions)

    def join(self, engineer: EngineerFacts, wants: tuple[str, ...], token: str,
             now: float) -> tuple[str, list[Action]]:
        """A console joined with this session's invitation: the id of its
        connection, and what to do. Beyond `MAX_ENGINEERS_PER_SESSION` it is
        refused at once, and the customer is not asked; raise `ProtocolError`
        (for that console) if the session has ended."""
        if self._s.ended is not None:
            raise ProtocolError("no customer is waiting with that code: the session it "
                                "invited to has ended", ErrorCode.UNKNOWN_CODE)
        self._save()
        number = self._s.joined = self._s.joined + 1
        console, agent_side = f"{CONSOLE}-{number}", f"{AGENT_SESSION}-{number}"
        self._kinds[console], self._kinds[agent_side] = Conn.CONSOLE, Conn.AGENT_SESSION
        if len(self._present()) >= MAX_ENGINEERS_PER_SESSION:
            self._joining = None
            refused = Record("join_refused", {"reason": ErrorCode.SESSION_FULL,
                                              "limit": MAX_ENGINEERS_PER_SESSION},
                             session=self.id, actor=engineer.name,
                             subject=self.agent.device_id, quiet=True)
            refuse = Refuse(console, ErrorCode.SESSION_FULL, SESSION_FULL)
            return console, self._out([refused, refuse])
        seat = Seat(console, wants, agent_session=agent_side, engineer=engineer, token=token,
                    created=now, requested=True, traffic=Traffic(last_activity=now))
        self._s.seats[console] = seat
        self._s.agent_sides[agent_side] = console
        self._s.phases[console], self._s.phases[agent_side] = Phase.WAITING, Phase.HELLO
        self._s.shared = True
        self._joining = console
        actions: list[Action] = [
            self._record("join_requested", {"wants": list(wants), "seat": console}, seat=seat),
            self._join_request(seat, ""),
        ]
        return console, self._out(actions)

    def attach(self, token: str, now: float) -> list[Action]:
        """An agent_session connected with `token`; raise `ProtocolError`
        (for that new connection) unless it is one awaited."""
        self._undoable = False
        seat = self._awaited(token)
        if seat is None:
            raise ProtocolError("unknown or expired session", ErrorCode.UNKNOWN_SESSION)
        self._save()
        self._s.phases[seat.agent_session] = Phase.PAIRING
        actions: list[Action] = [self._send(seat.console, "joined", session=self.id,
                                            alias=self.agent.alias)]
        self._s.phases[seat.console] = Phase.PAIRING
        return self._out(actions)

    def receive(self, conn: str, frame: str | bytes, now: float) -> list[Action]:
        """A frame from one of the session's connections. A frame that breaks
        the protocol is answered with `error` to its sender, and the session
        ends as what it is, a protocol error (an engineer's alone, when others
        stay: that seat goes)."""
        kind = self._kinds[self._known(conn)]
        if self._s.ended is not None or self._gone(conn):
            # Teardown: the ends are still flushing (an SSH disconnect, a last
            # keystroke). Nothing more is relayed, and it is no error.
            return self._out([])
        self._joining = None
        phase = self._s.phases[conn]
        msg: Message | None = None
        saved = False
        try:
            msg = decode(frame) if isinstance(frame, str) else None
            saved = msg is None or msg.type not in _READ_ONLY
            if saved:
                # Copied for `audit_failed` (and a refusal) to undo; an `ack`
                # changes nothing, and comes a few hundred times a second in
                # a bulk copy, so it is spared the copy.
                self._save()
            if msg is None:
                assert isinstance(frame, bytes)
                check_binary(kind, phase)
                return self._out(self._forward(conn, frame, now))
            check_inbound(kind, phase, msg.type)
            return self._out(_HANDLERS[msg.type](self, conn, msg, now))
        except ProtocolError as exc:
            if saved:
                self._restore()
            return self._out(self._broken(conn, exc, now))

    def lost(self, conn: str, now: float) -> list[Action]:
        """Connection `conn` closed, or a send to it failed."""
        if self._s.ended is not None:
            return self._out([])
        self._save()
        self._joining = None
        if conn == AGENT:
            # The control link matters only to seats whose agent side has
            # not attached yet: the agent never heard of them.
            actions: list[Action] = []
            for seat in self._present():
                if self._s.ended is None and self._s.phases[seat.agent_session] is Phase.HELLO:
                    actions += self._depart(seat, EndReason.AGENT_UNREACHABLE, now)
            return self._out(actions)
        if self._gone(self._known(conn)) or self._s.phases[conn] is Phase.HELD:
            return self._out([])
        seat, kind = self._seat_of(conn), self._kinds[conn]
        if seat.active_since is not None and self._s.phases[conn] in _UP:
            return self._out(self._hold(seat, conn, now))
        return self._out(self._depart(
            seat, EndReason.AGENT_LOST if kind is Conn.AGENT_SESSION else EndReason.CONSOLE_LOST,
            now))

    def held_console(self, engineer: str) -> str | None:
        """The console id of this engineer's seat that a resume may take:
        held (or being resumed by an attempt a newer one replaces) first,
        else an active one, whose link may be dead without the broker
        knowing yet (a silent drop is noticed by keepalives, seconds later
        than by the end that reconnects). The peer's check of the proof
        decides either way."""
        return self._resumable([s.console for s in self._present()
                                if self._engineer(s).name == engineer])

    def held_agent_side(self, token: str) -> str | None:
        """The agent_session id of the seat with `token` that a resume may take."""
        return self._resumable([s.agent_session for s in self._present()
                                if hmac.compare_digest(s.token.encode(), token.encode())])

    def _resumable(self, conns: list[str]) -> str | None:
        if self._s.ended is not None:
            return None
        for wanted in ((Phase.HELD, Phase.RESUMING), (Phase.ACTIVE,)):
            for conn in reversed(conns):
                if self._s.phases[conn] in wanted \
                        and self._seat_of(conn).active_since is not None:
                    return conn
        return None

    def resume(self, conn: str, msg: Message, now: float) -> list[Action]:
        """A new connection says it is held connection `conn` (the driver
        found it with `held_console` / `held_agent_side`): the peer is asked
        to challenge it; with the peer held too, it waits for the peer."""
        if self._s.ended is not None or self._gone(self._known(conn)) \
                or self._s.phases[conn] not in (Phase.HELD, Phase.RESUMING):
            raise ProtocolError("no connection of this session waits to be resumed",
                                ErrorCode.UNKNOWN_SESSION)
        self._save()
        self._joining = None
        seat, peer = self._seat_of(conn), self._peer(conn)
        self._s.phases[conn] = Phase.RESUMING
        seat.resuming, seat.resume_started = conn, now
        seat.resume_received = {conn: msg["received"]}
        if self._s.phases[peer] in _UP:
            return self._out([self._send(peer, "resume", session=self.id,
                                         attempt=msg["attempt"], nonce=msg["nonce"],
                                         received=msg["received"])])
        return self._out([self._send(conn, "interrupted", window=self._window_left(seat, now))])

    def tick(self, now: float) -> list[Action]:
        """End the session, or a seat's join, if one of its deadlines has passed."""
        # In the order of `_deadlines`: when a late tick finds two due, the
        # one listed first names the end (the longest session beats idling).
        due = [d for d in self._deadlines() if now >= d[0]]
        if not due:
            return self._out([])
        self._save()
        self._joining = None
        actions: list[Action] = []
        for _, reason, seat in due:
            if self._s.ended is not None:
                break
            if reason == ErrorCode.RESUME_TIMEOUT and seat is not None:
                if seat.left is None and seat.resuming is not None:
                    actions += self._drop_attempt(seat, ErrorCode.RESUME_TIMEOUT, _STALLED)
                continue
            if seat is None:
                actions += self._end(reason, now)
            elif seat.left is None:
                actions += self._depart(seat, reason, now)
        return self._out(actions)

    def audit_failed(self, now: float) -> list[Action]:
        """The last batch's non-quiet `Record` could not be written: undo the
        input that asked for it (nothing goes on unrecorded) and end the
        session; a code spent on an unrecorded join is refused to the agent
        too, which reconnects and is either told the same or given a fresh one.
        A console whose join could not be recorded is refused as well."""
        if not self._undoable:
            raise LocalProtocolError("audit_failed without a record that had to be written")
        self._restore()
        refuse_agent = not self.seat.requested
        actions = self._end(EndReason.AUDIT_UNAVAILABLE, now)
        if refuse_agent:
            actions.insert(-1, Refuse(AGENT, ErrorCode.AUDIT_UNAVAILABLE, AUDIT_UNAVAILABLE))
        if self._joining is not None and self._joining not in self._s.seats:
            actions.insert(-1, Refuse(self._joining, ErrorCode.AUDIT_UNAVAILABLE,
                                      AUDIT_UNAVAILABLE))
        self._joining = None
        return self._out(actions)

    def shutdown(self, now: float) -> list[Action]:
        if self._s.ended is not None:
            return self._out([])
        self._save()
        self._joining = None
        return self._out(self._end(EndReason.BROKER_SHUTDOWN, now))

    # -- the messages -------------------------------------------------------

    def _on_forward(self, conn: str, msg: Message, now: float) -> list[Action]:
        # pake, sealed: opaque to the broker, re-encoded after validation, never opened.
        return [self._send(self._peer(conn), msg.type, body=msg["body"])]

    def _on_end(self, conn: str, msg: Message, now: float) -> list[Action]:
        if self._kinds[conn] is Conn.CONSOLE:
            # One engineer leaving: the others go on (the last one ends it).
            reason = (msg["reason"] if msg["reason"] in CONSOLE_END_REASONS
                      else EndReason.ENGINEER_LEFT)
            return self._depart(self._seat_of(conn), reason, now)
        # The customer's side: the shell is shared, so it ends for everyone.
        reason = msg["reason"] if msg["reason"] in AGENT_END_REASONS else EndReason.CUSTOMER_ENDED
        return self._end(reason, now)

    def _on_ack(self, conn: str, msg: Message, now: float) -> list[Action]:
        peer = self._peer(conn)
        if self._s.phases[peer] is not Phase.ACTIVE:
            return []  # the peer hears the offset again after its resume
        return [self._send(peer, "ack", offset=msg["offset"])]

    def _on_resume_challenge(self, conn: str, msg: Message, now: float) -> list[Action]:
        seat = self._seat_of(conn)
        if seat.resuming is None or seat.resuming == conn:
            if seat.resuming == conn:
                raise ProtocolError("the end that resumes does not challenge",
                                    ErrorCode.UNEXPECTED_MESSAGE)
            return []  # that attempt is over (its link broke, or a newer one came)
        seat.resume_received[conn] = msg["received"]
        return [self._send(seat.resuming, "resume_challenge", nonce=msg["nonce"],
                           received=msg["received"], proof=msg["proof"])]

    def _on_resume_proof(self, conn: str, msg: Message, now: float) -> list[Action]:
        seat = self._seat_of(conn)
        if seat.resuming != conn or len(seat.resume_received) != 2:
            raise ProtocolError("no resume challenge waits for this proof",
                                ErrorCode.UNEXPECTED_MESSAGE)
        return [self._send(self._peer(conn), "resume_proof", proof=msg["proof"])]

    def _verifier_of(self, conn: str, *, challenged: bool = True) -> Seat | None:
        """The seat whose resume `conn` may accept (once it challenged) or
        refuse (at any point) as the peer of the connection resuming, or
        None when no attempt is open."""
        seat = self._seat_of(conn)
        if seat.resuming is None or seat.resuming == conn \
                or (challenged and len(seat.resume_received) != 2):
            if seat.resuming == conn:
                raise ProtocolError("the end that resumes cannot accept itself",
                                    ErrorCode.UNEXPECTED_MESSAGE)
            return None
        return seat

    def _on_resume_accepted(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The peer checked the proof: the seat is whole again. Recorded with
        the gap; the relay opens before either end replays."""
        seat = self._verifier_of(conn)
        if seat is None:
            return []
        resumer = seat.resuming
        assert resumer is not None and seat.interrupted_at is not None
        has = seat.resume_received
        seat.traffic.replaying(agent_has=has[seat.agent_session], console_has=has[seat.console])
        gap = max(0.0, now - seat.interrupted_at)
        side = "agent" if self._kinds[resumer] is Conn.AGENT_SESSION else "console"
        seat.interrupted_at = seat.interrupted_side = seat.resuming = None
        seat.resume_received = {}
        self._s.phases[seat.console] = self._s.phases[seat.agent_session] = Phase.ACTIVE
        seat.traffic.last_activity = now
        gap_ms = round(gap * 1000)
        return [self._record("session_resumed", self._seat_body(
                    seat, {"side": side, "gap_s": round(gap, 3)}), seat=seat),
                OpenRelay(seat.agent_session, seat.console),
                self._send(resumer, "resumed", gap_ms=gap_ms),
                self._send(conn, "resumed", gap_ms=gap_ms)]

    def _on_resume_refused(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The peer found the proof wrong: whoever came was not the paired
        end (or could not prove it). Recorded; the seat stays held."""
        seat = self._verifier_of(conn, challenged=False)
        if seat is None:
            return []
        return self._drop_attempt(seat, ErrorCode.RESUME_REFUSED, _REFUSED_RESUME)

    def _on_remove(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The customer removes this seat's engineer; the others go on."""
        return self._depart(self._seat_of(conn), EndReason.ENGINEER_REMOVED, now)

    def _on_invite(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The customer asks for a code for another engineer: recorded, then
        the driver binds a fresh nameplate to this session and sends it."""
        return [Record("invite_issued", {"seats": len(self._present())}, session=self.id,
                       subject=self.agent.device_id),
                IssueInvite(conn)]

    def _on_pairing_failed(self, conn: str, msg: Message, now: float) -> list[Action]:
        # Each failure is its own end reason, so the engineer is told which
        # (a key mismatch is no wrong code); its event is the closing one.
        seat = self._seat_of(conn)
        reason = msg["reason"]
        return self._depart(seat, reason, now, closing=self._record(
            "pairing_failed", self._seat_body(seat, {"reason": reason}), seat=seat))

    def _on_confirm_live(self, conn: str, msg: Message, now: float) -> list[Action]:
        # Only while active (the catalogue); an ended session was sent
        # `ended` before this could be read, and gets no answer.
        return [self._send(conn, "live", id=msg["id"])]

    def _on_input_dropped(self, conn: str, msg: Message, now: float) -> list[Action]:
        # A claim, not a measurement: it never shrinks (totals only grow) and
        # never exceeds the bytes relayed to the agent (SSH framing makes the
        # relayed count the larger).
        seat = self._seat_of(conn)
        seat.input_dropped = max(seat.input_dropped,
                                 min(msg["bytes"], seat.traffic.to_agent))
        return []

    def _on_chat_lines(self, conn: str, msg: Message, now: float) -> list[Action]:
        # Claims like `input_dropped`: totals only grow, and a line needs at
        # least a byte relayed its way (an engineer's to the agent, the
        # customer's to this console), so neither exceeds what was relayed.
        seat = self._seat_of(conn)
        seat.chat_engineer = max(seat.chat_engineer,
                                 min(msg["engineer"], seat.traffic.to_agent))
        seat.chat_customer = max(seat.chat_customer,
                                 min(msg["customer"], seat.traffic.to_console))
        return []

    def _on_file_transferred(self, conn: str, msg: Message, now: float) -> list[Action]:
        """One file the seat's engineer copied: recorded without a name. Past
        the per-session bound further reports are dropped, not an error."""
        seat = self._seat_of(conn)
        if self._s.file_events >= MAX_FILE_EVENTS_PER_SESSION:
            return []
        self._s.file_events += 1
        return [self._record("file_transferred", self._seat_body(seat, {
            "direction": msg["direction"], "bytes": msg["bytes"],
            "outcome": msg["outcome"]}), seat=seat)]

    def _on_consent(self, conn: str, msg: Message, now: float) -> list[Action]:
        seat = self._seat_of(conn)
        if self._s.phases[conn] is Phase.ACTIVE:
            return self._consent_to_control(seat, msg)
        return self._consent_to_join(seat, msg, now)

    def _consent_to_join(self, seat: Seat, msg: Message, now: float) -> list[Action]:
        """The answer to the join: a refusal ends that seat's join (the
        session, if it has no other); a grant starts the seat (recorded
        first) and opens its relay."""
        checked = self._check(seat, msg, seat.wants)
        receipt = checked.receipt
        seat.receipts.add(checked.digest)
        consent = self._record(f"consent_{receipt.decision}", self._seat_body(seat, checked.body),
                               personal=self._receipt_personal(msg), sealable=True, seat=seat)
        result = self._send(seat.console, "consent_result", decision=receipt.decision,
                            granted=list(receipt.granted) or [Right.VIEW],
                            receipt=msg["receipt"], signature=msg["signature"])
        if receipt.decision != "granted":
            # The seal goes before `ended` closes the agent's side.
            return self._depart(seat, _REFUSAL_REASON[receipt.decision], now, closing=consent,
                                then=[result, Seal(seat.agent_session, background=False)])
        first = self._s.active_since is None
        started = (self._record("session_started", {"granted": list(receipt.granted)}) if first
                   else self._record("engineer_joined", {"granted": list(receipt.granted),
                                                         "seat": seat.console}, seat=seat))
        actions: list[Action] = [
            consent,
            started,
            # Before either end hears: the first SSH bytes follow at once.
            OpenRelay(seat.agent_session, seat.console),
            result,
            self._send(seat.agent_session, "relay_open"),
            Seal(seat.agent_session, background=True),  # the relay does not wait for it
        ]
        seat.granted = receipt.granted
        self._s.phases[seat.console] = self._s.phases[seat.agent_session] = Phase.ACTIVE
        seat.active_since = seat.traffic.last_activity = now
        if first:
            self._s.active_since = now
        return actions + self._roster()

    def _consent_to_control(self, seat: Seat, msg: Message) -> list[Action]:
        """The customer's answer to a request for control: recorded, then both
        ends told; the agent lets the engineer type only once it hears back."""
        if not seat.control_pending:
            raise ProtocolError("no request for control is waiting for an answer",
                                ErrorCode.UNEXPECTED_MESSAGE)
        asked = seat.asking
        checked = self._check(seat, msg, asked)
        receipt = checked.receipt
        if receipt.decision == "granted" and set(receipt.granted) != set(asked):
            raise ProtocolError("a granted request must grant what was asked",
                                ErrorCode.BAD_RECEIPT)
        seat.receipts.add(checked.digest)
        seat.control_pending = False
        actions: list[Action] = [self._record(
            f"consent_{receipt.decision}", self._seat_body(seat, {**checked.body, "upgrade": True}),
            personal=self._receipt_personal(msg), sealable=True, seat=seat)]
        if receipt.decision == "granted":
            actions.append(self._record("rights_changed", self._seat_body(seat, {
                "granted": list(asked), "by": "customer", "upgrade": True}), seat=seat))
            seat.granted = asked
        for to in (seat.console, seat.agent_session):
            actions.append(self._send(to, "control_result", decision=receipt.decision,
                                      granted=list(seat.granted)))
        actions.append(Seal(seat.agent_session, background=True))
        if receipt.decision == "granted":
            actions += self._roster()
        return actions

    def _on_request_control(self, conn: str, msg: Message, now: float) -> list[Action]:
        """Forward the engineer's request for control to the customer. Nothing
        to ask (control held, or a request already with the customer) is
        answered `unchanged` at once, without bothering anyone."""
        seat = self._seat_of(conn)
        right = Right(msg.get("right") or Right.CONTROL)
        if right in seat.granted or seat.control_pending:
            return [self._send(conn, "control_result", decision="unchanged",
                               granted=list(seat.granted))]
        seat.control_pending = True
        seat.asking = upgrade_for(seat.granted, right)
        return [self._record("control_requested",
                             self._seat_body(seat, {"asked": list(seat.asking)}),
                             seat=seat),
                self._send(seat.agent_session, "control_request", right=right.value)]

    def _on_rights(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The customer narrows this seat's rights (takes control from this engineer)."""
        seat = self._seat_of(conn)
        granted = tuple(msg["granted"])
        if Right.VIEW not in granted or not set(granted) <= set(seat.granted):
            raise ProtocolError("rights can only be narrowed here", ErrorCode.BAD_RIGHTS)
        seat.granted = granted
        return [self._record("rights_changed",
                             self._seat_body(seat, {"granted": list(granted), "by": "customer"}),
                             seat=seat),
                self._send(seat.console, "rights", granted=list(granted)),
                *self._roster()]

    # -- a broken link ------------------------------------------------------

    def _hold(self, seat: Seat, conn: str, now: float) -> list[Action]:
        """An active seat's connection broke: keep the seat for a resume
        (`timeouts.resume_window` from the first break) instead of ending it;
        the peer, if it is still there, hears it and keeps its shell."""
        kind = "agent" if self._kinds[conn] is Conn.AGENT_SESSION else "console"
        self._s.phases[conn] = Phase.HELD
        actions: list[Action] = [StopRelay(seat.agent_session, seat.console)]
        if seat.interrupted_at is None:
            seat.interrupted_at, seat.interrupted_side = now, kind
            actions.append(self._record("session_interrupted",
                                        self._seat_body(seat, {"side": kind}),
                                        seat=seat, quiet=True))
        # Any resume under way is over: it needed this connection.
        seat.resuming, seat.resume_received = None, {}
        peer = self._peer(conn)
        if self._s.phases[peer] in _UP:
            actions.append(self._send(peer, "interrupted", window=self._window_left(seat, now)))
        return actions

    def _drop_attempt(self, seat: Seat, code: str, text: str) -> list[Action]:
        """An attempt to resume failed: the one who tried is told and closed,
        the seat stays held for the next attempt (until its window ends)."""
        resumer = seat.resuming
        assert resumer is not None
        side = "agent" if self._kinds[resumer] is Conn.AGENT_SESSION else "console"
        seat.resuming, seat.resume_received = None, {}
        self._s.phases[resumer] = Phase.HELD
        return [self._record("resume_refused", self._seat_body(
                    seat, {"side": side, "reason": code}), seat=seat, quiet=True),
                Refuse(resumer, code, text)]

    def _window_left(self, seat: Seat, now: float) -> int:
        since = seat.interrupted_at if seat.interrupted_at is not None else now
        return max(0, round(since + self.timeouts.resume_window - now))

    # -- the end ------------------------------------------------------------

    def _depart(self, seat: Seat, reason: str, now: float, *, closing: Record | None = None,
                then: list[Action] | None = None,
                violation: Mapping[str, str] | None = None) -> list[Action]:
        """One engineer goes and the others stay: one closing event for the
        seat, its two connections told why and closed, a roster to the
        others. The last seat going is the session's end."""
        if not [s for s in self._present() if s is not seat]:
            return self._end(reason, now, closing=closing, then=then, violation=violation)
        seat.left, seat.left_at = reason, now
        extra = {"violation": dict(violation)} if violation else {}
        if closing is None:
            if seat.active_since is not None:
                closing = self._record(
                    _DEPARTURE_EVENT.get(reason, "engineer_left"),
                    {"reason": reason, **self._participant(seat, now), **extra},
                    seat=seat, quiet=True)
            else:
                closing = self._record("join_abandoned", self._seat_body(
                    seat, {"reason": reason, **extra}), seat=seat, quiet=True)
        actions: list[Action] = [StopRelay(seat.agent_session, seat.console), closing,
                                 *(then or [])]
        actions += self._close_all([seat.console, seat.agent_session], reason)
        # Only someone who was listed leaving changes the roster.
        return actions + (self._roster() if seat.active_since is not None else [])

    def _end(self, reason: str, now: float, *, closing: Record | None = None,
             then: list[Action] | None = None,
             violation: Mapping[str, str] | None = None) -> list[Action]:
        """The one way into the end: one reason, one closing event, everyone
        told why before anyone is closed."""
        if self._s.ended is not None:
            raise LocalProtocolError(f"session {self.id} ended twice")
        self._s.ended = reason
        present = self._present()
        for seat in present:
            seat.left, seat.left_at = reason, now
        extra = {"violation": dict(violation)} if violation else {}
        closings: list[Action] = []
        if self._s.active_since is not None:
            # A seat's own refusal or failure still comes first, then the session's end.
            closings = [*([closing] if closing else []),
                        self._record("session_ended", {**self.summary(now), **extra},
                                     quiet=True)]
        else:
            closings = [closing or self._record("join_abandoned", {"reason": reason, **extra},
                                                quiet=True)]
        actions: list[Action] = [StopRelay(), *closings, *(then or [])]
        conns = [conn for seat in present for conn in (seat.console, seat.agent_session)]
        actions += self._close_all(conns, reason)
        actions.append(Ended(reason))
        return actions

    def _close_all(self, conns: list[str], reason: str) -> list[Action]:
        """`ended` to each connected one of `conns`, then each closed; one
        never attached is closed to its attach."""
        connected = [c for c in conns
                     if self._s.phases[c] not in (Phase.HELLO, Phase.HELD, Phase.CLOSED)]
        actions: list[Action] = [
            self._send(conn, "ended", reason=reason, message=end_message(reason))
            for conn in connected]
        for conn in connected:
            actions.append(Close(conn, reason))
        for conn in conns:
            self._s.phases[conn] = Phase.CLOSED
        return actions

    def _broken(self, conn: str, exc: ProtocolError, now: float) -> list[Action]:
        """`conn` broke the protocol: it hears why before anything closes.
        An engineer's console breaking it costs that seat only; the agent's
        side breaking it ends the session."""
        error = self._send(conn, "error", code=exc.code[:64], message=str(exc)[:200])
        violation = {"by": self._kinds[conn].value, "code": exc.code}
        if self._kinds[conn] is Conn.CONSOLE:
            return [error, *self._depart(self._seat_of(conn), "protocol_error", now,
                                         violation=violation)]
        return [error, *self._end(EndReason.PROTOCOL_ERROR, now, violation=violation)]

    def summary(self, now: float) -> dict[str, object]:
        """The `session_ended` body: reason, duration, bytes — never content.
        The totals are every seat's; `granted` is the first engineer's; a
        session that had several engineers also lists each participant."""
        started = self._s.active_since if self._s.active_since is not None else now
        seats = list(self._s.seats.values())
        traffic = self.traffic
        body: dict[str, object] = {
            "reason": self._s.ended or "unknown",
            "duration_s": round(now - started, 3),
            "bytes_to_agent": traffic.to_agent,
            "bytes_to_console": traffic.to_console,
            "input_dropped_bytes": sum(s.input_dropped for s in seats),
            # Counts, never text. Every engineer's lines add up; the customer
            # said at least as many as any one engineer was there for.
            "chat_lines": {"engineer": sum(s.chat_engineer for s in seats),
                           "customer": max((s.chat_customer for s in seats), default=0)},
            "granted": list(self.seat.granted),
        }
        if self._s.shared:
            body["participants"] = [
                {"left": s.left or self._s.ended or "unknown", **self._participant(s, now)}
                for s in seats]
        return body

    def _participant(self, seat: Seat, now: float) -> dict[str, object]:
        """One engineer's share of the session: bytes each way, rights, time."""
        until = seat.left_at if seat.left_at is not None else now
        since = seat.active_since if seat.active_since is not None else until
        return {"seat": seat.console, "engineer": self._engineer(seat).name,
                "granted": list(seat.granted), "duration_s": round(until - since, 3),
                "bytes_to_agent": seat.traffic.to_agent,
                "bytes_to_console": seat.traffic.to_console,
                "input_dropped_bytes": seat.input_dropped,
                "chat_lines": {"engineer": seat.chat_engineer, "customer": seat.chat_customer}}

    def _deadlines(self) -> list[tuple[float, str, Seat | None]]:
        """What is due when: the session's own deadlines (seat None) first,
        then each seat's join that must finish in time."""
        if self._s.ended is not None:
            return []
        due: list[tuple[float, str, Seat | None]] = []
        if self._s.active_since is not None:
            due += [(self._s.active_since + self.timeouts.max_session, EndReason.MAX_DURATION,
                     None),
                    (self.traffic.last_activity + self.timeouts.idle, EndReason.IDLE_TIMEOUT, None)]
        for seat in self._present():
            if seat.interrupted_at is not None:
                lost = (EndReason.AGENT_LOST if seat.interrupted_side == "agent"
                        else EndReason.CONSOLE_LOST)
                due.append((seat.interrupted_at + self.timeouts.resume_window, lost, seat))
                if seat.resuming is not None:
                    due.append((seat.resume_started + RESUME_STEP_TIMEOUT,
                                ErrorCode.RESUME_TIMEOUT, seat))
            if seat.active_since is not None:
                continue
            # Pairing and consent must finish in time; before that, the agent
            # must at least answer the join.
            if seat.requested and self._s.phases[seat.agent_session] is Phase.HELLO:
                due.append((seat.created + OPEN_TIMEOUT, EndReason.AGENT_UNREACHABLE, seat))
            due.append((seat.created + self.timeouts.handshake, EndReason.TIMEOUT, seat))
        return due

    def _roster(self) -> list[Action]:
        """Who is in the session now, to every active connection, once it
        has had a second engineer (a one-engineer session sends none)."""
        if not self._s.shared or self._s.ended is not None:
            return []
        active = [s for s in self._present() if s.active_since is not None]
        seats = [{"seat": s.console, "login": self._engineer(s).name,
                  "display": self._engineer(s).display, "rights": list(s.granted)}
                 for s in active]
        return [self._send(conn, "roster", seats=seats, you=seat.console)
                for seat in active for conn in (seat.console, seat.agent_session)]

    # -- small helpers ------------------------------------------------------

    def _join_request(self, seat: Seat, nameplate: str) -> Send:
        engineer = self._engineer(seat)
        return self._send(AGENT, "join_request", nameplate=nameplate or self.nameplate,
                          session=self.id, token=seat.token, engineer_login=engineer.name,
                          engineer_display=engineer.display, engineer_role=engineer.role,
                          engineer_key=engineer.public_key, wants=list(seat.wants),
                          **({"node": self.node_url} if self.node_url else {}))

    def _awaited(self, token: str) -> Seat | None:
        if self._s.ended is not None:
            return None
        for seat in self._present():
            if (seat.requested and self._s.phases[seat.agent_session] is Phase.HELLO
                    and hmac.compare_digest(seat.token.encode(), token.encode())):
                return seat
        return None

    def _gone(self, conn: str) -> bool:
        """A seat's connection after that seat left (or whose join was undone)."""
        seat = self._s.seats.get(self._s.agent_sides.get(conn, conn))
        return seat is None or seat.left is not None

    def _present(self) -> list[Seat]:
        return [s for s in self._s.seats.values() if s.left is None]

    def _seat_of(self, conn: str) -> Seat:
        return self._s.seats[self._s.agent_sides.get(conn, conn)]

    def _engineer(self, seat: Seat) -> EngineerFacts:
        return seat.engineer if seat.engineer is not None else self.engineer

    def _seat_body(self, seat: Seat, body: Mapping[str, Any]) -> dict[str, Any]:
        """An event's body, naming the seat once the session has several."""
        return {**body, "seat": seat.console} if self._s.shared else dict(body)

    def _forward(self, conn: str, data: bytes, now: float) -> list[Action]:
        seat, to = self._seat_of(conn), self._peer(conn)
        if self._s.phases[to] is not Phase.ACTIVE:
            # The peer's link is down: its sender keeps these bytes and
            # sends them again after the resume, so they are neither
            # relayed nor counted now.
            return []
        seat.traffic.count(len(data), to_agent=to == seat.agent_session, now=now)
        return [Forward(to, data)]

    def _check(self, seat: Seat, msg: Message, asked: tuple[str, ...]) -> CheckedReceipt:
        engineer = self._engineer(seat)
        return check_receipt(msg, session=self.id, device_id=self.agent.device_id,
                             device_key=self.agent.device_key, engineer=engineer.name,
                             fingerprint=engineer.fingerprint, asked=asked,
                             seen=seat.receipts)

    def _receipt_personal(self, msg: Message) -> dict[str, str]:
        """What a consent event keeps encrypted: the signed receipt, and the
        device key it was verified with, so `audit show` can check the
        signature again from this one event (personal data, as a device's
        key identifies it; erased with the receipt it verifies)."""
        return {"receipt": msg["receipt"], "receipt_signature": msg["signature"],
                "device_key": b64encode(self.agent.device_key)}

    def _record(self, event: str, body: Mapping[str, Any], *,
                personal: Mapping[str, str] | None = None, quiet: bool = False,
                sealable: bool = False, seat: Seat | None = None) -> Record:
        actor = self._engineer(seat).name if seat is not None else self.engineer.name
        return Record(event, body, session=self.id, actor=actor,
                      subject=self.agent.device_id, personal=personal, quiet=quiet,
                      sealable=sealable)

    def _send(self, to: str, msg_type: str, **fields: Any) -> Send:
        kind, phase = self._kinds[to], self._s.phases[to]
        if phase is Phase.HELD:
            return Send(to, msg_type, fields)  # no socket: the driver has nobody to send it to
        if not may_send(kind, phase, msg_type):
            raise LocalProtocolError(
                f"the broker may not send {msg_type!r} to {kind.value} while {phase.value}")
        return Send(to, msg_type, fields)

    def _peer(self, conn: str) -> str:
        seat = self._seat_of(conn)
        return seat.agent_session if conn == seat.console else seat.console

    def _known(self, conn: str) -> str:
        if conn not in self._kinds:
            raise LocalProtocolError(f"session {self.id} has no connection {conn!r}")
        return conn

    def _out(self, actions: list[Action]) -> list[Action]:
        self._undoable = any(isinstance(a, Record) and not a.quiet for a in actions)
        return actions

    def _save(self) -> None:
        self._saved = copy.deepcopy(self._s)

    def _restore(self) -> None:
        current = self._s.seats
        self._s = copy.deepcopy(self._saved)
        # Bytes relayed are a measurement, not a decision: an undo keeps
        # them, and keeps the very objects the driver's fast relay counts in.
        for console, seat in self._s.seats.items():
            if console in current:
                seat.traffic = current[console].traffic


_HANDLERS: dict[str, Handler] = {
    "pake": SessionMachine._on_forward,
    "sealed": SessionMachine._on_forward,
    "end": SessionMachine._on_end,
    "pairing_failed": SessionMachine._on_pairing_failed,
    "confirm_live": SessionMachine._on_confirm_live,
    "input_dropped": SessionMachine._on_input_dropped,
    "file_transferred": SessionMachine._on_file_transferred,
    "chat_lines": SessionMachine._on_chat_lines,
    "consent": SessionMachine._on_consent,
    "request_control": SessionMachine._on_request_control,
    "rights": SessionMachine._on_rights,
    "invite": SessionMachine._on_invite,
    "remove": SessionMachine._on_remove,
    "ack": SessionMachine._on_ack,
    "resume_challenge": SessionMachine._on_resume_challenge,
    "resume_proof": SessionMachine._on_resume_proof,
    "resume_accepted": SessionMachine._on_resume_accepted,
    "resume_refused": SessionMachine._on_resume_refused,
}
