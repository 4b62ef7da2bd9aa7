"""The plain join's chat prompt (``Ctrl-]`` then ``m``): one line,
"message to the customer:", on the engineer's own terminal while the
shell's output is held. Enter sends it and goes back to the shell; Esc,
Ctrl-C or an empty line goes back without sending.

The line is not shown as sent here: the agent sends every line back to
everyone, this engineer's own included, and that echo ("[chat] Alice
Example: ...") is what says it went through. No I/O of its own: it writes
through `write`, sends through `send` and is fed the engineer's keys, so
its logic is tested without a terminal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from broker.wire.chat import MAX_CHAT_CHARS, ChatLine
from broker.wire.text import printable
from console.chat import line_text
from console.errors import ConsoleError
from console.line_edit import Key, LineEdit

PROMPT = "message to the customer: "
HINT = "Enter sends, Esc or an empty line goes back to the shell"
CANCELLED_TEXT = "no message sent; back to the shell"
# A long line shows its end, where the typing is: prompt and text stay on
# one row of an 80-column terminal.
SHOWN_CHARS = 50

Sender = Callable[[str], Awaitable[object]]


class ChatPrompt:
    """One line at a time; `open()` shows it, `feed()` takes keys,
    `on_close` is called once it has gone (the caller resumes the shell)."""

    def __init__(self, send: Sender, write: Callable[[str], None],
                 on_close: Callable[[], None]) -> None:
        self._send = send
        self._write = write
        self._on_close = on_close
        self.active = False
        self._edit = LineEdit(lambda text: len(text) <= MAX_CHAT_CHARS)
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def text(self) -> str:
        return self._edit.text

    def open(self) -> None:
        self.active = True
        self._edit.clear()
        self._write(f"\r\n\x1b[Kconsentry: chat ({HINT})\r\n")
        self._redraw()

    def feed(self, data: bytes) -> None:
        index = 0
        while index < len(data) and self.active:
            index, did = self._edit.key(data, index)
            if did is Key.CANCEL:
                self._close(CANCELLED_TEXT)
            elif did is Key.SUBMIT:
                text = self.text
                if not text.strip():
                    self._close(CANCELLED_TEXT)
                else:
                    self._close(None)
                    self._start(text)
            elif did is Key.REFUSED:
                # The longest line the agent takes: a key past it is dropped
                # (as a full field takes no more), said with a bell.
                self._write("\a")
            elif did is Key.CHANGED:
                self._redraw()

    def show_line(self, line: ChatLine) -> None:
        """A chat line that arrived while the prompt is open: above it,
        and the prompt drawn again below."""
        self._write(f"\r\x1b[K[chat] {line_text(line)}\r\n")
        self._redraw()

    def close(self) -> None:
        self._close(CANCELLED_TEXT)

    def _close(self, said: str | None) -> None:
        if not self.active:
            return
        self.active = False
        self._write(f"\r\x1b[Kconsentry: {said}\r\n" if said else "\r\x1b[K")
        self._on_close()

    def _redraw(self) -> None:
        # What the engineer typed, escaped like everything shown here.
        text = printable(self.text, MAX_CHAT_CHARS * 4)[-SHOWN_CHARS:]
        self._write(f"\r\x1b[K{PROMPT}{text}")

    def _start(self, text: str) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(text))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, text: str) -> None:
        try:
            await self._send(text)
        except ConsoleError as exc:
            self._write(f"\r\x1b[Kconsentry: not sent: {printable(str(exc), 300)}\r\n")

    @property
    def sending(self) -> bool:
        return bool(self._tasks)
