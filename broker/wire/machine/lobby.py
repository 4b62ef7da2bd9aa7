"""A connection before it belongs to a session: its phase, what it may send
next, and how long the broker waits for it (pure; time passed in).

The agent's control connection, the console before its join, and the
agent's side of a join before it attaches each start in ``hello``; every
accepted message moves the connection to the phase the catalogue names
(`Route.then`). The order of the handshake is the catalogue's: a console
sends `login`, then `login_proof`, then (ready) audit reads or one `join`.
What a message provokes beyond its phase (a challenge, a registry lookup,
the join checks) is the driver's work; a failure there closes the
connection, so a phase is never reached by a message that was refused.
"""

from __future__ import annotations

from broker.wire.codes import ErrorCode
from broker.wire.errors import ProtocolError
from broker.wire.limits import OPEN_TIMEOUT
from broker.wire.machine.protocol import CATALOGUE, Conn, Party, Phase, check_inbound
from broker.wire.messages import Message, decode

__all__ = ["Lobby"]

# (connection, phase, message type) -> the phase it moves to.
_MOVES: dict[tuple[Conn, Phase, str], Phase] = {
    (Conn(route.sender.value), phase, route.type): route.then
    for route in CATALOGUE
    if route.receiver is Party.BROKER and route.then is not None
    for phase in route.phases
}


class Lobby:
    """One connection's phase until a session machine takes it over.

    `ready_timeout`: how long a ready connection may stay silent (a console
    between audit reads); None waits as long as the connection lives (an
    agent waiting for an engineer, kept alive by pings)."""

    def __init__(self, conn: Conn, now: float, *, ready_timeout: float | None = None) -> None:
        self.conn = conn
        self.phase = Phase.HELLO
        self._since = now
        self._ready_timeout = ready_timeout

    def timeout(self, now: float) -> float | None:
        """Seconds left to wait for the next message (None: no limit).

        Each step of the opening gets OPEN_TIMEOUT (TLS, WebSocket opening and
        the first messages are quick, or an attack); a ready connection gets
        `ready_timeout` from its last message."""
        limit = OPEN_TIMEOUT if self.phase in (Phase.HELLO, Phase.LOGIN) else self._ready_timeout
        if limit is None:
            return None
        return max(0.0, self._since + limit - now)

    def accept(self, frame: str | bytes, now: float) -> Message:
        """Decode `frame`; raise `ProtocolError` unless it may come now; move on."""
        msg = decode(frame)  # binary data is no control frame: refused here too
        check_inbound(self.conn, self.phase, msg.type)
        self.phase = _MOVES.get((self.conn, self.phase, msg.type), self.phase)
        self._since = now
        return msg

    def timed_out(self) -> ProtocolError:
        """The error for a connection that did not send in time."""
        return ProtocolError("timed out waiting for the next message", ErrorCode.TIMEOUT)
