"""The engineer's workspace: Home, one tab per session, and (admins) Audit."""

from __future__ import annotations

import asyncio
import itertools
import time

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.content import Content
from textual.screen import Screen
from textual.widgets import Footer, Header, TabbedContent, TabPane

from broker.wire.codes import Right
from broker.wire.text import printable
from console.backend import Profile, Progress, SessionEvent
from console.errors import ConsoleError
from console.screens.app_access import backend_of
from console.screens.audit import AuditPane
from console.screens.confirm import ConfirmModal
from console.screens.home import HomePane
from console.screens.session import SessionPane
from console.sessions import SessionRecord


class MainScreen(Screen[None]):
    BINDINGS = [
        Binding("f3", "chat", "Chat"),
        Binding("f4", "files", "Files"),
        Binding("f6", "next_tab", "Next tab"),
        Binding("f7", "ask_control", "Ask for control"),
        Binding("f8", "leave", "Leave session"),
        Binding("f10", "quit", "Quit"),
    ]

    def __init__(self, profile: Profile) -> None:
        super().__init__()
        self.profile = profile
        self.records: dict[str, SessionRecord] = {}
        self._keys = itertools.count(1)

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(id="tabs"):
            with TabPane("Home", id="home"):
                yield HomePane()
            if self.profile.is_admin:
                with TabPane("Audit log", id="audit"):
                    yield AuditPane()
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"{self.profile.display} ({self.profile.role})"
        self.set_interval(1.0, self.tick)
        self.query_one("#code").focus()

    # -- time passes ----------------------------------------------------------

    def tick(self) -> None:
        now = time.monotonic()
        home = self.query_one(HomePane)
        home.refresh_sessions(list(self.records.values()), now)
        waiting = [r for r in self.records.values() if r.state in ("joining", "pairing",
                                                                    "waiting")]
        if waiting:
            home.show_status(waiting[-1].status_text(now))
        for pane in self.query(SessionPane):
            pane.refresh_status(now)

    # -- joining ----------------------------------------------------------------

    @on(HomePane.JoinRequested)
    def _join(self, message: HomePane.JoinRequested) -> None:
        key = f"s{next(self._keys)}"
        record = SessionRecord(key, message.code, message.wants_control, time.monotonic(),
                               wants_files=message.wants_files)
        self.records[key] = record
        self.tick()
        self._run_join(record)

    @work(group="join")
    async def _run_join(self, record: SessionRecord) -> None:
        home = self.query_one(HomePane)

        def progress(step: Progress) -> None:
            record.progress(step)
            self.tick()

        try:
            live = await backend_of(self).join(
                record.code, record.wants_control, progress, files=record.wants_files)
        except ConsoleError as exc:
            record.fail(exc, time.monotonic())
            home.show_status(record.detail, error=True)
            self.tick()
            return
        record.activate(live, time.monotonic())
        home.show_status(f"Connected to {live.alias}.")
        pane = SessionPane(record, id=f"pane-{record.key}")
        tabs = self.query_one("#tabs", TabbedContent)
        # Content(...) is literal text: a tab title is never parsed as markup.
        title = Content(printable(live.alias, 24))
        await tabs.add_pane(TabPane(title, pane, id=record.key))
        tabs.active = record.key
        terminal = pane.terminal
        terminal.set_read_only(Right.CONTROL not in live.granted)
        terminal.focus()
        # Start the shell at the size the engineer will actually see, so the
        # first screenful is drawn for it rather than reflowed afterwards.
        for _ in range(100):
            if terminal.size.height > 0:
                break
            await asyncio.sleep(0.02)
        cols, rows = terminal.size_cells
        try:
            await live.start(cols, rows, terminal.feed, pane.session_event)
        except ConsoleError as exc:
            pane.session_event(SessionEvent("ended", f"Could not open the shell: {exc}"))
        else:
            # A resize while the shell was opening had no channel to go to:
            # tell the shell the size the engineer sees now.
            if terminal.size_cells != (cols, rows):
                live.resize(*terminal.size_cells)
        if Right.CONTROL not in live.granted:
            pane.set_notice("View only. F7 asks the customer for control.")
        self.tick()

    # -- actions ------------------------------------------------------------------

    # F3, F4, F7 and F8 act on the session tab in front: elsewhere they are left out
    # of the footer, which at 80 columns has no room for keys that do nothing.
    _SESSION_ACTIONS = frozenset({"ask_control", "leave", "files", "chat"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self._SESSION_ACTIONS:
            return self._current() is not None
        return True

    @on(TabbedContent.TabActivated)
    def _tab_changed(self) -> None:
        self.refresh_bindings()

    def _current(self) -> SessionRecord | None:
        active = self.query_one("#tabs", TabbedContent).active
        return self.records.get(active)

    def action_next_tab(self) -> None:
        tabs = self.query_one("#tabs", TabbedContent)
        ids = [pane.id for pane in tabs.query(TabPane) if pane.id]
        if ids:
            index = ids.index(tabs.active) if tabs.active in ids else -1
            self.show_tab(ids[(index + 1) % len(ids)])

    def show_tab(self, pane_id: str) -> None:
        """Switch tabs and focus what you work with there. Focus must move
        too: left on a widget in a hidden pane, Textual would hand it to a
        neighbour there and switch straight back."""
        tabs = self.query_one("#tabs", TabbedContent)
        tabs.active = pane_id
        target = {"home": "#code", "audit": "#events"}.get(pane_id, f"#term-{pane_id}")
        for widget in self.query(target):
            widget.focus()

    @on(HomePane.SessionChosen)
    def _open(self, message: HomePane.SessionChosen) -> None:
        record = self.records.get(message.key)
        if record is not None and record.live is not None and record.state == "active":
            self.show_tab(record.key)

    def action_files(self) -> None:
        record = self._current()
        if record is None:
            self.notify("Open a session tab first (F6).", severity="warning")
            return
        self.query_one(f"#pane-{record.key}", SessionPane).toggle_files()

    def action_chat(self) -> None:
        record = self._current()
        if record is None:
            self.notify("Open a session tab first (F6).", severity="warning")
            return
        self.query_one(f"#pane-{record.key}", SessionPane).toggle_chat()

    @work(group="actions")
    async def action_ask_control(self) -> None:
        record = self._current()
        if record is None or record.live is None or record.state != "active":
            self.notify("Open a session tab first (F6).", severity="warning")
            return
        if Right.CONTROL in record.granted:
            self.notify("You already have control.")
            return
        self.query_one(f"#pane-{record.key}", SessionPane).set_notice(
            "Asked the customer for control; waiting for their answer ...")
        await record.live.request_control()

    @work(group="actions")
    async def action_leave(self) -> None:
        record = self._current()
        if record is None or record.live is None:
            self.notify("Open a session tab first (F6).", severity="warning")
            return
        if record.state == "active":
            await record.live.leave()
            record.end("You left the session.", time.monotonic())
        await self.query_one("#tabs", TabbedContent).remove_pane(record.key)
        self.show_tab("home")
        self.tick()

    @work(group="actions")
    async def action_quit(self) -> None:
        open_sessions = [r for r in self.records.values() if r.state == "active"]
        if open_sessions:
            sure = await self.app.push_screen_wait(ConfirmModal(
                f"Leave {len(open_sessions)} active session(s) and quit?", yes="Leave and quit"))
            if not sure:
                return
        await backend_of(self).close()
        self.app.exit()
