"""Runs a join's handshake (`broker.wire.machine.handshake.Handshake`) over a
broker link: the few lines of I/O around the machine, the same for the
agent and the console.

Each `next_event` reads one frame (or waits out the handshake's deadline,
or finds the link gone), hands it to the machine with the time, sends what
the machine says to send, and returns what happened, one event at a time.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from websockets.exceptions import ConnectionClosed

from broker.client.link import BrokerLink, LinkError
from broker.wire.machine.handshake import Event, Handshake, Output, Send

__all__ = ["HandshakeRun"]


class HandshakeRun:
    """One `Handshake` on one `BrokerLink`; `clock` is monotonic seconds."""

    def __init__(self, link: BrokerLink, handshake: Handshake,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.handshake = handshake
        self.clock = clock
        self._events: deque[Event] = deque()

    async def start(self) -> None:
        """Send the handshake's first message (`join` or `attach`)."""
        await self.perform(self.handshake.start(self.clock()))

    async def next_event(self) -> Event:
        """The next thing that happened; after the outcome (`Established`,
        `Refused` or `Failed`) there is none to wait for: it is returned again.

        Cancelling it while it waits for a frame loses nothing (websockets'
        `recv` is cancellation-safe), so a prompt may race it."""
        while not self._events:
            outcome = self.handshake.outcome
            if self.handshake.done and outcome is not None:
                return outcome
            await self._step()
        return self._events.popleft()

    async def perform(self, outputs: list[Output]) -> None:
        """Send the `Send`s in order and queue the events. A send that fails
        (the link closed) is the handshake's `lost`, and nothing more is sent."""
        for out in outputs:
            if not isinstance(out, Send):
                self._events.append(out)
                continue
            try:
                await self.link.send(out.type, **out.fields)
            except ConnectionClosed:
                self._queue(self.handshake.lost(
                    self.clock(), "the connection closed before the message was sent"))
                return

    async def _step(self) -> None:
        handshake = self.handshake
        deadline = handshake.deadline()
        timeout = None if deadline is None else max(0.0, deadline - self.clock())
        try:
            frame = await self.link.recv_frame(timeout)
        except LinkError as exc:
            if exc.code == "timeout":
                await self.perform(handshake.tick(self.clock()))
            else:
                await self.perform(handshake.lost(self.clock(), str(exc)))
            return
        await self.perform(handshake.receive_frame(frame, self.clock()))

    def _queue(self, outputs: list[Output]) -> None:
        self._events.extend(out for out in outputs if not isinstance(out, Send))
