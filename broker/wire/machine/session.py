"""One support session, broker side, as a sans-I/O machine.

Everything that decides what happens in a session lives here (after
``h11/_state.py``): the phase of each connection, which message each may
send (`protocol.CATALOGUE`), what each message provokes, the deadlines, and
the end. The driver (`broker.session.SessionDriver`) only feeds it inputs with `now` (a
monotonic clock) and performs the actions it returns, in order
(`broker.wire.machine.actions`):

    open(now)                   the join was accepted: ask the agent
    attach(token, now)          the agent's side of the join connected
    receive(conn, frame, now)   a frame from one of the session's connections
    lost(conn, now)             a connection went away (or a send to it failed)
    tick(now)                   time passed; call again at `deadline()`
    audit_failed(now)           a non-quiet `Record` could not be written
    shutdown(now)               the broker is stopping

Connections are named by id: `AGENT` (the agent's control connection),
`AGENT_SESSION`, and the console's id. A session is one agent side and one
console now; everything per engineer is held in a `Seat` keyed by its
console's id, so more engineers are more seats.

Every way into the end goes through `_end`, which sets the session's one
end reason and emits its one closing event (the transit relay's "mood"):
the event the path brings (`pairing_failed`, a refused consent), else
`session_ended` once consent was recorded, else `join_abandoned`. An ended
session takes no more input: late frames of the teardown are dropped.
"""

from __future__ import annotations

import copy
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from broker.wire.errors import LocalProtocolError, ProtocolError
from broker.wire.limits import AGENT_END_REASONS, CONSOLE_END_REASONS, OPEN_TIMEOUT
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

__all__ = ["AGENT", "AGENT_SESSION", "CONSOLE", "UPGRADE", "AgentFacts", "EngineerFacts",
           "Seat", "SessionMachine", "SessionTimeouts", "Traffic"]

AGENT = "agent"  # the agent's control connection, where join_request goes
AGENT_SESSION = "agent_session"
CONSOLE = "console"  # the id of the first (for now the only) console

# What a request for control asks for, and so what its receipt must say was asked.
UPGRADE = ("view", "control")
# A refused consent's decision -> the reason its session ends with.
_REFUSAL_REASON = {"denied": "denied", "timeout": "timeout"}


@dataclass
class _State:
    """Everything an input may change; copied before each input so that an
    input whose record could not be written is undone (`audit_failed`)."""

    phases: dict[str, Phase]
    seat: Seat
    requested: bool = False  # join_request went to the agent (its code is spent)
    active_since: float | None = None
    ended: str | None = None  # the end reason, once ended


Handler = Callable[["SessionMachine", str, Message, float], list[Action]]


