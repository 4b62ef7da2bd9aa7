"""The TUI's chat box (F3), driven by Pilot against a real SSH server that
speaks the chat contract (tests/console/chat_server.py)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from textual.widgets import Input, Static

from broker.wire.chat import MAX_CHAT_CHARS
from console.screens.chat import ChatBox, rendered
from console.screens.session import SessionPane
from tests.console.chat_server import ChatServer, chat_server
from tests.console.fakes import FakeLive
from tests.console.test_app import Harness, text_of, until
from tests.console.test_layout import ABOVE, BELOW, open_session, screen_lines


@contextlib.asynccontextmanager
async def session_with_chat(harness: Harness, pilot, server: ChatServer | None = None  # type: ignore[no-untyped-def]
                            ) -> AsyncIterator[tuple[ChatServer, FakeLive, SessionPane]]:
    async with chat_server(server) as (server, conn):
        live = await open_session(harness, pilot)
        await live.open_chat(conn)
        yield server, live, harness.app.screen.query_one(SessionPane)
        assert live.chat is not None
        await live.chat.close()


def status(pane: SessionPane) -> str:
    return text_of(pane.query_one(".session-status", Static))



async def shown(pilot, harness: Harness, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait (bounded) until `text` is on a row of the screen: rows are read
    after the next refresh, not the moment a line is added."""
    try:
        await until(pilot, lambda: any(text in row for row in screen_lines(harness.app)))
    except AssertionError:
        raise AssertionError(f"{text!r} is not on the screen:\n"
                             + "\n".join(screen_lines(harness.app))) from None

async def test_f3_opens_the_box_sends_a_line_and_shows_it_with_its_sender() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        async with session_with_chat(harness, pilot) as (server, live, pane):
            box: ChatBox = pane.chat
            assert not box.is_open
            assert live.shell_size == (120, 40 - ABOVE - BELOW)
            assert "f3 Chat" in screen_lines(harness.app)[-1]
            await pilot.press("f3")
            assert box.is_open and harness.app.focused is box.query_one(Input)
            # The terminal gave up the box's rows, and the shell was told.
            await until(pilot, lambda: live.shell_size == (120, 40 - ABOVE - BELOW
                                                           - box.region.height))
            await pilot.press(*"on my way", "enter")
            await until(pilot, lambda: len(box.lines) == 1)
            assert server.said == ["on my way"]
            assert box.query_one(Input).value == ""
            await shown(pilot, harness, "Alice Example: on my way")
            # Typing in the box is not typing in the shell.
            assert b"on my way" not in bytes(live.written)
            text = rendered(box.lines[0])
            assert text.spans[0].style == "bold cyan" and str(text) == "Alice Example: on my way"

            server.customer_says("thank you")
            await until(pilot, lambda: len(box.lines) == 2)
            assert str(rendered(box.lines[1])) == "Customer: thank you"
            assert rendered(box.lines[1]).spans[0].style == "bold green"
            assert box.unread == 0  # seen: the box is open
            # Wrapped at the box's width.
            long = "word " * 19 + "end"
            server.customer_says(long)
            await until(pilot, lambda: len(box.lines) == 3)
            await shown(pilot, harness, f"Customer: {long}")

            await pilot.press("escape")  # back to the terminal, the rows back to the shell
            assert not box.is_open and harness.app.focused is pane.terminal
            await until(pilot, lambda: live.shell_size == (120, 40 - ABOVE - BELOW))


async def test_a_line_while_the_box_is_closed_is_a_badge_and_a_notification() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(80, 24)) as pilot:
        async with session_with_chat(harness, pilot) as (server, _live, pane):
            server.customer_says("are you there?")
            await until(pilot, lambda: "1 new message (F3)" in status(pane))
            await until(pilot, lambda: any("1 new chat message in front desk" in str(n.message)
                                           for n in harness.app._notifications))
            server.customer_says("hello?")
            await until(pilot, lambda: "2 new messages (F3)" in status(pane))
            await pilot.press("f3")
            assert "new message" not in status(pane) and pane.chat.unread == 0
            await shown(pilot, harness, "Customer: are you there?")
            await shown(pilot, harness, "Customer: hello?")


async def test_network_strings_in_chat_render_literally() -> None:
    server = ChatServer(engineer="[bold red]Mallory[/]")
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        async with session_with_chat(harness, pilot, server) as (server, _live, pane):
            await pilot.press("f3")
            server.customer_says("[link=http://x]click[/link] \x1b[2J done")
            await pilot.press(*"[i]x", "enter")
            await until(pilot, lambda: len(pane.chat.lines) == 2)
            await shown(pilot, harness, "Customer: [link=http://x]click[/link] [2J done")
            await shown(pilot, harness, "[bold red]Mallory[/]: [i]x")


async def test_refusals_are_said_in_the_box_and_the_line_is_kept() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        async with session_with_chat(harness, pilot, ChatServer(offer_chat=True)) as (
                server, live, pane):
            await pilot.press("f3")
            field = pane.chat.query_one(Input)
            assert field.max_length == MAX_CHAT_CHARS
            await live.chat.close()  # type: ignore[union-attr]
            await pilot.press(*"still there?", "enter")
            await until(pilot, lambda: "Chat is closed" in pane.chat.status_text)
            assert field.value == "still there?"  # to send again later, or copy
            assert server.said == []


async def test_a_computer_without_chat_says_so_in_the_box() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(80, 24)) as pilot:
        await open_session(harness, pilot)
        pane = harness.app.screen.query_one(SessionPane)
        await pilot.press("f3")
        await pilot.press(*"hi", "enter")
        await until(pilot, lambda: "does not offer chat" in pane.chat.status_text)
        assert pane.chat.query_one(".chat-status").has_class("error")
        await pilot.press("f3")
        assert harness.app.focused is pane.terminal
