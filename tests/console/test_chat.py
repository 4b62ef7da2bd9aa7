"""The console's chat line (console/chat.py) and the plain join's chat
prompt (console/chat_prompt.py), against a real SSH server speaking the
chat contract (tests/console/chat_server.py)."""

from __future__ import annotations

import asyncio

import pytest

from broker.wire.chat import CHAT_HISTORY, MAX_CHAT_CHARS, ChatLine
from console.backend import RelaySession, SessionEvent
from console.chat import (
    GARBAGE_TEXT,
    NO_CHAT_TEXT,
    ChatChannel,
    ChatClosed,
    ChatError,
    NoChat,
    line_text,
    terminal_line,
)
from console.chat_prompt import CANCELLED_TEXT, PROMPT, ChatPrompt
from tests.console.chat_server import (
    SHELL_PROMPT,
    ChatServer,
    chat_listener,
    chat_server,
    loopback_joined,
    wait_for,
)


async def test_a_line_said_comes_back_stamped_and_the_customer_is_heard() -> None:
    async with chat_server() as (server, conn):
        heard: list[ChatLine] = []
        chat = ChatChannel(conn, on_line=heard.append)
        await chat.open()
        assert chat.is_open
        assert await chat.say("  the patch is\non its way\t") == "the patch is on its way"
        await wait_for(lambda: heard)
        assert heard == [ChatLine("Alice Example", "engineer", "the patch is on its way")]
        assert server.said == ["the patch is on its way"]
        server.customer_says("thanks \x1b[2J!")
        await wait_for(lambda: len(heard) == 2)
        # Cleaned on the way in: no escape reaches a screen.
        assert heard[1] == ChatLine("Customer", "customer", "thanks [2J!")
        assert list(chat.history) == heard
        iterated = [await anext(chat), await anext(chat)]  # the same lines, by `async for`
        assert iterated == heard
        await chat.close()
        assert not chat.is_open
        with pytest.raises(ChatClosed):
            await chat.say("after the end")


async def test_a_new_channel_gets_the_history_first() -> None:
    server = ChatServer()
    server.customer_says("hello?")
    server.customer_says("anyone there")
    async with chat_server(server) as (_server, conn):
        chat = ChatChannel(conn)
        await chat.open()
        await wait_for(lambda: len(chat.history) == 2)
        assert [line.text for line in chat.history] == ["hello?", "anyone there"]
        await chat.close()


async def test_async_iteration_ends_when_the_connection_closes() -> None:
    async with chat_server() as (server, conn):
        chat = ChatChannel(conn)
        await chat.open()
        server.customer_says("one")
        got = []
        async with asyncio.timeout(10):
            async for line in chat:
                got.append(line.text)
                conn.close()  # the session's connection ends
        assert got == ["one"]
        assert chat.closed_reason is not None


async def test_a_computer_without_chat_says_so() -> None:
    async with chat_server(ChatServer(offer_chat=False)) as (_server, conn):
        chat = ChatChannel(conn)
        with pytest.raises(NoChat, match="does not offer chat"):
            await chat.open()
        assert chat.closed_reason == NO_CHAT_TEXT
        with pytest.raises(ChatClosed, match="does not offer chat"):
            await chat.say("hello")


@pytest.mark.parametrize("garbage", [b"not json\n", b'{"from": "x"}\n', b"x" * 10_000])
async def test_garbage_closes_chat_only(garbage: bytes) -> None:
    async with chat_server() as (server, conn):
        closed: list[str] = []
        chat = ChatChannel(conn, on_close=closed.append)
        await chat.open()
        await wait_for(lambda: server.channels)
        server.send_raw(garbage)
        await wait_for(lambda: closed)
        assert closed == [GARBAGE_TEXT]
        assert not chat.is_open
        # The connection itself goes on (the shell is not chat's to close).
        writer, reader, _stderr = await conn.open_session(encoding=None)
        assert (await reader.readexactly(len(SHELL_PROMPT))).decode() == SHELL_PROMPT
        writer.close()


