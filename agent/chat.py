"""The chat line of one running session, held by the agent.

The agent is the hub (see `broker.wire.chat`): every engineer's console
opens a chat channel inside its own SSH connection, the customer types at
the agent's screen, and the agent stamps each line with who said it — an
engineer's display name as the customer approved it, never a name a
console gives itself — and sends it to every engineer's channel and to the
customer's screen.

Chat is content: the room keeps the last `CHAT_HISTORY` lines in memory,
for an engineer who joins later and for the customer's chat page, and
nothing else anywhere. `close` at the end of the session forgets them.

Each sender (an engineer's seat, the customer) has its own `ChatRate`: a
line faster than it allows is dropped and only its sender is told. A
channel that does not take what it is sent (more than `MAX_CHAT_BACKLOG`
bytes waiting) is closed rather than buffered without limit, and a channel
that sends something that is not a chat frame is closed; either way the
others go on.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import asyncssh

from agent.sshd import ChatHandler, Gate
from broker.wire.chat import (
    CHAT_HISTORY,
    MAX_CHAT_FRAME,
    ChatDecoder,
    ChatFrameError,
    ChatLine,
    ChatRate,
    Role,
    clean_text,
    decode_say,
    encode_line,
)

log = logging.getLogger("consentry.agent")

# What one engineer's chat channel may have waiting to be sent before the
# agent gives up on it: the whole history twice over at the longest lines
# (what a new channel is sent at once), far beyond a console that reads.
MAX_CHAT_BACKLOG = 2 * CHAT_HISTORY * MAX_CHAT_FRAME
# How the customer's lines are signed (the engineers know which computer
# they are on; the customer's own name is theirs to type if they wish).
CUSTOMER_NAME = "Customer"
# What a sender faster than its rate is told (at most once a second, so a
# flood of dropped lines is not answered with a flood of notices).
TOO_FAST = "Your line was not sent: too many lines at once. Wait a moment and send it again."
NOTICE_INTERVAL = 1.0
# Read from an engineer's channel at most this much at a time.
READ_CHUNK = 4096
# The name on the agent's own lines.
NOTICE_NAME = "consentry"


class ChatPeer(Protocol):
    """One engineer's chat channel, as the room sees it."""

    def write(self, data: bytes) -> None: ...
    def backlog(self) -> int: ...
    def close(self) -> None: ...


@dataclass(eq=False)
class Sender:
    """Someone who may say lines: an engineer's seat (all its chat channels
    share one rate) or the customer."""

    name: str
    role: Role
    rate: ChatRate = field(default_factory=ChatRate)
    noticed_at: float | None = None


class ChatRoom:
    """One running session's chat: who is in it, and its last lines."""

    def __init__(self, show: Callable[[ChatLine], None], *,
                 customer_name: str = CUSTOMER_NAME,
                 clock: Callable[[], float] = time.monotonic,
                 max_backlog: int = MAX_CHAT_BACKLOG) -> None:
        # The customer's screen: every line, theirs included, and notices to them.
        self._show = show
        self._clock = clock
        self._max_backlog = max_backlog
        self.customer = Sender(clean_text(customer_name) or CUSTOMER_NAME, "customer")
        self.history: deque[ChatLine] = deque(maxlen=CHAT_HISTORY)
        self._peers: dict[ChatPeer, Sender] = {}
        self.closed = False

    # -- who is in the room --------------------------------------------------

    def engineer(self, name: str) -> Sender:
        """A sender for one engineer's seat, named as the customer approved it."""
        return Sender(clean_text(name) or "Engineer", "engineer")

    def open(self, peer: ChatPeer, sender: Sender) -> bool:
        """A channel joins: it gets the history first, then every new line.
        False (and the channel closed) once the session's chat is over."""
        if self.closed:
            peer.close()
            return False
        self._peers[peer] = sender
        for line in self.history:
            self._send(peer, encode_line(line))
        return peer in self._peers

    def leave(self, peer: ChatPeer) -> None:
        self._peers.pop(peer, None)

    @property
    def channels(self) -> int:
        return len(self._peers)

    def close(self) -> None:
        """The session is over: every channel closes and the lines are gone."""
        self.closed = True
        peers = list(self._peers)
        self._peers.clear()
        self.history.clear()
        for peer in peers:
            with contextlib.suppress(Exception):
                peer.close()

    # -- lines ---------------------------------------------------------------

    def say(self, sender: Sender, text: str, peer: ChatPeer | None = None) -> ChatLine | None:
        """`sender` says `text` (from `peer`, an engineer's channel): the line
        as sent to everyone, or None when there was nothing to send or it
        came too fast (then only the sender is told)."""
        text = clean_text(text)
        if not text or self.closed:
            return None
        now = self._clock()
        if not sender.rate.allow(now):
            if sender.noticed_at is None or now - sender.noticed_at >= NOTICE_INTERVAL:
                sender.noticed_at = now
                notice = ChatLine(NOTICE_NAME, "notice", TOO_FAST)
                if peer is not None:
                    self._send(peer, encode_line(notice))
                elif sender is self.customer:
                    self._show(notice)
            return None
        line = ChatLine(sender.name, sender.role, text)
        self.history.append(line)
        frame = encode_line(line)
        for other in list(self._peers):
            self._send(other, frame)
        self._show(line)
        return line

    def _send(self, peer: ChatPeer, frame: bytes) -> None:
        """One frame to one channel; a channel that has fallen too far behind
        (or broke) is closed instead."""
        try:
            peer.write(frame)
            behind = peer.backlog() > self._max_backlog
        except (OSError, asyncssh.Error):
            behind = True
        if behind:
            log.info("a chat channel fell behind (or broke) and was closed")
            self.leave(peer)
            with contextlib.suppress(Exception):
                peer.close()

    # -- one engineer's channel, over SSH ------------------------------------

    def handler(self, name: str) -> ChatHandler:
        """The seat's `Services.chat`: each of its chat channels speaks as
        `name` (the engineer's display name), with one rate for the seat."""
        sender = self.engineer(name)

        async def serve(reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes],
                        gate: Gate) -> None:
            peer = _ChannelPeer(writer)
            try:
                if self.open(peer, sender):
                    await self._read(reader, peer, sender, gate)
            finally:
                self.leave(peer)
                peer.close()

        return serve

    async def _read(self, reader: asyncssh.SSHReader[bytes], peer: ChatPeer, sender: Sender,
                    gate: Gate) -> None:
        decoder = ChatDecoder()
        while peer in self._peers:
            try:
                data = await reader.read(READ_CHUNK)
            except (OSError, asyncssh.Error):
                return
            if not data:
                return  # the engineer closed the chat (or the connection went)
            try:
                for frame in decoder.feed(data):
                    if self.say(sender, decode_say(frame), peer) is not None:
                        gate.on_chat()
            except ChatFrameError as exc:
                log.info("a chat channel sent %s; it was closed", exc)
                return


class _ChannelPeer:
    """An engineer's chat channel (the writer half of an asyncssh stream)."""

    def __init__(self, writer: asyncssh.SSHWriter[bytes]) -> None:
        self._writer = writer
        self._closed = False

    def write(self, data: bytes) -> None:
        if not self._closed:
            self._writer.write(data)

    def backlog(self) -> int:
        return int(self._writer.channel.get_write_buffer_size())

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError, asyncssh.Error):
                self._writer.close()
