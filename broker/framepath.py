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

Shared by the broker's relay and by the agent's and console's links; it holds
no server logic.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["FastClientConnection", "FastServerConnection", "FramePath"]


class FramePath:
    """Mixin for websockets' asyncio connections (client or server)."""

    binary_sink: Callable[[bytes], None] | None = None
    on_pause_writing: Callable[[], None] | None = None
    on_resume_writing: Callable[[], None] | None = None

    def process_event(self, event: Frame) -> None:  # type: ignore[override]
        sink = self.binary_sink
        if sink is not None and event.opcode is Opcode.BINARY and event.fin:
            sink(event.data)
            return
        super().process_event(event)  # type: ignore[misc]

    def send_binary_now(self, data: bytes) -> bool:
        """Frame and write `data` at once; False if the connection is closing.

        Synchronous, for callbacks: the caller watches `on_pause_writing`
        rather than awaiting a drain.
        """
        if self.protocol.state is not State.OPEN:  # type: ignore[attr-defined]
            return False
        self.protocol.send_binary(data)  # type: ignore[attr-defined]
        self.send_data()  # type: ignore[attr-defined]
        return True

    def pause_writing(self) -> None:
        super().pause_writing()  # type: ignore[misc]
        if self.on_pause_writing is not None:
            self.on_pause_writing()

    def resume_writing(self) -> None:
        super().resume_writing()  # type: ignore[misc]
        if self.on_resume_writing is not None:
            self.on_resume_writing()


class FastServerConnection(FramePath, ServerConnection):
    pass


class FastClientConnection(FramePath, ClientConnection):
    pass
