"""What the customer sees of the chat: an engineer's line in the banner at
once, literally; Ctrl-] m opens the chat page with what was said and a line
to type, Enter sends, Esc goes back; the session's output waits meanwhile."""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import AsyncIterator

import pytest

from agent.pty import set_winsize
from agent.screen import CustomerScreen, Viewer, chat_banner, chat_page_line
from broker.wire.chat import MAX_CHAT_CHARS, ChatLine
from tests.agent.test_screen_flow import ASK, read_all, read_until

ALICE = "Alice Example"


@pytest.fixture
async def screen() -> AsyncIterator[tuple[CustomerScreen, int, list[str]]]:
    master, slave = pty.openpty()
    set_winsize(master, 200, 30)  # the banner row holds the whole line
    os.set_blocking(master, False)
    sent: list[str] = []
    try:
        async with CustomerScreen(slave, slave) as customer:
            customer.session_started("s1", Viewer(ALICE, "alice", control=False))
            customer.on_chat_send = sent.append
            yield customer, master, sent
            read_all(master)
    finally:
        os.close(master)
        os.close(slave)


def test_lines_are_shown_literally() -> None:
    hostile = ChatLine("Eve\x1b]0;x\x07", "engineer", "hi\x1b[2J there")
    assert "\x1b" not in chat_banner(hostile) and "\\x1b[2J" in chat_banner(hostile)
    assert "\x1b" not in chat_page_line(hostile)
    assert chat_page_line(ChatLine("Customer", "customer", "ok")) == "  You: ok"


async def test_an_engineers_line_shows_in_the_banner_at_once(screen: tuple) -> None:
    customer, master, _sent = screen
    received = bytearray()
    customer.chat_line(ChatLine(ALICE, "engineer", "I am restarting the printer service"))
    await read_until(master, received, b"Alice Example: I am restarting the printer service")
    assert b"Ctrl-] m to answer" in received


async def test_ctrl_rbracket_m_opens_the_page_enter_sends_esc_closes(screen: tuple) -> None:
    customer, master, sent = screen
    customer.chat_line(ChatLine(ALICE, "engineer", "can you see the window?"))
    received = bytearray()
    os.write(master, b"\x1dm")
    await read_until(master, received, b"Your message:")
    assert b"messages with your support engineer" in received
    assert b"Alice Example: can you see the window?" in received
    # Output of the session waits while the page is up.
    customer.mirror(b"SHELL-OUTPUT-WHILE-CHATTING\r\n")
    os.write(master, "yes, \u00e9t\u00e9 x\x7fe\r".encode())
    async with asyncio.timeout(10):
        while not sent:
            received += read_all(master)
            await asyncio.sleep(0.01)
    assert sent == ["yes, \u00e9t\u00e9 e"] and customer._chat_draft == ""
    customer.chat_line(ChatLine("Customer", "customer", sent[0]))  # as the room echoes it
    await read_until(master, received, "You: yes, \u00e9t\u00e9 e".encode())
    assert b"SHELL-OUTPUT-WHILE-CHATTING" not in received
    os.write(master, b"\x1b")
    await read_until(master, received, b"SHELL-OUTPUT-WHILE-CHATTING")
    await asyncio.sleep(0.2)
    assert customer._chat_draft is None and customer._keys is None


async def test_arrow_keys_do_not_close_the_page_and_the_line_is_bounded(
        screen: tuple) -> None:
    customer, master, sent = screen
    received = bytearray()
    os.write(master, b"\x1dm")
    await read_until(master, received, b"Your message:")
    os.write(master, b"\x1b[A")  # arrow up
    await asyncio.sleep(0.3)
    assert customer._chat_draft == ""
    os.write(master, b"x" * (MAX_CHAT_CHARS + 50))
    async with asyncio.timeout(10):
        while len(customer._chat_draft or "") < MAX_CHAT_CHARS:
            received += read_all(master)
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert customer._chat_draft == "x" * MAX_CHAT_CHARS
    os.write(master, b"\r\x1d")  # send, then Ctrl-] closes too
    async with asyncio.timeout(10):
        while customer._chat_draft is not None:
            read_all(master)
            await asyncio.sleep(0.01)
    assert sent == ["x" * MAX_CHAT_CHARS]


async def test_the_page_closes_when_the_session_ends_and_forgets_the_lines(
        screen: tuple) -> None:
    customer, master, _sent = screen
    customer.chat_line(ChatLine(ALICE, "engineer", "bye"))
    received = bytearray()
    os.write(master, b"\x1dm")
    await read_until(master, received, b"Your message:")
    customer.session_ended("s1", "Alice Example left the session.")
    async with asyncio.timeout(10):
        while customer._chat_draft is not None:
            read_all(master)
            await asyncio.sleep(0.01)
    assert not customer._chat


async def test_the_menu_names_the_chat(screen: tuple) -> None:
    _customer, master, _sent = screen
    received = bytearray()
    os.write(master, b"\x1d")
    await read_until(master, received, b"[m] message")
    os.write(master, b"z")


async def test_a_consent_prompt_closes_the_page_and_the_typed_line_is_kept(
        screen: tuple) -> None:
    customer, master, sent = screen
    received = bytearray()
    os.write(master, b"\x1dm")
    await read_until(master, received, b"Your message:")
    os.write(master, b"half a sen")
    async with asyncio.timeout(10):
        while customer._chat_draft != "half a sen":
            received += read_all(master)
            await asyncio.sleep(0.01)
    prompt = asyncio.ensure_future(customer.ask_consent(ASK, 30, "control"))
    await read_until(master, received, b"[c] allow control")  # not stuck behind the page
    os.write(master, b"n")
    assert (await asyncio.wait_for(prompt, 5)).decision == "denied"
    os.write(master, b"\x1dm")
    async with asyncio.timeout(10):
        while customer._chat_draft != "half a sen":
            received += read_all(master)
            await asyncio.sleep(0.01)
    os.write(master, b"tence\r\x1b")
    async with asyncio.timeout(10):
        while customer._chat_draft is not None:
            read_all(master)
            await asyncio.sleep(0.01)
    assert sent == ["half a sentence"]


async def test_keys_typed_right_after_esc_are_not_swallowed(screen: tuple) -> None:
    """Esc waits a moment for an arrow key's sequence; what comes instead is a
    key of its own. Esc then at once Ctrl-] e must still end the session."""
    customer, master, _sent = screen
    ended: list[bool] = []
    customer.on_end_all = lambda: ended.append(True)
    received = bytearray()
    os.write(master, b"\x1dm")
    await read_until(master, received, b"Your message:")
    os.write(master, b"\x1b\x1de")  # one read: Esc, Ctrl-], e
    async with asyncio.timeout(10):
        while not ended:
            read_all(master)
            await asyncio.sleep(0.01)
    assert customer._chat_draft is None and customer._keys is None