class SessionMachine:
    """The broker's side of one session: inputs in, actions out, no I/O."""

    def __init__(self, *, session_id: str, token: str, nameplate: str, agent: AgentFacts,
                 engineer: EngineerFacts, wants: tuple[str, ...], timeouts: SessionTimeouts,
                 now: float) -> None:
        self.id = session_id
        self.token = token
        self.nameplate = nameplate
        self.agent = agent
        self.engineer = engineer
        self.timeouts = timeouts
        self.created = now
        self.traffic = Traffic(last_activity=now)
        self._kinds = {AGENT: Conn.AGENT, AGENT_SESSION: Conn.AGENT_SESSION,
                       CONSOLE: Conn.CONSOLE}
        self._s = _State(
            phases={AGENT: Phase.READY, AGENT_SESSION: Phase.HELLO, CONSOLE: Phase.WAITING},
            seat=Seat(CONSOLE, wants),
        )
        self._saved = copy.deepcopy(self._s)
        # The last batch asked for a record that must be durable: only then
        # may `audit_failed` undo it.
        self._undoable = False

    # -- what the driver may ask --------------------------------------------

    def phase(self, conn: str) -> Phase:
        return self._s.phases[self._known(conn)]

    @property
    def seat(self) -> Seat:
        return self._s.seat

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
        return min(at for at, _ in due) if due else None

    # -- inputs -------------------------------------------------------------

    def open(self, now: float) -> list[Action]:
        """The join was accepted: record it, ask the agent, spend its code."""
        self._save()
        seat = self._s.seat
        actions: list[Action] = [
            self._record("join_requested", {"wants": list(seat.wants)}),
            self._send(AGENT, "join_request", nameplate=self.nameplate, session=self.id,
                       token=self.token, engineer_login=self.engineer.name,
                       engineer_display=self.engineer.display,
                       engineer_role=self.engineer.role,
                       engineer_key=self.engineer.public_key, wants=list(seat.wants)),
            IssueNameplate(AGENT),  # single use: whatever happens next, it is spent
        ]
        self._s.requested = True
        return self._out(actions)

    def attach(self, token: str, now: float) -> list[Action]:
        """The agent's side of the join connected with `token`; raise
        `ProtocolError` (for that new connection) unless it is the one awaited."""
        self._undoable = False
        if (
            self._s.ended is not None
            or not self._s.requested
            or self._s.phases[AGENT_SESSION] is not Phase.HELLO
            or not hmac.compare_digest(self.token.encode(), token.encode())
        ):
            raise ProtocolError("unknown or expired session", "unknown_session")
        self._save()
        self._s.phases[AGENT_SESSION] = Phase.PAIRING
        console = self._s.seat.console
        actions: list[Action] = [self._send(console, "joined", session=self.id,
                                            alias=self.agent.alias)]
        self._s.phases[console] = Phase.PAIRING
        return self._out(actions)

    def receive(self, conn: str, frame: str | bytes, now: float) -> list[Action]:
        """A frame from one of the session's connections. A frame that breaks
        the protocol is answered with `error` to its sender, and the session
        ends as what it is, a protocol error."""
        kind = self._kinds[self._known(conn)]
        if self._s.ended is not None:
            # Teardown: the ends are still flushing (an SSH disconnect, a last
            # keystroke). Nothing more is relayed, and it is no error.
            return self._out([])
        self._save()
        try:
            phase = self._s.phases[conn]
            if isinstance(frame, bytes):
                check_binary(kind, phase)
                return self._out(self._forward(conn, frame, now))
            msg = decode(frame)
            check_inbound(kind, phase, msg.type)
            return self._out(_HANDLERS[msg.type](self, conn, msg, now))
        except ProtocolError as exc:
            self._restore()
            return self._out(self._broken(conn, exc, now))

    def lost(self, conn: str, now: float) -> list[Action]:
        """Connection `conn` closed, or a send to it failed."""
        if self._s.ended is not None:
            return self._out([])
        self._save()
        if conn == AGENT:
            # The control link matters only until the agent's side attached.
            if self._s.phases[AGENT_SESSION] is Phase.HELLO:
                return self._out(self._end("agent_unreachable", now))
            return self._out([])
        if conn == AGENT_SESSION:
            return self._out(self._end("agent_lost", now))
        self._known(conn)
        return self._out(self._end("console_lost", now))

    def tick(self, now: float) -> list[Action]:
        """End the session if one of its deadlines has passed."""
        # In the order of `_deadlines`: when a late tick finds two due, the
        # one listed first names the end (the longest session beats idling).
        due = [d for d in self._deadlines() if now >= d[0]]
        if not due:
            return self._out([])
        self._save()
        return self._out(self._end(due[0][1], now))

    def audit_failed(self, now: float) -> list[Action]:
        """The last batch's non-quiet `Record` could not be written: undo the
        input that asked for it (nothing goes on unrecorded) and end the
        session; a code spent on an unrecorded join is refused to the agent
        too, which reconnects and is either told the same or given a fresh one."""
        if not self._undoable:
            raise LocalProtocolError("audit_failed without a record that had to be written")
        self._restore()
        refuse_agent = not self._s.requested
        actions = self._end("audit_unavailable", now)
        if refuse_agent:
            actions.insert(-1, Refuse(AGENT, "audit_unavailable", AUDIT_UNAVAILABLE))
        return self._out(actions)

    def shutdown(self, now: float) -> list[Action]:
        if self._s.ended is not None:
            return self._out([])
        self._save()
        return self._out(self._end("broker_shutdown", now))

    # -- the messages -------------------------------------------------------

    def _on_forward(self, conn: str, msg: Message, now: float) -> list[Action]:
        # pake, sealed: opaque to the broker, re-encoded after validation, never opened.
        return [self._send(self._peer(conn), msg.type, body=msg["body"])]

    def _on_end(self, conn: str, msg: Message, now: float) -> list[Action]:
        allowed, default = (
            (CONSOLE_END_REASONS, "engineer_left") if self._kinds[conn] is Conn.CONSOLE
            else (AGENT_END_REASONS, "customer_ended")
        )
        return self._end(msg["reason"] if msg["reason"] in allowed else default, now)

    def _on_pairing_failed(self, conn: str, msg: Message, now: float) -> list[Action]:
        # Each failure is its own end reason, so the engineer is told which
        # (a key mismatch is no wrong code); its event is the closing one.
        reason = msg["reason"]
        return self._end(reason, now, closing=self._record("pairing_failed", {"reason": reason}))

    def _on_confirm_live(self, conn: str, msg: Message, now: float) -> list[Action]:
        # Only while active (the catalogue); an ended session was sent
        # `ended` before this could be read, and gets no answer.
        return [self._send(AGENT_SESSION, "live", id=msg["id"])]

    def _on_input_dropped(self, conn: str, msg: Message, now: float) -> list[Action]:
        # A claim, not a measurement: it never shrinks (totals only grow) and
        # never exceeds the bytes relayed to the agent (SSH framing makes the
        # relayed count the larger).
        seat = self._s.seat
        seat.input_dropped = max(seat.input_dropped, min(msg["bytes"], self.traffic.to_agent))
        return []

    def _on_consent(self, conn: str, msg: Message, now: float) -> list[Action]:
        if self._s.phases[conn] is Phase.ACTIVE:
            return self._consent_to_control(msg)
        return self._consent_to_join(msg, now)

    def _consent_to_join(self, msg: Message, now: float) -> list[Action]:
        """The answer to the join: a refusal ends the session; a grant starts
        it (recorded first) and opens the relay."""
        seat = self._s.seat
        checked = self._check(msg, seat.wants)
        receipt = checked.receipt
        seat.receipts.add(checked.digest)
        consent = self._record(f"consent_{receipt.decision}", checked.body,
                               personal=self._receipt_personal(msg), sealable=True)
        result = self._send(seat.console, "consent_result", decision=receipt.decision,
                            granted=list(receipt.granted) or ["view"],
                            receipt=msg["receipt"], signature=msg["signature"])
        if receipt.decision != "granted":
            # The seal goes before `ended` closes the agent's side.
            return self._end(_REFUSAL_REASON[receipt.decision], now, closing=consent,
                             then=[result, Seal(AGENT_SESSION, background=False)])
        actions: list[Action] = [
            consent,
            self._record("session_started", {"granted": list(receipt.granted)}),
            OpenRelay(),  # before either end hears: the first SSH bytes follow at once
            result,
            self._send(AGENT_SESSION, "relay_open"),
            Seal(AGENT_SESSION, background=True),  # the relay does not wait for it
        ]
        seat.granted = receipt.granted
        self._s.phases[seat.console] = self._s.phases[AGENT_SESSION] = Phase.ACTIVE
        self._s.active_since = self.traffic.last_activity = now
        return actions

    def _consent_to_control(self, msg: Message) -> list[Action]:
        """The customer's answer to a request for control: recorded, then both
        ends told; the agent lets the engineer type only once it hears back."""
        seat = self._s.seat
        if not seat.control_pending:
            raise ProtocolError("no request for control is waiting for an answer",
                                "unexpected_message")
        checked = self._check(msg, UPGRADE)
        receipt = checked.receipt
        if receipt.decision == "granted" and set(receipt.granted) != set(UPGRADE):
            raise ProtocolError("a granted request for control must grant control",
                                "bad_receipt")
        seat.receipts.add(checked.digest)
        seat.control_pending = False
        actions: list[Action] = [self._record(
            f"consent_{receipt.decision}", {**checked.body, "upgrade": True},
            personal=self._receipt_personal(msg), sealable=True)]
        if receipt.decision == "granted":
            actions.append(self._record("rights_changed", {
                "granted": list(UPGRADE), "by": "customer", "upgrade": True}))
            seat.granted = UPGRADE
        for to in (seat.console, AGENT_SESSION):
            actions.append(self._send(to, "control_result", decision=receipt.decision,
                                      granted=list(seat.granted)))
        actions.append(Seal(AGENT_SESSION, background=True))
        return actions

    def _on_request_control(self, conn: str, msg: Message, now: float) -> list[Action]:
        """Forward the engineer's request for control to the customer. Nothing
        to ask (control held, or a request already with the customer) is
        answered `unchanged` at once, without bothering anyone."""
        seat = self._s.seat
        if "control" in seat.granted or seat.control_pending:
            return [self._send(conn, "control_result", decision="unchanged",
                               granted=list(seat.granted))]
        seat.control_pending = True
        return [self._record("control_requested", {"asked": list(UPGRADE)}),
                self._send(AGENT_SESSION, "control_request")]

    def _on_rights(self, conn: str, msg: Message, now: float) -> list[Action]:
        """The customer narrows the rights (withdraws control)."""
        seat = self._s.seat
        granted = tuple(msg["granted"])
        if "view" not in granted or not set(granted) <= set(seat.granted):
            raise ProtocolError("rights can only be narrowed here", "bad_rights")
        seat.granted = granted
        return [self._record("rights_changed", {"granted": list(granted), "by": "customer"}),
                self._send(seat.console, "rights", granted=list(granted))]

    # -- the end ------------------------------------------------------------

    def _end(self, reason: str, now: float, *, closing: Record | None = None,
             then: list[Action] | None = None,
             violation: Mapping[str, str] | None = None) -> list[Action]:
        """The one way into the end: one reason, one closing event, both ends
        told why before either is closed."""
        if self._s.ended is not None:
            raise LocalProtocolError(f"session {self.id} ended twice")
        self._s.ended = reason
        extra = {"violation": dict(violation)} if violation else {}
        if closing is None:
            if self._s.active_since is not None:
                closing = self._record("session_ended", {**self.summary(now), **extra},
                                       quiet=True)
            else:
                closing = self._record("join_abandoned", {"reason": reason, **extra},
                                       quiet=True)
        actions: list[Action] = [StopRelay(), closing, *(then or [])]
        connected = [conn for conn in (self._s.seat.console, AGENT_SESSION)
                     if self._s.phases[conn] not in (Phase.HELLO, Phase.CLOSED)]
        for conn in connected:
            actions.append(self._send(conn, "ended", reason=reason, message=end_message(reason)))
        for conn in connected:
            actions.append(Close(conn, reason))
            self._s.phases[conn] = Phase.CLOSED
        actions.append(Ended(reason))
        return actions

    def _broken(self, conn: str, exc: ProtocolError, now: float) -> list[Action]:
        """`conn` broke the protocol: it hears why before anything closes."""
        error = self._send(conn, "error", code=exc.code[:64], message=str(exc)[:200])
        return [error, *self._end("protocol_error", now,
                                  violation={"by": self._kinds[conn].value, "code": exc.code})]

    def summary(self, now: float) -> dict[str, object]:
        """The `session_ended` body: reason, duration, bytes — never content."""
        started = self._s.active_since if self._s.active_since is not None else now
        seat = self._s.seat
        return {
            "reason": self._s.ended or "unknown",
            "duration_s": round(now - started, 3),
            "bytes_to_agent": self.traffic.to_agent,
            "bytes_to_console": self.traffic.to_console,
            "input_dropped_bytes": seat.input_dropped,
            "granted": list(seat.granted),
        }

    def _deadlines(self) -> list[tuple[float, str]]:
        if self._s.ended is not None:
            return []
        if self._s.active_since is None:
            # Pairing and consent must finish in time; before that, the agent
            # must at least answer the join.
            due = [(self.created + self.timeouts.handshake, "timeout")]
            if self._s.requested and self._s.phases[AGENT_SESSION] is Phase.HELLO:
                due.insert(0, (self.created + OPEN_TIMEOUT, "agent_unreachable"))
            return due
        return [(self._s.active_since + self.timeouts.max_session, "max_duration"),
                (self.traffic.last_activity + self.timeouts.idle, "idle_timeout")]

    # -- small helpers ------------------------------------------------------

    def _forward(self, conn: str, data: bytes, now: float) -> list[Action]:
        to = self._peer(conn)
        self.traffic.count(len(data), to_agent=to == AGENT_SESSION, now=now)
        return [Forward(to, data)]

    def _check(self, msg: Message, asked: tuple[str, ...]) -> CheckedReceipt:
        return check_receipt(msg, session=self.id, device_id=self.agent.device_id,
                             device_key=self.agent.device_key, engineer=self.engineer.name,
                             fingerprint=self.engineer.fingerprint, asked=asked,
                             seen=self._s.seat.receipts)

    def _receipt_personal(self, msg: Message) -> dict[str, str]:
        """What a consent event keeps encrypted: the signed receipt, and the
        device key it was verified with, so `audit show` can check the
        signature again from this one event (personal data, as a device's
        key identifies it; erased with the receipt it verifies)."""
        return {"receipt": msg["receipt"], "receipt_signature": msg["signature"],
                "device_key": b64encode(self.agent.device_key)}

    def _record(self, event: str, body: Mapping[str, Any], *,
                personal: Mapping[str, str] | None = None, quiet: bool = False,
                sealable: bool = False) -> Record:
        return Record(event, body, session=self.id, actor=self.engineer.name,
                      subject=self.agent.device_id, personal=personal, quiet=quiet,
                      sealable=sealable)

    def _send(self, to: str, msg_type: str, **fields: Any) -> Send:
        kind, phase = self._kinds[to], self._s.phases[to]
        if not may_send(kind, phase, msg_type):
            raise LocalProtocolError(
                f"the broker may not send {msg_type!r} to {kind.value} while {phase.value}")
        return Send(to, msg_type, fields)

    def _peer(self, conn: str) -> str:
        return AGENT_SESSION if conn == self._s.seat.console else self._s.seat.console

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
        self._s = copy.deepcopy(self._saved)


_HANDLERS: dict[str, Handler] = {
    "pake": SessionMachine._on_forward,
    "sealed": SessionMachine._on_forward,
    "end": SessionMachine._on_end,
    "pairing_failed": SessionMachine._on_pairing_failed,
    "confirm_live": SessionMachine._on_confirm_live,
    "input_dropped": SessionMachine._on_input_dropped,
    "consent": SessionMachine._on_consent,
    "request_control": SessionMachine._on_request_control,
    "rights": SessionMachine._on_rights,
}
