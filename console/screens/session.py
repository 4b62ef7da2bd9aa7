"""One live session: the remote terminal, the files pane (F4) beside it,
the chat box (F3) below it, and a status bar."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Button, Static

from broker.wire.codes import Right
from broker.wire.text import printable
from console.backend import SessionEvent
from console.format import clock, literal, rights, size
from console.screens.chat import ChatBox, unread_text
from console.screens.files import FilesPane
from console.sessions import SessionRecord
from console.widgets.terminal import TerminalView


class SessionPane(Vertical):
    """Shows `record.live`; the app starts it once the terminal has a size."""

    def __init__(self, record: SessionRecord, *, id: str | None = None) -> None:
        super().__init__(id=id, classes="session-pane")
        self.record = record
        self.notice = ""

    def compose(self) -> ComposeResult:
        with Horizontal(classes="session-body"):
            yield TerminalView(self._input, self._resize, id=f"term-{self.record.key}")
            yield FilesPane(self.record.key)
        yield ChatBox(self.record.key)
        yield Static("", classes="session-status")

    @property
    def standing(self) -> bool:
        """False while the tab is being taken down (leaving removes its
        widgets one by one, and the clock's tick or a late event from the
        session can land in between) and after: nothing to draw then."""
        return (self.is_attached and bool(self.query(".session-status"))
                and bool(self.query(TerminalView)))

    @property
    def terminal(self) -> TerminalView:
        return self.query_one(TerminalView)

    @property
    def files(self) -> FilesPane:
        return self.query_one(FilesPane)

    def toggle_files(self) -> None:
        """F4: show the files pane beside the terminal (which narrows, and the
        shell is told its new size), or hide it again."""
        pane = self.files
        opening = not pane.has_class("-open")
        pane.set_class(opening, "-open")
        pane.display = opening
        # The terminal's new width, once laid out, is the shell's new size.
        self.call_after_refresh(self.terminal.fit)
        if not opening:
            self.terminal.focus()
            return
        live = self.record.live
        if pane.transfers is None and live is not None:
            pane.transfers = live.file_transfers()
        lacking = Right.FILES not in self.record.granted
        pane.show_ask(lacking and self.record.state == "active")
        if self.record.state != "active":
            pane.say("The session has ended: no more transfers.", error=True)
        elif lacking:
            pane.say("The customer has not allowed file transfer in this session. "
                     "Ask them: they see the request on their screen.", error=True)
            pane.query_one(".files-ask").focus()
            return
        else:
            pane.refresh_listing()
        pane.query_one("DataTable").focus()

    @on(Button.Pressed, ".files-ask")
    def _ask_for_files(self) -> None:
        self.run_worker(self._request_files(), group="ask-files", exclusive=True)

    async def _request_files(self) -> None:
        live = self.record.live
        if live is None or self.record.state != "active":
            return
        self.files.say("Asked the customer to allow file transfer; waiting for their "
                       "answer ...")
        self.set_notice("Asked the customer for files; waiting for their answer ...")
        await live.request_control(Right.FILES)

    def _files_granted(self) -> None:
        """The right arrived (asked for now, or granted back): the pane works."""
        pane = self.files
        pane.show_ask(False)
        if pane.has_class("-open") and self.record.state == "active":
            if pane.transfers is None and self.record.live is not None:
                pane.transfers = self.record.live.file_transfers()
            pane.refresh_listing()

    @property
    def chat(self) -> ChatBox:
        return self.query_one(ChatBox)

    def toggle_chat(self) -> None:
        """F3: show the chat box below the terminal (which loses rows, and the
        shell is told its new size), or hide it again."""
        box = self.chat
        opening = not box.is_open
        live = self.record.live
        if box.send is None and live is not None:
            box.send = live.say
        box.shown(opening)
        self.call_after_refresh(self.terminal.fit)
        if not opening:
            self.terminal.focus()
        self.refresh_status(time.monotonic())

    @on(ChatBox.Closed)
    def _chat_closed(self) -> None:
        if self.chat.is_open:
            self.toggle_chat()

    def terminal_text(self) -> str:
        return "\n".join(self.terminal.text_lines)

    def _input(self, data: bytes) -> None:
        live = self.record.live
        if live is not None and self.record.state == "active" and Right.CONTROL in live.granted:
            live.write(data)

    def on_terminal_view_input_dropped(self) -> None:
        if self.record.state == "active":
            self.set_notice("View only: your keys are not sent. F7 asks the customer for control.")

    def _resize(self, cols: int, rows: int) -> None:
        live = self.record.live
        if live is not None and self.record.state == "active":
            live.resize(cols, rows)

    def session_event(self, event: SessionEvent) -> None:
        # The record first: the home tab's table shows it after the tab is gone.
        if event.kind in ("rights", "control_result") and event.granted:
            self.record.granted = event.granted
        if event.kind == "roster":
            self.record.others = event.others
        if event.kind == "ended":
            self.record.end(event.text, time.monotonic())
        if not self.standing:
            return
        if event.kind == "chat":
            self._chat_line(event)
            return
        if event.kind == "ended":
            self.terminal.set_read_only(True)
        elif event.kind in ("rights", "control_result") and event.granted:
            self.terminal.set_read_only(Right.CONTROL not in event.granted)
            if Right.FILES in event.granted:
                self._files_granted()
            else:
                self.files.show_ask(self.files.has_class("-open"))
        self.set_notice(event.text)

    def _chat_line(self, event: SessionEvent) -> None:
        box = self.chat
        if event.chat is None:
            return
        box.add(event.chat)
        if not box.is_open:
            # The count only: the line itself is the customer's words, for
            # the box (a toast is not the place to read them).
            count = box.unread
            where = printable(self.record.alias or "a session", 40)
            self.app.notify(f"{count} new chat message{'' if count == 1 else 's'} in {where}: "
                            "F3 shows it.", title="Chat", markup=False)
            self.refresh_status(time.monotonic())

    def set_notice(self, text: str) -> None:
        self.notice = text
        self.refresh_status(time.monotonic())

    def refresh_status(self, now: float) -> None:
        """One line, most important first: what does not fit is cut with "…"
        (a second line would take a row from the terminal)."""
        if not self.standing:
            return
        record, live = self.record, self.record.live
        parts: list[Text | str] = [literal(record.alias or "-", 40, "bold")]
        unread = self.chat.unread if self.query(ChatBox) else 0
        if unread:  # before anything else: someone is waiting for an answer
            parts.append(Text(unread_text(unread), style="bold reverse"))
        if live is not None:
            parts.append(rights(record.granted))
            if record.others:  # a shared session: who else, before anything less vital
                parts.append(literal(f"with {record.others}", 160))
            parts.append(f"pairing {live.sas}")
        if self.notice:
            parts.append(literal(self.notice, 200, "italic"))
        parts.append("customer is watching" if record.state == "active" else record.state)
        if live is not None:
            parts += [clock(record.elapsed(now)),
                      f"in {size(live.bytes_in)} / out {size(live.bytes_out)}"]
        line = Text(" | ").join(Text(p) if isinstance(p, str) else p for p in parts)
        line.no_wrap = True
        line.overflow = "ellipsis"
        self.query_one(".session-status", Static).update(line)
