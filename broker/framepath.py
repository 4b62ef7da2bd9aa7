"""A fast path for binary frames on a websockets connection.

websockets normally queues every incoming message for a reader task, which
then awaits `send()` on the other side: two task switches, a queue and a lock
per frame. Relay bytes need none of that. With `binary_sink` set, a complete
binary frame is handed to the sink from the protocol callback itself; text
(control) frames still take the normal path, so the code that validates them
is unchanged.

Flow control stays end to end: when this connection's transport has too much
to write, `on_pause_writing` runs (the relay then stops reading the other
socket) and `on_resume_writing` when it drains.

Shared by the broker's relay (`broker.listener.FastServerConnection`) and by
the agent's and console's links (`broker.client.link.FastClientConnection`):
a mixin for either side's connection, importing neither side.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from websockets.asyncio.connection import Connection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, State

__all__ = ["FramePath"]


class FramePath(Connection):
    """Mixin for websockets' asyncio connections (client or server): put it
    first, before `ClientConnection` or `ServerConnection`."""

    binary_sink: Callable[[bytes], object] | None = None  # what it returns is ignored
    on_pause_writing: Callable[[], None] | None = None
    on_resume_writing: Callable[[], None] | None = None

    def process_event(self, event: Event) -> None:
        sink = self.binary_sink
        if (sink is not None and isinstance(event, Frame) and event.opcode is Opcode.BINARY
                and event.fin):
            # A parsed frame holds bytes (masked, from a client) or a bytearray
            # (unmasked, from the broker); every sink only reads or appends it,
            # which both allow, and copying it to bytes would cost a copy a frame.
            sink(event.data)  # type: ignore[arg-type]
            return
        super().process_event(event)

    _flush_handle: asyncio.Handle | None = None

    # When anything last arrived from the peer (event-loop time), and how
    # many times anything has: the count, not the time, tells whether the
    # peer answered a ping (uvloop's clock ticks in milliseconds, and a pong
    # over loopback can come back within the tick that sent the ping).
    last_heard: float = 0.0
    heard_count: int = 0

    def data_received(self, data: bytes) -> None:
        self.last_heard = self.loop.time()
        self.heard_count += 1
        super().data_received(data)

    async def keepalive(self) -> None:
        """websockets' keepalive task, except that a ping goes out only
        after `ping_interval` of silence from the peer: anything it sends
        (data, or its own ping) already shows it is alive. Clients use it;
        the broker, holding thousands of connections, runs one
        `broker.keepalive` sweep for all of them instead of a task each."""
        interval = self.ping_interval
        if interval is None:  # websockets starts no keepalive then; nor do we
            return
        timeout = self.ping_timeout or interval
        loop = self.loop
        try:
            while True:
                if not self.keepalive_tick(loop.time(), interval, timeout):
                    return
                await asyncio.sleep(min(interval, timeout) / 4)
        except Exception:  # as websockets does: a keepalive failure is logged, not raised
            self.logger.error("keepalive ping failed", exc_info=True)

    # When the unanswered keepalive ping went out (event-loop time), or 0,
    # and `heard_count` at that moment.
    _ping_sent_at: float = 0.0
    _heard_at_ping: int = 0

    def keepalive_tick(self, now: float, interval: float, timeout: float) -> bool:
        """One keepalive step at time `now`: ping a peer silent for
        `interval`; fail one that has not answered a ping for `timeout`.
        Anything received after the ping counts as the answer. False once the
        connection is no longer open."""
        if self.protocol.state is not State.OPEN:
            return False
        heard = self.last_heard or now
        if self._ping_sent_at:
            if self.heard_count > self._heard_at_ping:
                self._ping_sent_at = 0.0
            elif now - self._ping_sent_at >= timeout:
                self.protocol.fail(
                    CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                self.send_data()
                self.transport.abort()  # the peer is not reading
                return False
            else:
                return True
        if now - heard >= interval:
            self.protocol.send_ping(b"")
            self.send_data()
            self._ping_sent_at, self._heard_at_ping = now, self.heard_count
        return True

    def send_binary_now(self, *frames: bytes) -> bool:
        """Frame and write each of `frames` at once, in one transport write;
        False if the connection is closing.

        Synchronous, for callbacks: the caller watches `on_pause_writing`
        rather than awaiting a drain.
        """
        if self.protocol.state is not State.OPEN:
            return False
        for data in frames:
            self.protocol.send_binary(data)
        self.send_data()
        return True

    def send_binary_soon(self, data: bytes) -> bool:
        """Queue `data` as a binary frame, written at the end of this turn of
        the event loop together with whatever else is queued by then: frames
        that arrived together leave together, in one TLS pass and one system
        call, and nothing waits longer than the current turn."""
        if self.protocol.state is not State.OPEN:
            return False
        self.protocol.send_binary(data)
        if self._flush_handle is None:
            # The connection's own loop: on Python 3.11 get_running_loop()
            # makes a getpid() system call, per frame here.
            self._flush_handle = self.loop.call_soon(self._flush_soon)
        return True

    def _flush_soon(self) -> None:
        self._flush_handle = None
        self.send_data()

    def send_data(self) -> None:
        """websockets' `send_data`, with everything queued joined into one
        transport write (it writes frame by frame: a TLS record flush and a
        system call each)."""
        pending: list[bytes] = []
        for data in self.protocol.data_to_send():
            if data:
                pending.append(data)
                continue
            # End of stream: flush what came before it, then half-close or
            # close as websockets does (half-close is not possible over TLS).
            self._write_joined(pending)
            pending = []
            transport = self.transport
            if transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise RuntimeError
                    transport.write_eof()
            else:
                transport.close()
        self._write_joined(pending)

    def _write_joined(self, chunks: list[bytes]) -> None:
        if chunks:
            self.transport.write(
                chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.on_resume_writing is not None:
            self.on_resume_writing()
