"""The TUI, screen by screen, driven by Textual's Pilot against a fake backend."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Input, Static, TabbedContent

from console.app import ConsoleApp
from console.backend import Settings
from console.errors import BrokerError, IdentityError
from console.identity import PassphraseNeeded
from console.screens.audit import AuditPane
from console.screens.confirm import ConfirmModal
from console.screens.connect import ConnectScreen
from console.screens.home import HomePane
from console.screens.main import MainScreen
from console.screens.session import SessionPane
from tests.console.fakes import (
    DECLINED,
    KEY_MISMATCH,
    SESSION_FULL,
    VIEW_ONLY,
    WRONG_CODE,
    FakeBackend,
)

SETTINGS = Settings(broker="wss://127.0.0.1:8443", ca=Path("certs/ca.crt"),
                    identity=Path("/tmp/id_ed25519"), user="alice")


class Harness:
    def __init__(self, **backend_args: Any) -> None:
        self.backend_args = backend_args
        self.backends: list[FakeBackend] = []
        self.app = ConsoleApp(self.make, SETTINGS)

    def make(self, settings: Settings) -> FakeBackend:
        backend = FakeBackend(settings, **self.backend_args)
        self.backends.append(backend)
        return backend

    @property
    def backend(self) -> FakeBackend:
        return self.backends[-1]


def text_of(widget: Static) -> str:
    return str(widget.render())


async def connect(pilot, app: ConsoleApp) -> None:  # type: ignore[no-untyped-def]
    await pilot.click("#connect")
    await until(pilot, lambda: isinstance(app.screen, MainScreen))


async def until(pilot, predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Wait for the UI to catch up; generous, because CI machines are busy."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await pilot.pause(0.02)


async def join(pilot, app: ConsoleApp, code: str, control: bool = True,  # type: ignore[no-untyped-def]
               files: bool = False) -> None:
    screen = app.screen
    screen.query_one("#code", Input).value = code
    if control:
        await pilot.click("#control")
    if files:
        await pilot.click("#files")
    await pilot.click("#join")


# -- connect screen ----------------------------------------------------------------


@pytest.mark.parametrize(("error", "shown"), [
    (BrokerError("cannot reach the broker at 127.0.0.1:8443: Connection refused"),
     "cannot reach the broker"),
    (BrokerError("refusing to connect: the broker presented a certificate not signed by "
                 "the CA in certs/ca.crt"), "not signed by the CA"),
    (BrokerError("the broker refused: login refused: this user is not registered"),
     "not registered"),
    (IdentityError("wrong passphrase for /tmp/id_ed25519"), "wrong passphrase"),
])
async def test_connect_failures_are_explained(error: Exception, shown: str) -> None:
    harness = Harness(login_error=error)
    async with harness.app.run_test(size=(100, 30)) as pilot:
        assert isinstance(harness.app.screen, ConnectScreen)
        await pilot.click("#connect")
        status = harness.app.screen.query_one("#connect-status", Static)
        await until(pilot, lambda: shown in text_of(status))
        assert status.has_class("error")
        assert isinstance(harness.app.screen, ConnectScreen)  # still there to fix it


async def test_passphrase_needed_moves_focus_to_the_field() -> None:
    harness = Harness(login_error=PassphraseNeeded("the SSH key /tmp/id needs its passphrase"))
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await pilot.click("#connect")
        await until(pilot, lambda: harness.app.focused is not None
                    and harness.app.focused.id == "passphrase")


async def test_connect_prefills_and_logs_in() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        screen = harness.app.screen
        assert screen.query_one("#broker", Input).value == "wss://127.0.0.1:8443"
        assert screen.query_one("#user", Input).value == "alice"
        await connect(pilot, harness.app)
        assert harness.backend.settings.user == "alice"
        # engineers never see the audit browser
        assert not harness.app.screen.query(AuditPane)


# -- home and sessions ---------------------------------------------------------------


async def test_join_opens_a_live_terminal_that_types_through() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        live = harness.backend.sessions[0]
        pane = harness.app.screen.query_one(SessionPane)
        await until(pilot, lambda: "customer@desk" in pane.terminal_text())
        await pilot.press("l", "s", "enter")
        assert bytes(live.written) == b"ls\r"
        status = text_of(pane.query_one(".session-status", Static))
        assert "front desk" in status and "view + control" in status
        assert "7F3A-91C2" in status and "customer is watching" in status
        table = harness.app.screen.query_one("#sessions", DataTable)
        assert table.row_count == 1
        assert "active" in str(table.get_row_at(0)[1])


async def test_view_only_does_not_send_and_f7_asks_for_control() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, VIEW_ONLY, control=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        live = harness.backend.sessions[0]
        pane = harness.app.screen.query_one(SessionPane)
        await pilot.press("x")
        assert bytes(live.written) == b""
        assert "View only" in pane.notice
        await pilot.press("f7")
        await until(pilot, lambda: live.control_requests == 1)
        await until(pilot, lambda: "granted control" in pane.notice)
        await pilot.press("y")
        assert bytes(live.written) == b"y"


async def test_the_files_switch_asks_for_files_on_its_own() -> None:
    """Files are their own right: the switch asks for them with or without
    control, and the session's rights show what the customer granted."""
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=False, files=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        assert harness.backend.asked == [("4821-193-775", False, True)]
        await until(pilot, lambda: "view + files" in text_of(
            harness.app.screen.query_one(".session-status", Static)))


