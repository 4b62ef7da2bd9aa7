"""Chat, the engineer's side: one chat channel (the `CHAT_SUBSYSTEM`) on the
session's own end-to-end SSH connection, so the broker relays the lines and
never reads them. No UI in here: the plain terminal (`console.chat_prompt`,
`console.terminal`) and the TUI's chat box share it.

The agent is the hub: it stamps each line with who said it (this console
never names itself), sends the history first, then every line as it is
said, this engineer's own included (that echo is how a sender sees their
line went through). What the agent sends is untrusted network text: lines
are cleaned by `decode_line` and escaped again wherever they are shown.

Bounded: what the agent sends arrives as SSH flow control allows and is
taken a frame at a time (`ChatDecoder` holds at most one partial frame);
lines kept for a reader that is not reading are at most `MAX_QUEUED`, the
oldest dropped first; a frame that is no chat line closes chat (the shell
goes on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

import asyncssh

from broker.wire.chat import (
    CHAT_HISTORY,
    CHAT_SUBSYSTEM,
    MAX_CHAT_CHARS,
    ChatDecoder,
    ChatFrameError,
    ChatLine,
    clean_text,
    decode_line,
    encode_say,
)
from broker.wire.text import printable
from console.errors import ConsoleError

__all__ = [
    "GARBAGE_TEXT", "LOST_TEXT", "NO_CHAT_TEXT", "ChatChannel", "ChatClosed", "ChatError",
    "NoChat", "line_text", "terminal_line",
]

# Lines waiting for `async for` to take them; as many as the agent keeps.
MAX_QUEUED = CHAT_HISTORY
# Read from the channel at a time (a few frames).
READ_SIZE = 8192
# The agent takes a line at once; a channel that will not is a stuck peer.
SEND_TIMEOUT = 10.0
OPEN_TIMEOUT = 30.0

NO_CHAT_TEXT = ("The customer's computer does not offer chat (its consentry agent may be "
                "older than this console).")
GARBAGE_TEXT = ("The customer's computer sent something that is not a chat line, so chat "
                "was closed; the shell goes on.")
LOST_TEXT = "Chat is closed: the session's connection has ended."

LineHandler = Callable[[ChatLine], None]
CloseHandler = Callable[[str], None]


class ChatError(ConsoleError):
    """A line that could not be sent, or chat that is not there; the text is
    for the engineer."""


class NoChat(ChatError):
    """The agent refused the chat subsystem."""


class ChatClosed(ChatError):
    """Chat was open and has closed (the session ended, or the agent sent garbage)."""


def line_text(line: ChatLine, max_len: int = MAX_CHAT_CHARS + 100) -> str:
    """A line as one escaped string: "Sender: text", or a notice's text alone
    (a notice is the agent's own word, not anyone's line)."""
    said = line.text if line.role == "notice" else f"{line.sender}: {line.text}"
    return printable(said, max_len)


def terminal_line(line: ChatLine) -> str:
    """A line for the plain terminal, between the shell's output: on a row
    of its own, marked, escaped (nothing in it acts on the terminal)."""
    return f"[chat] {line_text(line)}\r\n"  # on a row of its own: see _Output.own


class ChatChannel:
    """The chat line of one session. `open()` first; then `say()`, and lines
    arrive to `on_line` (called in the event loop, must not block) and to
    `async for line in channel` (which ends when chat closes). `history`
    keeps the last `CHAT_HISTORY` lines for a screen that opens later."""

    def __init__(self, conn: asyncssh.SSHClientConnection, *,
                 on_line: LineHandler | None = None,
                 on_close: CloseHandler | None = None) -> None:
        self._conn = conn
        self._on_line = on_line
        self._on_close = on_close
        self._writer: asyncssh.SSHWriter[bytes] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._queue: deque[ChatLine] = deque(maxlen=MAX_QUEUED)
        self._arrived = asyncio.Event()
        self.history: deque[ChatLine] = deque(maxlen=CHAT_HISTORY)
        self.dropped = 0  # lines `async for` was too slow to take
        # Why chat is not usable, once it is not (None while it is, or before open).
        self.closed_reason: str | None = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None and self.closed_reason is None

    async def open(self) -> None:
        """Open the chat channel. Raises `NoChat` when the customer's
        computer does not offer chat, `ChatClosed` when the connection failed."""
        try:
            writer, reader, _stderr = await asyncio.wait_for(
                self._conn.open_session(subsystem=CHAT_SUBSYSTEM, encoding=None),
                OPEN_TIMEOUT)
        except asyncssh.ChannelOpenError as exc:
            self.closed_reason = NO_CHAT_TEXT
            raise NoChat(NO_CHAT_TEXT) from exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            self.closed_reason = LOST_TEXT
            raise ChatClosed(LOST_TEXT) from exc
        self._writer = writer
        self._pump = asyncio.get_running_loop().create_task(self._read(reader))

    async def _read(self, reader: asyncssh.SSHReader[bytes]) -> None:
        decoder = ChatDecoder()
        reason = LOST_TEXT
        try:
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                for frame in decoder.feed(data):
                    self._received(decode_line(frame))
        except ChatFrameError:
            reason = GARBAGE_TEXT
        except (asyncssh.Error, OSError):
            pass
        finally:
            self._closed(reason)

    def _received(self, line: ChatLine) -> None:
        if not line.text:
            return  # nothing left to show once cleaned
        self.history.append(line)
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(line)
        self._arrived.set()
        if self._on_line is not None:
            self._on_line(line)

    def _closed(self, reason: str) -> None:
        if self.closed_reason is not None:
            return
        self.closed_reason = reason
        self._arrived.set()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.channel.close()
        if self._on_close is not None:
            self._on_close(reason)

    async def say(self, text: str) -> str:
        """Send one line; returns it as sent (cleaned: one line that prints).
        The agent names the sender and sends it back to everyone, this
        console included. Raises `ChatError` for an empty or overlong line
        (nothing sent: the engineer may shorten it) or when chat is closed."""
        line = clean_text(text, len(text) + 1)
        if not line:
            raise ChatError("Nothing to send: the line is empty.")
        if len(line) > MAX_CHAT_CHARS:
            raise ChatError(f"That line is {len(line)} characters long; a chat line may have "
                            f"at most {MAX_CHAT_CHARS}. Nothing was sent (send longer text "
                            "as a file).")
        writer = self._writer
        if writer is None or self.closed_reason is not None:
            raise ChatClosed(self.closed_reason or "Chat is not open yet; try again in a moment.")
        try:
            writer.write(encode_say(line))
            await asyncio.wait_for(writer.drain(), SEND_TIMEOUT)
        except TimeoutError as exc:
            raise ChatError("The customer's computer is not taking chat lines; that line may "
                            "not have arrived.") from exc
        except (asyncssh.Error, OSError, BrokenPipeError) as exc:
            self._closed(LOST_TEXT)
            raise ChatClosed(LOST_TEXT) from exc
        return line

    def __aiter__(self) -> ChatChannel:
        return self

    async def __anext__(self) -> ChatLine:
        while not self._queue:
            if self.closed_reason is not None:
                raise StopAsyncIteration
            self._arrived.clear()
            await self._arrived.wait()
        return self._queue.popleft()

    async def close(self) -> None:
        """Close the channel (the session goes on); `closed_reason` is then
        `LOST_TEXT` unless chat had closed for another reason first."""
        writer = self._writer
        if writer is not None:
            writer.channel.close()
        pump = self._pump
        if pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(pump, 5)
        self._closed(LOST_TEXT)