async def test_lines_are_bounded() -> None:
    async with chat_server() as (server, conn):
        chat = ChatChannel(conn)
        await chat.open()
        with pytest.raises(ChatError, match="at most 500"):
            await chat.say("x" * (MAX_CHAT_CHARS + 1))
        with pytest.raises(ChatError, match="empty"):
            await chat.say(" \x1b\n ")
        assert server.said == []
        await chat.say("y" * MAX_CHAT_CHARS)
        for index in range(CHAT_HISTORY + 10):
            server.customer_says(f"line {index}")
        await wait_for(lambda: chat.history and chat.history[-1].text == "line 59")
        assert len(chat.history) == CHAT_HISTORY
        assert chat.dropped > 0  # nobody iterated: the oldest queued lines went
        await chat.close()


async def test_too_fast_is_told_to_the_sender() -> None:
    async with chat_server(ChatServer(burst=1)) as (_server, conn):
        chat = ChatChannel(conn)
        await chat.open()
        await chat.say("one")
        await chat.say("two")
        await wait_for(lambda: any(line.role == "notice" for line in chat.history))
        notice = next(line for line in chat.history if line.role == "notice")
        assert line_text(notice) == "Your line was not sent: too fast."
        await chat.close()


def test_a_line_on_the_terminal_is_marked_and_acts_on_nothing() -> None:
    line = ChatLine("Bob \x1b]0;x\x07", "engineer", "hi \x1b[31mred")
    shown = terminal_line(line)
    assert shown.startswith("[chat] Bob ") and shown.endswith("\r\n")
    assert "\x1b" not in shown and "\x07" not in shown
    assert terminal_line(ChatLine("Customer", "customer", "ok")) == "[chat] Customer: ok\r\n"


class Screen:
    def __init__(self) -> None:
        self.text = ""
        self.closed = 0

    def write(self, text: str) -> None:
        self.text += text

    def close(self) -> None:
        self.closed += 1


async def test_the_prompt_sends_a_line_and_shows_what_arrives() -> None:
    async with chat_server() as (server, conn):
        chat = ChatChannel(conn)
        await chat.open()
        screen = Screen()
        prompt = ChatPrompt(chat.say, screen.write, screen.close)
        prompt.open()
        assert PROMPT in screen.text
        prompt.feed("héx\x7f\x7fello wörld\x1b[D".encode())  # é is two bytes: one rub-out
        assert prompt.text == "hello wörld"
        prompt.show_line(ChatLine("Customer", "customer", "are you there?"))
        assert screen.text.endswith(f"[chat] Customer: are you there?\r\n\r\x1b[K{PROMPT}"
                                    "hello wörld")
        prompt.feed(b"\r")
        assert not prompt.active and screen.closed == 1
        await wait_for(lambda: not prompt.sending)
        await wait_for(lambda: server.said == ["hello wörld"])
        await chat.close()


async def test_the_prompt_cancels_on_esc_or_an_empty_line_and_says_why_not_sent() -> None:
    screen = Screen()
    sent: list[str] = []

    async def refuse(text: str) -> None:
        sent.append(text)
        raise ChatClosed(NO_CHAT_TEXT)

    prompt = ChatPrompt(refuse, screen.write, screen.close)
    prompt.open()
    prompt.feed(b"never mind\x1b")
    assert not prompt.active and CANCELLED_TEXT in screen.text and sent == []
    prompt.open()
    prompt.feed(b"   \r")
    assert screen.closed == 2 and sent == []
    prompt.open()
    prompt.feed(b"x" * (MAX_CHAT_CHARS + 20))
    assert len(prompt.text) == MAX_CHAT_CHARS and "\a" in screen.text
    prompt.feed(b"\x15hi\r")
    await wait_for(lambda: not prompt.sending)
    assert sent == ["hi"]
    assert "not sent: The customer's computer does not offer chat" in screen.text


async def test_the_tuis_session_opens_chat_with_the_shell_and_sends_through_it() -> None:
    server = ChatServer()
    server.customer_says("waiting for you")
    async with chat_listener(server) as port:
        session = RelaySession(loopback_joined(port))
        events: list[SessionEvent] = []
        await session.start(80, 24, lambda _data: None, events.append)

        def chats() -> list[ChatLine | None]:
            return [e.chat for e in events if e.kind == "chat"]

        await wait_for(lambda: chats())
        assert chats() == [ChatLine("Customer", "customer", "waiting for you")]
        await session.say("here now")
        await wait_for(lambda: len(chats()) == 2)
        assert chats()[1] == ChatLine("Alice Example", "engineer", "here now")
        assert events[-1].text == "Alice Example: here now"
        await session.leave()
        with pytest.raises(ChatClosed, match="session has ended"):
            await session.say("gone")
