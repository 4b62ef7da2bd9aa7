"""The session's chat room: lines stamped by the agent, history for who
comes later, a rate per sender, a bounded backlog per channel; and the same
over real asyncssh through `serve_shell`, as a console opens it."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import asyncssh
import pytest

from agent.chat import CUSTOMER_NAME, TOO_FAST, ChatRoom
from agent.sshd import Gate, Services, serve_shell
from broker.wire.chat import (
    CHAT_HISTORY,
    CHAT_SUBSYSTEM,
    ChatDecoder,
    ChatLine,
    decode_line,
    encode_say,
)
from tests.agent.test_sshd import until


class FakePeer:
    """An engineer's channel that keeps what it is sent."""

    def __init__(self, backlog: int = 0) -> None:
        self.sent = bytearray()
        self.closed = False
        self.waiting = backlog

    def write(self, data: bytes) -> None:
        self.sent += data

    def backlog(self) -> int:
        return self.waiting

    def close(self) -> None:
        self.closed = True

    def lines(self) -> list[ChatLine]:
        return [decode_line(frame) for frame in ChatDecoder().feed(bytes(self.sent))]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def room() -> tuple[ChatRoom, list[ChatLine], Clock]:
    shown: list[ChatLine] = []
    clock = Clock()
    return ChatRoom(shown.append, clock=clock), shown, clock


def test_a_line_goes_to_everyone_stamped_with_the_senders_approved_name() -> None:
    chat, shown, _clock = room()
    alice, bob = FakePeer(), FakePeer()
    as_alice = chat.engineer("Alice Example")
    chat.open(alice, as_alice)
    chat.open(bob, chat.engineer("Bob"))
    said = chat.say(as_alice, "rebooting\nnow\x1b[2J", alice)
    assert said == ChatLine("Alice Example", "engineer", "rebooting now[2J")
    assert alice.lines() == bob.lines() == shown == [said]
    reply = chat.say(chat.customer, "ok, thanks")
    assert reply == ChatLine(CUSTOMER_NAME, "customer", "ok, thanks")
    assert bob.lines()[-1] == reply and shown[-1] == reply


def test_a_later_channel_gets_the_history_first_and_only_the_last_lines() -> None:
    chat, _shown, clock = room()
    customer = chat.customer
    for n in range(CHAT_HISTORY + 5):
        clock.now += 10  # slow enough for the rate
        chat.say(customer, f"line {n}")
    late = FakePeer()
    chat.open(late, chat.engineer("Bob"))
    texts = [line.text for line in late.lines()]
    assert texts == [f"line {n}" for n in range(5, CHAT_HISTORY + 5)]


def test_too_fast_is_dropped_and_only_the_sender_is_told() -> None:
    chat, shown, clock = room()
    alice, bob = FakePeer(), FakePeer()
    as_alice = chat.engineer("Alice")
    chat.open(alice, as_alice)
    chat.open(bob, chat.engineer("Bob"))
    results = [chat.say(as_alice, f"spam {n}", alice) for n in range(20)]
    sent = [r for r in results if r is not None]
    assert 0 < len(sent) < 20
    assert [line.text for line in bob.lines()] == [line.text for line in sent]
    notices = [line for line in alice.lines() if line.role == "notice"]
    assert [n.text for n in notices] == [TOO_FAST]  # once, not once per dropped line
    assert all(line.role != "notice" for line in shown)
    clock.now += 60
    assert chat.say(as_alice, "later", alice) is not None


def test_the_customer_too_fast_is_told_on_their_own_screen() -> None:
    chat, shown, _clock = room()
    for n in range(20):
        chat.say(chat.customer, f"hello {n}")
    assert [line.text for line in shown if line.role == "notice"] == [TOO_FAST]


def test_a_channel_that_falls_behind_is_closed_and_the_others_go_on() -> None:
    chat, _shown, _clock = room()
    slow, fine = FakePeer(), FakePeer()
    chat.open(slow, chat.engineer("Slow"))
    chat.open(fine, chat.engineer("Fine"))
    slow.waiting = 10**9  # its console stopped reading
    assert chat.say(chat.customer, "still here") is not None
    assert slow.closed and chat.channels == 1
    assert fine.lines()[-1].text == "still here"
    assert chat.say(chat.customer, "and here") is not None
    assert [line.text for line in slow.lines()] == ["still here"]


