"""A real asyncssh server on 127.0.0.1:0 speaking the chat contract
(broker/wire/chat.py) for the console's chat tests, standing in for the
agent's ChatRoom (which has its own tests): each console's line is stamped
with the engineer's name and sent back to every channel, the history goes
first to a new channel, `customer_says` is a line from the customer, and a
line faster than the rate is dropped with a notice to its sender.

It also offers a small line shell (for the plain join driven by pexpect):
it echoes keys, and a line "customer TEXT" makes the customer say TEXT, so a
test outside this process can make the customer write.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import cast

import asyncssh

from broker.client.link import BrokerLink
from broker.wire.chat import (
    CHAT_HISTORY,
    CHAT_SUBSYSTEM,
    ChatDecoder,
    ChatFrameError,
    ChatLine,
    ChatRate,
    decode_say,
    encode_line,
)
from console.client import JoinedSession
from console.identity import Identity

_HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")
SHELL_PROMPT = "customer@desk:~$ "


class _Open(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # the real session's authentication is not under test here


@dataclass
class ChatServer:
    engineer: str = "Alice Example"
    customer: str = "Customer"
    offer_chat: bool = True
    # Lines a console may send at once, then one a second (the agent's rule).
    burst: int = 5
    history: deque[ChatLine] = field(default_factory=lambda: deque(maxlen=CHAT_HISTORY))
    said: list[str] = field(default_factory=list)  # what consoles sent, as decoded
    channels: list[asyncssh.SSHWriter[bytes]] = field(default_factory=list)

    def broadcast(self, line: ChatLine) -> None:
        self.history.append(line)
        for writer in list(self.channels):
            with contextlib.suppress(Exception):
                writer.write(encode_line(line))

    def customer_says(self, text: str) -> None:
        self.broadcast(ChatLine(self.customer, "customer", text))

    def send_raw(self, data: bytes) -> None:
        """Anything at all, to every chat channel (garbage, an overlong frame)."""
        for writer in list(self.channels):
            writer.write(data)

    async def chat(self, reader: asyncssh.SSHReader[bytes],
                   writer: asyncssh.SSHWriter[bytes]) -> None:
        for line in self.history:
            writer.write(encode_line(line))
        self.channels.append(writer)
        decoder, rate = ChatDecoder(), ChatRate(per_second=1.0, burst=self.burst)
        try:
            while data := await reader.read(4096):
                for frame in decoder.feed(data):
                    text = decode_say(frame)
                    if not text:
                        continue
                    self.said.append(text)
                    if rate.allow(time.monotonic()):
                        self.broadcast(ChatLine(self.engineer, "engineer", text))
                    else:
                        writer.write(encode_line(ChatLine(
                            "consentry", "notice", "Your line was not sent: too fast.")))
        except (ChatFrameError, asyncssh.Error, OSError):
            pass
        finally:
            self.channels.remove(writer)
            writer.channel.close()

    async def shell(self, reader: asyncssh.SSHReader[bytes],
                    writer: asyncssh.SSHWriter[bytes]) -> None:
        writer.write(SHELL_PROMPT.encode())
        line = bytearray()
        try:
            while data := await reader.read(1024):
                for byte in data:
                    if byte in (0x0D, 0x0A):
                        text = line.decode("utf-8", "replace")
                        line.clear()
                        writer.write(b"\r\n")
                        if text.startswith("customer "):
                            self.customer_says(text.removeprefix("customer "))
                        writer.write(SHELL_PROMPT.encode())
                    else:
                        line.append(byte)
                        writer.write(bytes([byte]))
        except (asyncssh.Error, OSError):
            pass
        finally:
            writer.channel.close()


class _Session(asyncssh.stream.SSHServerStreamSession[bytes]):
    """A shell, or the chat subsystem when offered; nothing else."""

    def __init__(self, server: ChatServer) -> None:
        super().__init__(self._run)
        self._server = server

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == CHAT_SUBSYSTEM and self._server.offer_chat

    async def _run(self, reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes],
                   _stderr: asyncssh.SSHWriter[bytes]) -> None:
        if writer.channel.get_subsystem() == CHAT_SUBSYSTEM:
            await self._server.chat(reader, writer)
        else:
            await self._server.shell(reader, writer)


class _Server(_Open):
    def __init__(self, server: ChatServer) -> None:
        self._server = server

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Session(self._server)


@contextlib.asynccontextmanager
async def chat_listener(server: ChatServer) -> AsyncIterator[int]:
    """The server on 127.0.0.1, its port yielded; stopped on the way out."""
    listener = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[_HOST_KEY],
                                     server_factory=lambda: _Server(server), encoding=None)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        for writer in list(server.channels):
            writer.channel.close()
        listener.close()
        await listener.wait_closed()


async def connect(port: int) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="e",
                                  client_keys=None, agent_path=None)


@contextlib.asynccontextmanager
async def chat_server(server: ChatServer | None = None
                      ) -> AsyncIterator[tuple[ChatServer, asyncssh.SSHClientConnection]]:
    """A client connection to a fresh server (a ChatServer() unless given)."""
    server = server or ChatServer()
    async with chat_listener(server) as port:
        conn = await connect(port)
        try:
            yield server, conn
        finally:
            conn.close()
            await conn.wait_closed()


async def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    """Until `predicate()` is true, at most `timeout` seconds (a bounded wait)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


class _NoLink:
    """The broker's link, of which a loopback session has none."""

    async def send(self, *_args: object, **_fields: object) -> None:
        return None

    async def close(self) -> None:
        return None


class LoopbackJoined(JoinedSession):
    """A consented session whose SSH goes straight to this server (no
    broker, no pairing): for the plain terminal and the TUI's backend."""

    port = 0

    async def open_ssh(self) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[None]]:
        conn = await connect(self.port)
        # The broker link's pump: runs until the session is over.
        pump: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._forever())
        return conn, pump

    @staticmethod
    async def _forever() -> None:
        await asyncio.Event().wait()


def loopback_joined(port: int, granted: tuple[str, ...] = ("view", "control")
                    ) -> LoopbackJoined:
    joined = LoopbackJoined(
        link=cast(BrokerLink, _NoLink()), session="sessA1", alias="front desk",
        sas="7F3A-91C2", host_key=asyncssh.generate_private_key("ssh-ed25519"),
        granted=granted, identity=cast(Identity, None))
    joined.port = port
    return joined
