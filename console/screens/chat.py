"""The chat box of a session tab (F3): the chat's history, sender in bold
and coloured by role, and a one-line input (Enter sends, Esc goes back to
the terminal).

Every line is network text: it is shown as a `Text` built from escaped
strings (`printable`), never parsed as markup. The box keeps what arrives
while it is hidden and counts it as unread, for the status bar's badge.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Static

from broker.wire.chat import CHAT_HISTORY, MAX_CHAT_CHARS, ChatLine
from broker.wire.text import printable
from console.chat import ChatError, line_text

# The sender's style by role: the customer stands out from engineers; a
# notice (the agent's own word) is no one's line.
ROLE_STYLE = {"engineer": "bold cyan", "customer": "bold green", "notice": "italic"}
TITLE = "Chat with the customer and engineers: Enter sends, Esc back to the terminal"


def rendered(line: ChatLine) -> Text:
    """One line as shown: "Sender: text", literal."""
    if line.role == "notice":
        return Text(line_text(line), style="italic")
    return Text.assemble((printable(line.sender, 80), ROLE_STYLE[line.role]),
                         ": ", printable(line.text, MAX_CHAT_CHARS))


def unread_text(count: int) -> str:
    return f"{count} new message{'' if count == 1 else 's'} (F3)"


class ChatBox(Vertical):
    """Hidden until F3; `send` is the session's `say` once it runs."""

    BINDINGS = [Binding("escape", "leave", "Back to the terminal", show=False)]

    class Closed(Message):
        """Esc: the pane hides the box and gives the terminal focus back."""

    def __init__(self, key: str) -> None:
        super().__init__(id=f"chat-{key}", classes="chat-box")
        self.send: Callable[[str], Awaitable[None]] | None = None
        self.lines: deque[ChatLine] = deque(maxlen=CHAT_HISTORY)
        self.unread = 0

    def compose(self) -> ComposeResult:
        yield Static(Text(TITLE), classes="chat-title")
        # One Static of every line kept (at most CHAT_HISTORY), redrawn whole
        # on each: it wraps at the box's own width whenever that is known
        # (a RichLog wraps at the width it had when written, none if hidden).
        with VerticalScroll(classes="chat-log"):
            yield Static(Text(""), classes="chat-lines")
        yield Static(Text(""), classes="chat-status")
        yield Input("", classes="chat-input", max_length=MAX_CHAT_CHARS,
                    placeholder="message (the customer and every engineer see it)")

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    def add(self, line: ChatLine) -> None:
        self.lines.append(line)
        self._draw()
        if not self.is_open:
            self.unread += 1

    def shown(self, opening: bool) -> None:
        self.set_class(opening, "-open")
        self.display = opening
        if opening:
            self.unread = 0
            self.query_one(Input).focus()
            self._draw()

    def _draw(self) -> None:
        self.query_one(".chat-lines", Static).update(
            Text("\n").join(rendered(line) for line in self.lines))
        log = self.query_one(".chat-log", VerticalScroll)
        log.call_after_refresh(log.scroll_end, animate=False)  # the newest in view

    def say(self, text: str, *, error: bool = False) -> None:
        status = self.query_one(".chat-status", Static)
        status.update(Text(printable(text, 300)))
        status.set_class(error, "error")

    @property
    def status_text(self) -> str:
        return str(self.query_one(".chat-status", Static).render())

    def action_leave(self) -> None:
        self.post_message(self.Closed())

    @on(Input.Submitted, ".chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._send(event.value)

    @work(group="chat-send")
    async def _send(self, text: str) -> None:
        if self.send is None:
            self.say("The session's connection is not open yet.", error=True)
            return
        try:
            await self.send(text)
        except ChatError as exc:
            self.say(str(exc), error=True)  # the text stays, to shorten or send again
            return
        field = self.query_one(Input)
        if field.value == text:
            field.value = ""
        self.say("")
