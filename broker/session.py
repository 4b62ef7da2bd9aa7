"""One support session's driver: the sockets, the audit log and the clock
around a `broker.wire.machine.session.SessionMachine`.

The machine decides everything; this module feeds it (a frame, a lost
socket, a deadline) and performs the actions it returns, in order, one batch
at a time (a lock per session: a batch that awaits the audit log is never
interleaved with another, so what is recorded and what is sent stay in the
machine's order). Binary frames of an active session skip all of this: they
go from one socket's protocol straight into the other's (`broker.framepath`),
counted in the machine's `Traffic` and never parsed, stored or logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from broker.audit.checkpoints import COVER_WAIT, Checkpointer
from broker.audit.interface import AuditStore
from broker.errors import AuditError, AuditWriteError
from broker.framepath import FramePath
from broker.wire.errors import LocalProtocolError, ProtocolError
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
from broker.wire.machine.participants import EngineerFacts
from broker.wire.machine.protocol import Phase
from broker.wire.machine.reasons import end_message
from broker.wire.machine.session import AGENT, AGENT_SESSION, CONSOLE, SessionMachine
from broker.wire.messages import Message, encode

__all__ = ["AgentLink", "SessionDriver", "SessionHost", "close_quietly", "ended_frame",
           "error_frame", "refuse", "send_quietly", "utcnow"]

log = logging.getLogger("consentry.broker")

Step = Callable[[float], list[Action]]


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


class SessionHost(Protocol):
    """What a session needs of the broker around it."""

    audit: AuditStore
    checkpoints: Checkpointer | None

    async def issue_nameplate(self, link: AgentLink) -> None: ...

    def issue_invite(self, session: str) -> tuple[str, int]:
        """A fresh nameplate bound to `session` (replacing its previous
        invitation), and its lifetime in seconds."""
        ...

    def session_over(self, session: SessionDriver) -> None:
        """The session has ended: forget it and its invitation."""
        ...


class SessionDriver:
    """Performs one session's machine on real sockets."""

    def __init__(self, machine: SessionMachine, host: SessionHost, agent: AgentLink,
                 console: ServerConnection) -> None:
        self.machine = machine
        self.host = host
        self.agent = agent
        self.sockets: dict[str, ServerConnection | None] = {
            AGENT: agent.ws, AGENT_SESSION: None, CONSOLE: console}
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # Set once the batch that ended the session has been performed: both
        # ends were told why, and both were closed.
        self.finished = asyncio.Event()

    @property
    def id(self) -> str:
        return self.machine.id

    # -- inputs ---------------------------------------------------------------

    async def feed(self, step: Step) -> None:
        """Hand the machine one input (`step(now)`) and perform what it returns."""
        async with self._lock:
            await self._perform(step(time.monotonic()))

    async def open(self) -> None:
        await self.feed(self.machine.open)
        if self.machine.ended is None and self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def attach(self, ws: ServerConnection, token: str) -> str:
        """An agent_session connected; `ProtocolError` if it is not one
        awaited. Returns the connection's id (which seat it serves)."""
        async with self._lock:
            conn = self.machine.agent_side_for(token)
            actions = self.machine.attach(token, time.monotonic())
            assert conn is not None  # attach raised otherwise
            self.sockets[conn] = ws
            await self._perform(actions)
            return conn

    async def add_seat(self, ws: ServerConnection, engineer: EngineerFacts,
                       wants: tuple[str, ...]) -> str | None:
        """A console joined with this session's invitation: its connection
        id, or None if it was refused (the session full, or the join could
        not be recorded; it was told why and closed). `ProtocolError` if the
        session has ended."""
        async with self._lock:
            console, actions = self.machine.join(engineer, wants, secrets.token_urlsafe(24),
                                                 time.monotonic())
            self.sockets[console] = ws
            await self._perform(actions)
            return console if console in self.machine.seats else None

    async def resume(self, conn: str, ws: ServerConnection, msg: Message) -> None:
        """A new socket resumes connection `conn` (`ProtocolError` if it can
        no longer be resumed). The socket it had is closed: an older attempt
        (the newest is the one its end waits on), or a link that died
        silently."""
        async with self._lock:
            old = self.sockets.get(conn)
            if self.machine.ended is None and self.machine.phase(conn) is Phase.ACTIVE:
                # Its end is back before the broker saw the old link die (a
                # silent drop): that link is over; the seat is held as for any.
                await self._perform(self.machine.lost(conn, time.monotonic()))
            actions = self.machine.resume(conn, msg, time.monotonic())
            self.sockets[conn] = ws
            await self._perform(actions)
        if old is not None and old is not ws:
            await close_quietly(old, "replaced by a newer resume")

    async def pump(self, conn: str, ws: ServerConnection) -> None:
        """Read one side until it closes, handing every frame to the machine,
        then tell the machine it is gone (a no-op once the session ended).
        A socket that a resume replaced speaks for `conn` no more."""
        try:
            async for frame in ws:
                if not await self.receive(conn, frame, ws):
                    break
        finally:
            await self.lost(conn, ws)

    async def lost(self, conn: str, ws: ServerConnection) -> None:
        """Socket `ws` of connection `conn` is gone. A held connection keeps
        no socket until it is resumed."""
        async with self._lock:
            if self.sockets.get(conn) is not ws:
                return  # replaced by a resume: the connection lives on
            await self._perform(self.machine.lost(conn, time.monotonic()))
            if self.machine.ended is None and self.machine.phase(conn) is Phase.HELD:
                self.sockets[conn] = None

    async def receive(self, conn: str, frame: str | bytes,
                      ws: ServerConnection | None = None) -> bool:
        """One frame from connection `conn` (on socket `ws`, when given);
        False if that socket no longer speaks for it."""
        async with self._lock:
            if ws is not None and self.sockets.get(conn) is not ws:
                return False
            await self._perform(self.machine.receive(conn, frame, time.monotonic()))
            return True

    async def shutdown(self) -> None:
        await self.feed(self.machine.shutdown)

    def stop(self) -> None:
        """Stop the watchdog (the session is over, or never started)."""
        if self._watchdog is not None:
            self._watchdog.cancel()

    async def _watch(self) -> None:
        """Wake at each deadline the machine names (recomputed: traffic moves
        the idle deadline) and let it decide."""
        with contextlib.suppress(asyncio.CancelledError):
            while self.machine.ended is None:
                deadline = self.machine.deadline()
                if deadline is None:
                    return
                delay = deadline - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                await self.feed(self.machine.tick)

    # -- performing -----------------------------------------------------------

    async def _perform(self, actions: list[Action]) -> None:
        queue = deque(actions)
        sealable: int | None = None  # seq of the batch's last sealable record
        while queue:
            action = queue.popleft()
            match action:
                case Send(to=to, type=msg_type, fields=fields):
                    try:
                        frame = encode(msg_type, **fields)
                    except ProtocolError as exc:  # what we built: our bug, not the peer's
                        raise LocalProtocolError(f"could not encode {msg_type}: {exc}") from exc
                    if not await self._send(to, frame):
                        queue.extend(self.machine.lost(to, time.monotonic()))
                case Forward(to=to, data=data):
                    ws = self.sockets.get(to)
                    if ws is not None:
                        # Awaiting the peer's send is the backpressure.
                        with contextlib.suppress(ConnectionClosed):
                            await ws.send(data)
                case Record():
                    try:
                        seq = await self._record(action)
                    except AuditWriteError as exc:
                        # Nothing goes on unrecorded: the rest of the batch is
                        # dropped, and the machine undoes the input and ends.
                        log.error("audit log unavailable: %s", exc)
                        queue.clear()
                        queue.extend(self.machine.audit_failed(time.monotonic()))
                        continue
                    if action.sealable:
                        sealable = seq
                case Seal(to=to, background=background):
                    if sealable is not None:
                        if background:
                            self._beside(self._seal(to, sealable))
                        else:
                            await self._seal(to, sealable)
                case OpenRelay(agent=agent, console=console):
                    self._start_fast_relay(agent, console)
                case StopRelay(agent=agent, console=console):
                    if agent is None or console is None:
                        pairs = [(s.agent_session, s.console)
                                 for s in self.machine.seats.values()]
                    else:
                        pairs = [(agent, console)]
                    for pair in pairs:
                        self._stop_fast_relay(*pair)
                case IssueInvite(to=to):
                    nameplate, expires_in = self.host.issue_invite(self.id)
                    await self._send(to, encode("invitation", nameplate=nameplate,
                                                expires_in=expires_in))
                case IssueNameplate():
                    with contextlib.suppress(ConnectionClosed, RuntimeError):
                        await self.host.issue_nameplate(self.agent)
                case Refuse(to=to, code=code, message=message):
                    ws = self.sockets.get(to)
                    if ws is not None:
                        await refuse(ws, code, message)
                case Close(to=to, reason=reason):
                    await close_quietly(self.sockets.get(to), reason)
                case Ended(reason=reason):
                    log.debug("session ended: %s", reason)
                    self.stop()
                    self.host.session_over(self)
                    self.finished.set()

    async def _send(self, to: str, frame: str) -> bool:
        """Send a control frame; False if that connection is gone."""
        ws = self.sockets.get(to)
        if ws is None:
            return True  # not connected (yet): nothing to tell it
        try:
            await ws.send(frame)
        except (ConnectionClosed, RuntimeError):
            return False
        return True

    async def _record(self, action: Record) -> int:
        """Write one event; a quiet one (written while tearing down) that
        fails is logged, as there is nothing left to refuse."""
        try:
            return await self.host.audit.append(
                action.event, now=utcnow(), session=action.session, actor=action.actor,
                subject=action.subject, body=dict(action.body),
                personal=dict(action.personal) if action.personal is not None else None)
        except AuditError as exc:
            if not action.quiet:
                raise
            log.error("could not record %s: %s", action.event, exc)
            return 0

    async def _seal(self, to: str, seq: int) -> None:
        """Send the signed checkpoint covering consent event `seq` (sealed now
        if needed, waiting at most COVER_WAIT); nothing if there is none."""
        checkpoints = self.host.checkpoints
        if checkpoints is None:
            return
        checkpoint = await checkpoints.covering(seq, COVER_WAIT)
        if checkpoint is not None:
            await self._send(to, encode("consent_sealed", seq=seq, checkpoint=checkpoint.text()))

    def _beside(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def settle(self) -> None:
        """Wait for the work done beside the session (the seals)."""
        await asyncio.gather(*self._tasks)

    # -- the fast relay ---------------------------------------------------------

    def _start_fast_relay(self, agent_id: str, console_id: str) -> None:
        """From now on, one seat's binary frames go from one socket's
        protocol straight into the other's: no queue, no task switch, no
        await per frame. Each seat is its own pair of sockets (its own SSH
        connection with the agent), so the relay stays one to one.
        Backpressure is kept at the transport level and per seat: when one
        side cannot write fast enough, the other side's socket stops being
        read until it drains; other seats are not held up. Nothing is
        parsed, stored or logged."""
        agent, console = self.sockets.get(agent_id), self.sockets.get(console_id)
        if not (isinstance(agent, FramePath) and isinstance(console, FramePath)):
            return  # plain connections (tests): frames go through the machine
        traffic = self.machine.seat_of(console_id).traffic

        def to_agent(data: bytes) -> None:
            # After a resume the first bytes may be a replay already counted.
            traffic.to_agent += (traffic.fresh(len(data), to_agent=True)
                                 if traffic.skip_to_agent else len(data))
            traffic.last_activity = time.monotonic()
            agent.send_binary_soon(data)

        def to_console(data: bytes) -> None:
            traffic.to_console += (traffic.fresh(len(data), to_agent=False)
                                   if traffic.skip_to_console else len(data))
            traffic.last_activity = time.monotonic()
            console.send_binary_soon(data)

        console.binary_sink, agent.binary_sink = to_agent, to_console
        for sink, source in ((console, agent), (agent, console)):
            transport = source.transport
            sink.on_pause_writing = transport.pause_reading
            sink.on_resume_writing = transport.resume_reading

    def _stop_fast_relay(self, agent_id: str, console_id: str) -> None:
        """Back to the slow path for one seat's teardown, and let both its
        sockets be read again so their closing handshakes get through."""
        for ws in (self.sockets.get(agent_id), self.sockets.get(console_id)):
            if isinstance(ws, FramePath):
                ws.binary_sink = None
                ws.on_pause_writing = ws.on_resume_writing = None
                transport = ws.transport
                if transport is not None and not transport.is_closing():
                    with contextlib.suppress(RuntimeError):
                        transport.resume_reading()


def error_frame(code: str, message: str) -> str:
    return encode("error", code=code[:64], message=message[:200])


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


async def refuse(ws: ServerConnection, code: str, message: str) -> None:
    """Tell the peer what went wrong, in words, then close."""
    await send_quietly(ws, error_frame(code, message))
    with contextlib.suppress(ConnectionClosed, RuntimeError):
        await ws.close(1008, code[:100])


def ended_frame(reason: str) -> str:
    return encode("ended", reason=reason, message=end_message(reason))