def test_the_end_of_the_session_closes_every_channel_and_forgets_the_lines() -> None:
    chat, _shown, _clock = room()
    peer = FakePeer()
    chat.open(peer, chat.engineer("Alice"))
    chat.say(chat.customer, "secret")
    chat.close()
    assert peer.closed and not chat.history
    late = FakePeer()
    assert not chat.open(late, chat.engineer("Bob")) and late.closed and not late.sent
    assert chat.say(chat.customer, "after") is None


def test_empty_lines_are_not_lines() -> None:
    chat, shown, _clock = room()
    assert chat.say(chat.customer, " \t\x07 ") is None and shown == []


# -- over real SSH -----------------------------------------------------------


@pytest.fixture
async def chat_over_ssh() -> AsyncIterator[tuple[ChatRoom, list[ChatLine], Gate,
                                                 asyncssh.SSHClientConnection]]:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = asyncssh.generate_private_key("ssh-ed25519")
    shown: list[ChatLine] = []
    chat = ChatRoom(shown.append)
    gate = Gate(control=False)
    ours, theirs = socket.socketpair()
    server_task = asyncio.create_task(serve_shell(
        ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
        shell="/bin/sh", gate=gate, services=Services(chat=chat.handler("Alice Example")),
    ))
    conn = await asyncssh.connect(
        sock=theirs, host="consentry-agent", username="alice", client_keys=[engineer],
        agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
        preferred_auth="publickey",
    )
    server = await server_task
    try:
        yield chat, shown, gate, conn
    finally:
        conn.close()
        server.close()
        chat.close()
        ours.close()
        theirs.close()


async def read_lines(reader: asyncssh.SSHReader[bytes], decoder: ChatDecoder,
                     count: int) -> list[ChatLine]:
    lines: list[ChatLine] = []
    async with asyncio.timeout(10):
        while len(lines) < count:
            data = await reader.read(4096)
            assert data, "the chat channel closed"
            lines += [decode_line(frame) for frame in decoder.feed(data)]
    return lines


async def test_an_engineer_over_ssh_says_a_line_and_hears_the_customer(
        chat_over_ssh: tuple) -> None:
    chat, shown, gate, conn = chat_over_ssh
    counted: list[bool] = []
    gate.on_chat = lambda: counted.append(True)
    chat.say(chat.customer, "before you came")
    writer, reader, _stderr = await conn.open_session(subsystem=CHAT_SUBSYSTEM, encoding=None)
    decoder = ChatDecoder()
    assert await read_lines(reader, decoder, 1) == [
        ChatLine(CUSTOMER_NAME, "customer", "before you came")]
    # A console that names itself is not believed: the agent stamps the line.
    writer.write(json.dumps({"say": "hello", "from": "Mallory"}).encode() + b"\n")
    assert await read_lines(reader, decoder, 1) == [
        ChatLine("Alice Example", "engineer", "hello")]
    await until(lambda: len(shown) == 2)
    assert shown[-1] == ChatLine("Alice Example", "engineer", "hello") and counted == [True]
    chat.say(chat.customer, "hi Alice")
    assert (await read_lines(reader, decoder, 1))[0].text == "hi Alice"
    writer.close()


async def test_garbage_on_the_channel_closes_that_channel_only(chat_over_ssh: tuple) -> None:
    chat, _shown, _gate, conn = chat_over_ssh
    bad_writer, bad_reader, _ = await conn.open_session(subsystem=CHAT_SUBSYSTEM,
                                                       encoding=None)
    good_writer, good_reader, _ = await conn.open_session(subsystem=CHAT_SUBSYSTEM,
                                                         encoding=None)
    await until(lambda: chat.channels == 2)
    bad_writer.write(b"not json\n")
    async with asyncio.timeout(10):
        assert await bad_reader.read() == b""  # closed by the agent
    await until(lambda: chat.channels == 1)
    good_writer.write(encode_say("still fine"))
    assert (await read_lines(good_reader, ChatDecoder(), 1))[0].text == "still fine"


async def test_chat_is_refused_when_the_session_offers_none() -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = asyncssh.generate_private_key("ssh-ed25519")
    ours, theirs = socket.socketpair()
    server_task = asyncio.create_task(serve_shell(
        ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
        shell="/bin/sh", gate=Gate(control=False), services=Services()))
    async with asyncssh.connect(
        sock=theirs, host="consentry-agent", username="alice", client_keys=[engineer],
        agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
        preferred_auth="publickey",
    ) as conn:
        server = await server_task
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_session(subsystem=CHAT_SUBSYSTEM, encoding=None)
    server.close()
    ours.close()
    theirs.close()
