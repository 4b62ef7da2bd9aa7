"""An SSH connection carried over a broker link, as asyncssh's `tunnel=`.

Binary frames go straight into the SSH connection from the websockets
protocol callback (`broker.framepath`), and SSH writes go straight out as
frames: no socket pair, no pump task, one copy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from websockets.exceptions import ConnectionClosed

from broker.client.link import BrokerLink, FastClientConnection, LinkError
from broker.wire import limits
from broker.wire.messages import Message, decode

__all__ = ["SSHRelay"]


class _LinkTransport(asyncio.Transport):
    """What asyncssh writes to. Writes made in one turn of the event loop
    (an SSH packet, the next one, a window adjust) leave together at its end
    as few binary frames: one pass through the broker instead of several."""

    def __init__(self, ws: FastClientConnection, on_close: Callable[[], None]) -> None:
        super().__init__()
        self._ws = ws
        self._on_close = on_close
        self._closing = False
        self._pending = bytearray()
        self._flush_handle: asyncio.Handle | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._pending += data
        if self._flush_handle is None:
            self._flush_handle = self._ws.loop.call_soon(self._flush)  # no getpid() per write

    def _flush(self) -> None:
        self._flush_handle = None
        view, step = memoryview(self._pending), limits.MAX_DATA_FRAME
        frames = [bytes(view[start:start + step]) for start in range(0, len(view), step)]
        view.release()
        self._pending.clear()
        self._ws.send_binary_now(*frames)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        # Closing SSH does not close the link: the session's owner says `end`.
        if not self._closing:
            self._closing = True
            asyncio.get_running_loop().call_soon(self._on_close)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        transport = self._ws.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        return queued + len(self._pending)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("consentry-relay", 0) if name in ("peername", "sockname") else default


class SSHRelay:
    """Carries one SSH connection over a link, as asyncssh's `tunnel=`.

    Binary frames go straight into the SSH connection from the websockets
    protocol callback, and SSH writes go straight out as frames: no socket
    pair, no pump task, one copy. Control (text) frames that arrive meanwhile
    are read by `task` and given to `on_control`; `task` ends when the link
    closes.
    """

    def __init__(self, link: BrokerLink,
                 on_control: Callable[[Message], Awaitable[None]]) -> None:
        ws = link.ws
        if not isinstance(ws, FastClientConnection):
            raise TypeError("SSHRelay needs a link opened by open_link()")
        self._link = link
        self._ws: FastClientConnection = ws
        self._on_control = on_control
        self._conn: asyncio.Protocol | None = None
        self._lost = False
        self.task: asyncio.Task[None] = asyncio.create_task(self._control())

    async def create_connection(self, session_factory: Callable[[], asyncio.Protocol],
                                host: str, port: int,
                                ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        """Called by asyncssh (client `connect` or server `run_server`)."""
        if self._conn is not None:
            raise LinkError("this relay already carries a connection")
        conn = session_factory()
        self._conn = conn
        transport = _LinkTransport(self._ws, self._connection_lost)
        # The link's buffer filling up is SSH's signal to stop writing.
        self._ws.on_pause_writing = conn.pause_writing
        self._ws.on_resume_writing = conn.resume_writing
        conn.connection_made(transport)
        # Frames held since the link opened (the peer's banner can come before
        # asyncssh asks for the connection) go first; then the fast path.
        # Both happen in this one synchronous step, so order is kept.
        for frame in self._link.take_held():
            conn.data_received(frame)
        self._ws.binary_sink = conn.data_received
        return transport, conn

    def _connection_lost(self, exc: Exception | None = None) -> None:
        if self._lost:
            return
        self._lost = True
        self._link.hold_binary()
        self._ws.on_pause_writing = self._ws.on_resume_writing = None
        if self._conn is not None:
            self._conn.connection_lost(exc)

    async def _control(self) -> None:
        try:
            async for frame in self._ws:  # binary frames never get here (see BrokerLink)
                if isinstance(frame, str):
                    await self._on_control(decode(frame))
        except ConnectionClosed:
            pass
        finally:
            self._connection_lost(None)