@pytest.mark.parametrize(("code", "state", "advice"), [
    (WRONG_CODE, "wrong code", "new code"),
    (DECLINED, "declined", "said no"),
    ("9999-999-999", "failed", "reach the broker"),
])
async def test_join_outcomes_say_what_to_do_next(code: str, state: str, advice: str) -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, code, control=False)
        status = harness.app.screen.query_one("#join-status", Static)
        await until(pilot, lambda: advice in text_of(status))
        await pilot.pause(1.1)  # the table refreshes every second
        table = harness.app.screen.query_one("#sessions", DataTable)
        assert state in str(table.get_row_at(0)[1])
        assert not harness.app.screen.query(SessionPane)


@pytest.mark.parametrize(("code", "says"), [
    ("581-128-45", "5 secret digits after 581"),
    ("58112845", "8 digits"),
    ("4821-193-77a", "only digits and dashes"),
])
async def test_a_mistyped_code_is_explained_and_kept_to_fix(code: str, says: str) -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, code, control=False)
        status = harness.app.screen.query_one("#join-status", Static)
        await until(pilot, lambda: says in text_of(status))
        assert status.has_class("error")
        # Nothing was sent, and the code stays in the field to be corrected.
        assert harness.backend.joins == []
        assert harness.app.screen.query_one("#code", Input).value == code
        assert harness.app.screen.query_one("#sessions", DataTable).row_count == 0


async def test_waiting_shows_a_countdown() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        harness.backend.consent_delay = 2.0
        await join(pilot, harness.app, "4821-193-775", control=False)
        status = harness.app.screen.query_one("#join-status", Static)
        await until(pilot, lambda: "Waiting for the customer to approve (" in text_of(status))


async def test_customer_ending_is_announced_and_input_stops() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        live = harness.backend.sessions[0]
        await until(pilot, lambda: live.on_event is not None)  # the shell has started
        live.customer_ends()
        pane = harness.app.screen.query_one(SessionPane)
        await pilot.pause()
        assert "The customer ended the session." in pane.notice
        await pilot.press("z")
        assert bytes(live.written) == b""


async def test_several_sessions_switch_with_f6_and_leave_with_f8() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        home = harness.app.screen.query_one(HomePane)
        for count, code in enumerate(("4821-193-775", "5001-123-456"), start=1):
            # Joining through the button is covered above; here, what matters
            # is several sessions at once, so no clicks racing the tab switch.
            home.post_message(HomePane.JoinRequested(code, False))
            await until(pilot, lambda n=count: len(harness.app.screen.query(SessionPane)) == n
                        and harness.app.screen.query_one("#tabs", TabbedContent).active
                        == f"s{n}")
        tabs = harness.app.screen.query_one("#tabs", TabbedContent)
        tabs.active = "home"
        harness.app.screen.query_one("#code", Input).focus()
        await pilot.pause(0.2)
        await pilot.press("f6")
        await until(pilot, lambda: tabs.active == "s1")
        await pilot.press("f6")
        await until(pilot, lambda: tabs.active == "s2")
        await pilot.press("f8")
        await until(pilot, lambda: harness.backend.sessions[1].left)
        await until(pilot, lambda: len(harness.app.screen.query(SessionPane)) == 1)


async def test_the_clock_tick_spares_a_pane_being_taken_down() -> None:
    """Leaving removes the tab's widgets one by one; the once-a-second tick
    that lands in between must not find the status line gone and crash."""
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=False)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        pane = harness.app.screen.query_one(SessionPane)
        await pane.query_one(".session-status", Static).remove()  # as mid-removal
        main = harness.app.screen
        assert isinstance(main, MainScreen)
        main.tick()
        await pilot.pause(0.1)
        assert harness.app.screen.query(SessionPane)


