"""An SSH connection carried over a broker link, as asyncssh's `tunnel=`;
with a `Resumption`, one that survives the link breaking.

Binary frames go straight into the SSH connection from the websockets
protocol callback (`broker.framepath`), and SSH writes go straight out as
frames: no socket pair, no pump task, one copy.

Surviving a drop (`broker.wire.resume` holds the rules, this is their
driver): every byte SSH writes is numbered and kept in a `ReplayBuffer`
until the peer acknowledges it (`ack`, every `ACK_EVERY_BYTES`, 1 MiB, or after
`ACK_IDLE_SECONDS`), and every byte received is counted by a
`ReceiveCursor`. When the link breaks, SSH is not told: it goes on writing
into the buffer (SSH's own channel windows bound how much, as the peer
grants no more while it receives nothing; past `MAX_REPLAY_BYTES` the
session cannot be resumed without loss and ends). The relay reconnects
with backoff inside the resume window, proves it is the paired end
(`Resumer`), and both ends send again exactly what the other lacks. The
end that stayed does the checking (`ResumeVerifier`), and so does the first
one back when both dropped; the broker routes, and can do neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from broker.client.link import BrokerLink, FastClientConnection, LinkError
from broker.wire import limits
from broker.wire.errors import ResumeError, WireError
from broker.wire.messages import Message, b64decode, b64encode, decode, encode
from broker.wire.resume.proof import (
    ResumeChallenge,
    ResumeKey,
    Resumer,
    ResumeRequest,
    ResumeVerifier,
    Side,
)
from broker.wire.resume.stream import ReceiveCursor, ReplayBuffer
from broker.wire.resume.window import ResumeWindow

__all__ = ["ACK_IDLE_SECONDS", "LinkEvent", "Resumption", "SSHRelay"]

log = logging.getLogger("consentry.relay")

# A receiver that got bytes and has not acknowledged them says so after this
# long even when fewer than ACK_EVERY_BYTES came (a quiet terminal), so the
# sender's buffer empties between bursts.
ACK_IDLE_SECONDS = 1.0

# A writer that can wait (the OpenSSH proxy's stdin) is held while the
# replay buffer is three quarters full, and let go again at half: above what
# a window in flight and an unacknowledged quarter hold while the link is up.
_REPLAY_HIGH = limits.MAX_REPLAY_BYTES * 3 // 4
_REPLAY_LOW = limits.MAX_REPLAY_BYTES // 2

# Link errors after which trying again cannot help: the broker is not the
# one we trust, or it says the session (or our place in it) is gone.
_FINAL_CODES = frozenset({"bad_certificate", "login_failed", "unknown_session",
                          "resume_refused", "forbidden"})


@dataclass(frozen=True)
class LinkEvent:
    """What the relay's screen should say about the link.

    kind: "lost" (our link broke), "retrying" (the next try in `seconds`),
    "peer_lost" (the other end's link broke; the broker waits `seconds` for
    it), "resumed" (whole again after `seconds`), "gave_up" (the session
    cannot go on; `text` says why)."""

    kind: str
    seconds: float = 0.0
    text: str = ""


@dataclass
class Resumption:
    """What a relay needs to come back after its link breaks: the pairing's
    resume key and which end this is, how to open a fresh link to the broker
    (logged in, for a console), and the agent side's seat token."""

    key: ResumeKey
    side: Side
    reconnect: Callable[[], Awaitable[BrokerLink]]
    on_event: Callable[[LinkEvent], None]
    token: str | None = None
    window: float = limits.RESUME_WINDOW_SECONDS


class _LinkTransport(asyncio.Transport):
    """What asyncssh writes to. Writes made in one turn of the event loop
    (an SSH packet, the next one, a window adjust) leave together at its end
    as few binary frames: one pass through the broker instead of several."""

    def __init__(self, relay: SSHRelay) -> None:
        super().__init__()
        self._relay = relay
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._closing:
            self._relay.outgoing(data)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        # Closing SSH does not close the link: the session's owner says `end`.
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._relay.connection_lost)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return self._relay.write_buffer_size()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("consentry-relay", 0) if name in ("peername", "sockname") else default


