"""The chat line beside the shell: its framing and its rules, without I/O.

Chat runs inside the end-to-end SSH connection as a subsystem channel
(`CHAT_SUBSYSTEM`), so the broker relays it like the shell and never reads
it. The agent is the hub: each engineer's console opens one chat channel,
the customer types at the agent's own screen, and the agent stamps every
line with who sent it (a console never names itself) and sends it to all.

On the channel each frame is one line of JSON ending in "\\n":

- console to agent: ``{"say": TEXT}``
- agent to console: ``{"from": NAME, "role": ROLE, "text": TEXT}`` where
  ROLE is "engineer", "customer" or "notice" (a line from the agent itself:
  a line refused, someone joined or left).

Everything a peer sends is bounded here: a frame longer than
`MAX_CHAT_FRAME` ends the channel (a line cannot be that long); a line
longer than `MAX_CHAT_CHARS` characters is cut; a sender faster than
`ChatRate` allows is told so and the line dropped. Text is kept to one line
of characters that print; it is still escaped again where it is shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from broker.wire.errors import WireError
from broker.wire.text import printable

__all__ = [
    "CHAT_HISTORY", "CHAT_SUBSYSTEM", "MAX_CHAT_CHARS", "MAX_CHAT_FRAME", "MAX_CHAT_NAME",
    "ChatDecoder", "ChatFrameError", "ChatLine", "ChatRate", "clean_text", "decode_line",
    "decode_say", "encode_line", "encode_say",
]

# The subsystem name of the chat line (asyncssh and OpenSSH allow any
# "name@domain" subsystem; this one is ours).
CHAT_SUBSYSTEM = "chat@consentry"

# A chat line is a sentence or two ("I am sending the patch now"), not a
# file: what does not fit belongs in a file transfer.
MAX_CHAT_CHARS = 500
# A sender's name as the agent stamps it (an engineer's display name).
MAX_CHAT_NAME = 80
# One frame: the longest line and name, every character escaped by JSON
# (\\uXXXX, six bytes), and the keys. A longer frame is no chat line.
MAX_CHAT_FRAME = 6 * (MAX_CHAT_CHARS + MAX_CHAT_NAME) + 128
# Lines the agent keeps to show an engineer who joins later, and the
# customer after a prompt covered the screen; nothing is kept after the
# session (chat is content: no log holds it).
CHAT_HISTORY = 50

Role = Literal["engineer", "customer", "notice"]
ROLES: tuple[Role, ...] = ("engineer", "customer", "notice")


class ChatFrameError(WireError):
    """A chat frame that is not one: too long, not JSON, or not a line."""


@dataclass(frozen=True)
class ChatLine:
    sender: str
    role: Role
    text: str


def clean_text(text: str, limit: int = MAX_CHAT_CHARS) -> str:
    """One line that prints: whitespace of any kind (newlines, tabs) becomes
    a space, other controls and format characters are removed, and the
    result is stripped and cut to `limit` characters. Empty means nothing
    to send."""
    out = []
    for ch in text:
        if ch.isspace():
            out.append(" ")
        elif printable(ch, 4) == ch:
            out.append(ch)
    return " ".join("".join(out).split())[:limit]


def encode_say(text: str) -> bytes:
    """What a console sends: its line, cleaned; the agent names the sender."""
    return _frame({"say": clean_text(text)})


def encode_line(line: ChatLine) -> bytes:
    return _frame({"from": clean_text(line.sender, MAX_CHAT_NAME), "role": line.role,
                   "text": clean_text(line.text)})


def _frame(body: dict[str, str]) -> bytes:
    return json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"


def _parse(frame: bytes) -> dict[str, object]:
    try:
        body = json.loads(frame.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ChatFrameError("a chat frame that is not JSON") from exc
    if not isinstance(body, dict):
        raise ChatFrameError("a chat frame that is not an object")
    return body


def decode_say(frame: bytes) -> str:
    """A console's line, cleaned (possibly empty: nothing to show)."""
    text = _parse(frame).get("say")
    if not isinstance(text, str):
        raise ChatFrameError("a chat frame without its line")
    return clean_text(text)


def decode_line(frame: bytes) -> ChatLine:
    """A line from the agent, cleaned again: the console trusts no peer."""
    body = _parse(frame)
    sender, text = body.get("from"), body.get("text")
    role = next((r for r in ROLES if r == body.get("role")), None)
    if not (isinstance(sender, str) and isinstance(text, str) and role is not None):
        raise ChatFrameError("a chat frame that is not a chat line")
    return ChatLine(clean_text(sender, MAX_CHAT_NAME), role, clean_text(text))


class ChatDecoder:
    """Splits a byte stream into frames, holding at most one partial frame
    of `MAX_CHAT_FRAME` bytes."""

    def __init__(self, limit: int = MAX_CHAT_FRAME) -> None:
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            frame = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            if len(frame) > self._limit:
                raise ChatFrameError("a chat frame longer than any chat line")
            if frame.strip():
                frames.append(frame)
        if len(self._buffer) > self._limit:
            raise ChatFrameError("a chat frame longer than any chat line")
        return frames


class ChatRate:
    """A token bucket per sender: `burst` lines at once, then `per_second`.
    Pure: the caller passes `now` (a monotonic clock)."""

    def __init__(self, per_second: float = 1.0, burst: int = 5) -> None:
        self._rate = per_second
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if self._last is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
