"""One support session as the broker sees it: two sockets, a phase, counters.

The broker forwards ``pake`` and ``sealed`` bodies without opening them,
records the consent receipt, and then moves binary frames between the two
sockets without parsing, storing or logging them — it counts their bytes.
Ending is idempotent and records exactly one closing event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from broker.framepath import FramePath
from broker.registry import Engineer
from broker.wire.machine.protocol import Phase
from broker.wire.machine.reasons import end_message
from broker.wire.messages import encode

log = logging.getLogger("consentry.broker")

# End reasons whose own event already records how the join ended
# (`pairing_failed`, `consent_denied` / `consent_timeout`): no `join_abandoned`.
RECORDED_OUTCOMES = frozenset({"wrong_code", "key_mismatch", "denied", "timeout"})

def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(eq=False)
class AgentLink:
    """A waiting agent's control connection and what it told us."""

    conn_id: str
    ws: ServerConnection
    device_id: str
    device_key: bytes
    alias: str
    ip: str


@dataclass(eq=False)
class Session:
    id: str
    token: str
    agent: AgentLink
    console: ServerConnection
    engineer: Engineer
    wants: tuple[str, ...]
    agent_ws: ServerConnection | None = None
    phase: Phase = Phase.PAIRING
    granted: tuple[str, ...] = ()
    # A request for control is with the customer; a second one is not forwarded.
    control_pending: bool = False
    # SHA-256 of every consent receipt recorded for this session.
    receipts: set[str] = field(default_factory=set)
    attached: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # both ends told
    end_reason: str | None = None
    # Set when a side broke the protocol: {"by": connection kind, "code": reason code}.
    violation: dict[str, str] | None = None
    created: float = field(default_factory=time.monotonic)
    active_since: float | None = None
    last_activity: float = field(default_factory=time.monotonic)
    bytes_to_agent: int = 0
    bytes_to_console: int = 0
    # Engineer input the agent says it dropped (`input_dropped`): its claim,
    # held to what can be true (see `claim_dropped`).
    input_dropped: int = 0

    def peer_of(self, ws: ServerConnection) -> ServerConnection | None:
        return self.agent_ws if ws is self.console else self.console

    async def forward_binary(self, src: ServerConnection, frame: bytes) -> None:
        """Relay one opaque frame. Awaiting the peer's send is the backpressure:
        while the peer's write buffer is full we stop reading from `src`."""
        dst = self.peer_of(src)
        if dst is None:
            return
        if src is self.console:
            self.bytes_to_agent += len(frame)
        else:
            self.bytes_to_console += len(frame)
        self.last_activity = time.monotonic()
        try:
            await dst.send(frame)
        except ConnectionClosed:
            pass  # the other end is gone; the session is ending and says why

    def start_fast_relay(self) -> None:
        """From now on, binary frames go from one socket's protocol straight
        into the other's (see `broker.framepath`): no queue, no task switch,
        no await per frame. Backpressure is kept at the transport level: when
        one side cannot write fast enough, the other side's socket stops being
        read until it drains. Nothing is parsed, stored or logged."""
        agent, console = self.agent_ws, self.console
        if not (isinstance(agent, FramePath) and isinstance(console, FramePath)):
            return  # plain connections (tests): the pump's forward_binary path
        agent.binary_sink = lambda data: self._relay(data, console, to_agent=False)
        console.binary_sink = lambda data: self._relay(data, agent, to_agent=True)
        for sink, source in ((console, agent), (agent, console)):
            transport = source.transport
            sink.on_pause_writing = transport.pause_reading
            sink.on_resume_writing = transport.resume_reading

    def stop_fast_relay(self) -> None:
        """Back to the slow path for teardown, and let both sockets be read
        again so their closing handshakes get through."""
        for ws in (self.agent_ws, self.console):
            if isinstance(ws, FramePath):
                ws.binary_sink = None
                ws.on_pause_writing = ws.on_resume_writing = None
                transport = ws.transport
                if transport is not None and not transport.is_closing():
                    with contextlib.suppress(RuntimeError):
                        transport.resume_reading()

    def _relay(self, data: bytes, dst: FramePath, *, to_agent: bool) -> None:
        if to_agent:
            self.bytes_to_agent += len(data)
        else:
            self.bytes_to_console += len(data)
        self.last_activity = time.monotonic()
        dst.send_binary_soon(data)

    def claim_dropped(self, total: int) -> None:
        """Take the agent's running total of dropped engineer input. A claim,
        not a measurement: it never shrinks (totals only grow) and never
        exceeds the bytes relayed to the agent (it cannot drop more than it
        was sent; SSH framing makes the relayed count the larger)."""
        self.input_dropped = max(self.input_dropped, min(total, self.bytes_to_agent))

    def summary(self) -> dict[str, object]:
        """The `session_ended` body: reason, duration, bytes — never content."""
        now = time.monotonic()
        return {
            "reason": self.end_reason or "unknown",
            "duration_s": round(now - (self.active_since or now), 3),
            "bytes_to_agent": self.bytes_to_agent,
            "bytes_to_console": self.bytes_to_console,
            "input_dropped_bytes": self.input_dropped,
            "granted": list(self.granted),
        }


async def send_quietly(ws: ServerConnection | None, frame: str) -> None:
    """Send a control frame to a peer that may already be gone."""
    if ws is None:
        return
    with contextlib.suppress(ConnectionClosed, RuntimeError):
        await ws.send(frame)


async def close_quietly(ws: ServerConnection | None, reason: str = "") -> None:
    if ws is None:
        return
    with contextlib.suppress(ConnectionClosed, RuntimeError):
        await ws.close(1000, reason[:100])


def ended_frame(reason: str) -> str:
    return encode("ended", reason=reason, message=end_message(reason))