class SSHRelay:
    """Carries one SSH connection over a link, as asyncssh's `tunnel=`.

    Control (text) frames that arrive meanwhile are read by `task` and given
    to `on_control`; `task` ends when the session's link is over for good
    (with a `Resumption`, only once a break could not be resumed). `failure`
    then says why, if it was not the broker's `ended`.
    """

    def __init__(self, link: BrokerLink, on_control: Callable[[Message], Awaitable[None]],
                 resume: Resumption | None = None) -> None:
        if not isinstance(link.ws, FastClientConnection):
            raise TypeError("SSHRelay needs a link opened by open_link()")
        self.link = link
        self._ws: FastClientConnection = link.ws
        self._on_control = on_control
        self._resume = resume
        self._conn: asyncio.Protocol | None = None
        self._lost = False
        self._finished = False  # the broker said `ended` or `error`
        self.failure: str | None = None
        self._coming_back = False
        self._farewell: str | None = None
        # SSH's writes of this loop turn, sent as frames at its end: a list,
        # joined once (a bytearray grown write by write re-copied as it grew).
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._flush_handle: asyncio.Handle | None = None
        # Whether SSH bytes go out on the link now: not while our link is
        # down, nor while the broker says the peer's is (it would drop them).
        self._up = True
        # Who asks SSH's writer to wait: the link's buffer ("link"), the
        # replay buffer three quarters full ("replay"). A writer that honours it
        # (the OpenSSH proxy's stdin) waits; asyncssh's windows bound the rest.
        self._held_by: set[str] = set()
        if resume is not None:
            self._out = ReplayBuffer(limits.MAX_REPLAY_BYTES)
            self._in = ReceiveCursor()
            self._resumer = Resumer(resume.key, resume.side)
            self._verifier = ResumeVerifier(resume.key, resume.side)
            self._window = ResumeWindow(resume.window)
            self._ack_handle: asyncio.Handle | None = None
            # The offset each end said it holds in the resume under way.
            self._peer_has: int | None = None
        self.task: asyncio.Task[None] = asyncio.create_task(self._run())

    # -- asyncssh's side --------------------------------------------------------

    async def create_connection(self, session_factory: Callable[[], asyncio.Protocol],
                                host: str, port: int,
                                ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Called by asyncssh (client `connect` or server `run_server`)."""
        if self._conn is not None:
            raise LinkError("this relay already carries a connection")
        conn = session_factory()
        self._conn = conn
        transport = _LinkTransport(self)
        self._attach_flow(self._ws)
        conn.connection_made(transport)
        # Frames held since the link opened (the peer's banner can come before
        # asyncssh asks for the connection) go first; then the fast path.
        # Both happen in this one synchronous step, so order is kept.
        for frame in self.link.take_held():
            self._incoming(frame)
        self._ws.binary_sink = self._incoming
        if self._lost:
            # The link was over before SSH asked for it: SSH hears it now
            # (after what had arrived) rather than waiting for its timeout.
            asyncio.get_running_loop().call_soon(conn.connection_lost, None)
        return transport, conn

    def outgoing(self, data: bytes | bytearray | memoryview) -> None:
        data = bytes(data)  # once: asyncssh hands bytes (no copy), kept twice below
        if self._resume is not None:
            try:
                # While the link is up the bytes go out whatever is kept: an
                # SSH peer with a wide window (OpenSSH's is 2 MiB) can be more
                # ahead of our acknowledgements than the buffer holds.
                self._out.push(data, evict=self._up)
            except ResumeError as exc:
                self._give_up("too much was sent while the connection was down to keep it "
                              f"all for a resume ({exc})")
                return
            if self._out.held >= _REPLAY_HIGH and "replay" not in self._held_by:
                self._hold("replay", True)
        if not self._up:
            return  # kept in the replay buffer; sent after the resume
        self._pending.append(data)
        self._pending_size += len(data)
        if self._flush_handle is None:
            self._flush_handle = self._ws.loop.call_soon(self._flush)  # no getpid() per write

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._clear_pending()
        self._send_frames(data)

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._pending_size = 0

    def _send_frames(self, data: bytes | bytearray) -> None:
        step = limits.MAX_DATA_FRAME
        if len(data) <= step and isinstance(data, bytes):
            self._ws.send_binary_now(data)  # the common case: no copy
            return
        view = memoryview(data)
        frames = [bytes(view[start:start + step]) for start in range(0, len(view), step)]
        view.release()
        self._ws.send_binary_now(*frames)

    def write_buffer_size(self) -> int:
        transport = self._ws.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        return queued + self._pending_size

    def _incoming(self, data: bytes) -> None:
        conn = self._conn
        if conn is None:
            return
        if self._resume is None:
            conn.data_received(data)
            return
        try:
            fresh = self._in.accept(data)
        except ResumeError as exc:
            self._give_up(f"the stream from the other end broke its order ({exc})")
            return
        if fresh:
            conn.data_received(fresh)
        if self._in.ack_due():
            self._ack_now()
        elif self._ack_handle is None:
            self._ack_handle = self._ws.loop.call_later(ACK_IDLE_SECONDS, self._ack_now)

    def _ack_now(self) -> None:
        self._ack_handle = None
        if not self._up:
            return  # the next resume says how far we got
        offset = self._in.take_ack()
        if offset is not None:
            self._send_text_now(encode("ack", offset=offset))

    def _send_text_now(self, frame: str) -> None:
        ws = self._ws
        with contextlib.suppress(Exception):  # a link going down: the resume covers it
            if ws.protocol.state.name == "OPEN":
                ws.protocol.send_text(frame.encode())
                ws.send_data()

    def _attach_flow(self, ws: FastClientConnection) -> None:
        # The link's buffer filling up is SSH's signal to stop writing.
        ws.on_pause_writing = lambda: self._hold("link", True)
        ws.on_resume_writing = lambda: self._hold("link", False)

    def _hold(self, why: str, held: bool) -> None:
        before = bool(self._held_by)
        if held:
            self._held_by.add(why)
        else:
            self._held_by.discard(why)
        conn = self._conn
        if conn is None or before == bool(self._held_by):
            return
        if self._held_by:
            conn.pause_writing()
        else:
            conn.resume_writing()

    def connection_lost(self, exc: Exception | None = None) -> None:
        if self._lost:
            return
        self._lost = True
        self.link.hold_binary()
        self._ws.on_pause_writing = self._ws.on_resume_writing = None
        self._held_by.clear()
        if self._resume is not None and self._ack_handle is not None:
            self._ack_handle.cancel()
        if self._conn is not None:
            self._conn.connection_lost(exc)

    def _give_up(self, text: str) -> None:
        """The session cannot go on over this relay: say why, close SSH."""
        if self.failure is None:
            self.failure = text
        if self._resume is not None:
            self._resume.on_event(LinkEvent("gave_up", text=text))
        self.connection_lost(None)
        self.task.cancel()

    # -- the link's side ----------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._read(self.link)
                if self._finished or self._resume is None or self._conn is None:
                    return
                if self._lost and self._farewell is None:
                    return
                self._coming_back = True
                try:
                    if not await self._come_back():
                        return
                finally:
                    self._coming_back = False
        finally:
            self.connection_lost(None)

    async def _read(self, link: BrokerLink) -> None:
        """Control frames until the link closes (binary ones never get here:
        see BrokerLink)."""
        with contextlib.suppress(ConnectionClosed):
            async for frame in link.ws:
                if isinstance(frame, str):
                    await self._control(link, decode(frame))
                    if self._finished:
                        return

    async def _control(self, link: BrokerLink, msg: Message) -> None:
        if self._resume is not None and await self._resume_message(link, msg):
            return
        if msg.type in ("ended", "error"):
            self._finished = True
        await self._on_control(msg)

    async def _resume_message(self, link: BrokerLink, msg: Message) -> bool:
        """The messages of resuming, either role; True if `msg` was one."""
        assert self._resume is not None
        match msg.type:
            case "ack":
                try:
                    self._out.ack(msg["offset"])
                except ResumeError as exc:
                    self._give_up(f"the other end acknowledged bytes never sent ({exc})")
                if self._out.held <= _REPLAY_LOW and "replay" in self._held_by:
                    self._hold("replay", False)
            case "interrupted":
                self._up = False
                self._clear_pending()  # kept in the replay buffer
                self._window.lost(time.monotonic())
                self._resume.on_event(LinkEvent("peer_lost", float(msg["window"])))
            case "resume":
                # The other end is back and asks to resume: we check it.
                request = ResumeRequest(msg["attempt"], b64decode(msg["nonce"]),
                                        msg["received"])
                try:
                    challenge = self._verifier.challenge(request, self._in.received)
                except ResumeError as exc:
                    log.warning("resume refused: %s", exc)
                    await link.send("resume_refused")
                    return True
                self._peer_has = request.received
                self._in.restart(self._in.received)
                await link.send("resume_challenge", nonce=b64encode(challenge.nonce),
                                received=challenge.received, proof=b64encode(challenge.proof))
            case "resume_proof":
                try:
                    self._verifier.verify(b64decode(msg["proof"]))
                except ResumeError as exc:
                    # Whoever came cannot prove they are the paired end: the
                    # broker closes them; the session waits for the real one.
                    log.warning("resume refused: %s", exc)
                    await link.send("resume_refused")
                    return True
                await link.send("resume_accepted")
            case "resumed":
                self._resumed(link, float(msg["gap_ms"]) / 1000)
            case _:
                return False
        return True

    def _resumed(self, link: BrokerLink, gap: float) -> None:
        """Both ends are back: send exactly what the peer lacks, then go on."""
        if self._peer_has is None:
            self._give_up("the broker said the session resumed, but no resume was agreed")
            return
        try:
            replay = self._out.replay_from(self._peer_has)
        except ResumeError as exc:
            self._give_up(f"the other end asks for bytes this end no longer has ({exc})")
            return
        self._peer_has = None
        if self._out.held <= _REPLAY_LOW:
            self._hold("replay", False)
        if self._window.down:
            self._window.resumed(time.monotonic())
        self._up = True
        self._clear_pending()
        if replay:
            self._send_frames(replay)
        assert self._resume is not None
        self._resume.on_event(LinkEvent("resumed", gap))
        self._ack_now()

    async def _come_back(self) -> bool:
        """Our link broke: reconnect with backoff inside the window and
        resume. False when the session is over (said in `failure`)."""
        assert self._resume is not None
        resume = self._resume
        self._up = False
        self._clear_pending()
        # The dead link says nothing more: not its frames, not its buffer.
        self._ws.binary_sink = None
        self._ws.on_pause_writing = self._ws.on_resume_writing = None
        self._hold("link", False)
        self._window.lost(time.monotonic())
        resume.on_event(LinkEvent("lost"))
        while True:
            delay = self._window.next_attempt(time.monotonic())
            if delay is None:
                self.failure = (f"the connection to the broker could not be restored within "
                                f"{resume.window:.0f} s; the session is over")
                resume.on_event(LinkEvent("gave_up", text=self.failure))
                return False
            resume.on_event(LinkEvent("retrying", delay))
            await asyncio.sleep(delay)
            try:
                link = await resume.reconnect()
            except LinkError as exc:
                if exc.code in _FINAL_CODES:
                    self.failure = str(exc)
                    resume.on_event(LinkEvent("gave_up", text=self.failure))
                    return False
                continue
            outcome = await self._resume_on(link)
            if outcome is not None:
                return outcome

    async def _resume_on(self, link: BrokerLink) -> bool | None:
        """One attempt on a fresh link: True resumed, False over for good,
        None try again."""
        assert self._resume is not None
        request = self._resumer.request(self._in.received)
        self._in.restart(self._in.received)
        fields: dict[str, object] = {
            "session": self._resume.key.session, "attempt": request.attempt,
            "nonce": b64encode(request.nonce), "received": request.received}
        if self._resume.token is not None:
            fields["token"] = self._resume.token
        assert isinstance(link.ws, FastClientConnection)
        try:
            await link.send("resume", **fields)
            if self._farewell is not None:
                # Ended here while the link was down: the broker hears it now.
                await link.send("end", reason=self._farewell)
                await link.close()
                return False
            # Whatever comes now continues the stream from what we said we
            # have (the broker relays only once the resume is accepted).
            link.ws.binary_sink = self._incoming
            while True:
                msg = await link.recv(limits.RESUME_STEP_TIMEOUT + self._window.window)
                if msg.type == "resume_challenge":
                    try:
                        proof = self._resumer.answer(ResumeChallenge(
                            b64decode(msg["nonce"]), msg["received"], b64decode(msg["proof"])))
                    except ResumeError as exc:
                        # Not the paired end answering: the broker (or someone
                        # in its place) tried to take the session. Fail closed.
                        await link.close()
                        self.failure = f"refusing to resume: {exc}"
                        self._resume.on_event(LinkEvent("gave_up", text=self.failure))
                        return False
                    self._peer_has = msg["received"]
                    await link.send("resume_proof", proof=b64encode(proof))
                    continue
                if msg.type == "resumed":
                    self._switch_to(link)
                    self._resumed(link, float(msg["gap_ms"]) / 1000)
                    return True
                if msg.type == "interrupted":
                    # The other end is down too: wait here for it; it will ask us.
                    self._resume.on_event(LinkEvent("peer_lost", float(msg["window"])))
                    continue
                if msg.type in ("resume", "resume_proof"):
                    await self._resume_message(link, msg)
                    continue
                if msg.type == "ended":
                    self._switch_to(link)
                    self._finished = True
                    await self._on_control(msg)
                    return False
                await self._on_control(msg)
        except LinkError as exc:
            await link.close()
            if exc.code in _FINAL_CODES:
                self.failure = str(exc)
                self._resume.on_event(LinkEvent("gave_up", text=self.failure))
                return False
            return None
        except (WireError, ConnectionClosed):
            await link.close()
            return None

    def _switch_to(self, link: BrokerLink) -> None:
        """The fresh link's socket is the session's from now on. The
        `BrokerLink` object stays the same, so everyone holding it (to send
        `end`, `rights`, reports) sends on the new socket."""
        assert isinstance(link.ws, FastClientConnection)
        old = self.link.ws
        self.link.ws = self._ws = link.ws
        self._ws.binary_sink = self._incoming
        self._attach_flow(self._ws)
        self._hold("link", False)  # the old link's buffer is gone with it
        if old is not link.ws:
            asyncio.get_running_loop().create_task(_close_ws(old))

    # -- ending while the link is down ------------------------------------------

    @property
    def down(self) -> bool:
        """Our link is broken and being restored."""
        return self._resume is not None and not self._finished and self._coming_back

    def end_while_down(self, reason: str) -> None:
        """The session was ended here while the link is down: tell the broker
        `end` as soon as a link is back (within the window), instead of
        resuming."""
        self._farewell = reason

    def finish(self) -> None:
        """The session is over on this side: stop, unless an `end` still has
        to reach the broker (`end_while_down`)."""
        if self._farewell is None or not self._coming_back:
            self.task.cancel()


async def _close_ws(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await ws.close()