async def test_quit_with_an_active_session_asks_first() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        await pilot.press("f10")
        await until(pilot, lambda: isinstance(harness.app.screen, ConfirmModal))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(harness.app.screen, MainScreen))
        assert not harness.backend.closed


async def test_network_strings_render_literally() -> None:
    evil = "[bold red]owned[/] \x1b]0;title\x07"
    harness = Harness(alias=evil)
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=False)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        await pilot.pause(1.1)
        status = text_of(harness.app.screen.query_one(".session-status", Static))
        assert "[bold red]owned[/]" in status
        assert "\\x1b]0;title\\x07" in status
        table = harness.app.screen.query_one("#sessions", DataTable)
        assert "[bold red]owned[/]" in str(table.get_row_at(0)[0])


# -- admin ---------------------------------------------------------------------------


async def test_admin_pages_filters_and_opens_a_session() -> None:
    harness = Harness(role="admin", events=120)
    async with harness.app.run_test(size=(120, 34)) as pilot:
        await connect(pilot, harness.app)
        tabs = harness.app.screen.query_one("#tabs", TabbedContent)
        tabs.active = "audit"
        table = harness.app.screen.query_one("#events", DataTable)
        await until(pilot, lambda: table.row_count == 50)
        assert str(table.get_row_at(0)[0]) == "120"  # newest first
        table.focus()
        await pilot.press("n")
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == "70")
        assert harness.backend.queries[-1]["before_seq"] == 71
        await pilot.press("p")
        await until(pilot, lambda: str(table.get_row_at(0)[0]) == "120")

        harness.app.screen.query_one("#f-type", Input).value = "session_ended"
        await pilot.click("#apply")
        await until(pilot, lambda: table.row_count > 0
                    and all("session_ended" in str(table.get_row_at(i)[2])
                            for i in range(table.row_count)))
        assert harness.backend.queries[-1]["type"] == "session_ended"

        table.focus()
        table.move_cursor(row=0)
        await pilot.press("enter")
        detail = harness.app.screen.query_one("#audit-detail", Static)
        await until(pilot, lambda: "Session sess" in text_of(detail))
        assert "reason: customer_ended" in text_of(detail)


async def test_a_key_mismatch_is_shown_as_such_not_as_a_wrong_code() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, KEY_MISMATCH)
        screen = harness.app.screen
        assert isinstance(screen, MainScreen)
        await until(pilot, lambda: any(r.state == "key mismatch"
                                       for r in screen.records.values()))
        record = next(iter(screen.records.values()))
        assert "did not match the key the broker announced" in record.detail
        assert "The code was right" in record.detail
        assert "new code" not in record.detail


async def test_a_shared_session_shows_who_else_is_in_it_live() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(160, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, "4821-193-775", control=True)
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        live = harness.backend.sessions[0]
        await until(pilot, lambda: live.on_event is not None)
        pane = harness.app.screen.query_one(SessionPane)
        status = pane.query_one(".session-status", Static)
        assert "with " not in text_of(status)  # nobody else has joined
        live.roster(("console", "Alice Example", ("view", "control")),
                    ("console-2", "[bold]Bob[/bold] Builder", ("view",)))
        await pilot.pause()
        assert "with [bold]Bob[/bold] Builder (view)" in text_of(status)  # literal, no markup
        assert "Now in this session: Alice Example (control)" in pane.notice
        live.roster(("console", "Alice Example", ("view", "control")))  # Bob left
        await pilot.pause()
        assert "with nobody else" in text_of(status)
        # Four engineers with long names on 80 columns: still the one row.
        await pilot.resize_terminal(80, 24)
        live.roster(*[(f"console-{n}", f"Engineer Number {n} With A Long Name", ("view",))
                      for n in range(1, 5)], you="console-1")
        await pilot.pause()
        assert status.region.height == 1 and "with Engineer Number 2" in text_of(status)
        live.customer_removes()
        await pilot.pause()
        assert "The customer removed you from the session" in pane.notice
        await pilot.press("z")
        assert bytes(live.written) == b""


async def test_a_full_session_is_its_own_outcome() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(100, 30)) as pilot:
        await connect(pilot, harness.app)
        await join(pilot, harness.app, SESSION_FULL, control=False)
        status = harness.app.screen.query_one("#join-status", Static)
        await until(pilot, lambda: "customer was not asked" in text_of(status))
        assert "until an engineer leaves or is removed" in text_of(status)
        await pilot.pause(1.1)  # the table refreshes every second
        table = harness.app.screen.query_one("#sessions", DataTable)
        assert "session full" in str(table.get_row_at(0)[1])
