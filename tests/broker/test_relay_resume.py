"""The client relay after its link breaks, against a scripted broker on a
real TLS socket: it fails closed when whoever answers the resume cannot
prove to be the paired end, stops at once when the broker says the session
is gone, and gives up when its window ends."""

from __future__ import annotations

import asyncio
import base64
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve

from broker.certs import init_dev_pki
from broker.client.link import BrokerLink, open_link
from broker.client.relay import LinkEvent, Resumption, SSHRelay
from broker.server import server_tls
from broker.wire.messages import Message, decode, encode
from broker.wire.resume.proof import ResumeKey

Script = Callable[[ServerConnection, int], Awaitable[None]]


class Sink(asyncio.Protocol):
    """Where the SSH bytes would go: records them, and whether it was closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


class FakeBroker:
    """A TLS WebSocket server whose n-th connection runs `script(ws, n)`."""

    def __init__(self, tmp_path: Path) -> None:
        self.pki = init_dev_pki(tmp_path / "certs")
        self.script: Script | None = None
        self.connections = 0
        self.received: list[Message] = []
        self.port = 0

    async def handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        assert self.script is not None
        await self.script(ws, self.connections)

    async def recv(self, ws: ServerConnection) -> Message:
        msg = decode(await ws.recv())
        self.received.append(msg)
        return msg

    def link(self) -> Awaitable[BrokerLink]:
        return open_link(f"wss://127.0.0.1:{self.port}", "/v1/console", self.pki.ca_cert,
                         session=True)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[FakeBroker]:
    fake = FakeBroker(tmp_path)
    async with serve(fake.handle, "127.0.0.1", 0,
                     ssl=server_tls(fake.pki.cert, fake.pki.key)) as server:
        fake.port = server.sockets[0].getsockname()[1]
        yield fake


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def relay_over(broker: FakeBroker, window: float = 30.0
                     ) -> tuple[SSHRelay, Sink, list[LinkEvent]]:
    events: list[LinkEvent] = []
    link = await broker.link()
    resume = Resumption(key=ResumeKey(secrets.token_bytes(32), "s1"), side="console",
                        reconnect=broker.link, on_event=events.append, window=window)
    relay = SSHRelay(link, lambda _msg: asyncio.sleep(0), resume)
    sink = Sink()
    await relay.create_connection(lambda: sink, "consentry-agent", 0)
    return relay, sink, events


async def test_a_resume_answered_without_the_pairing_key_is_refused(
        broker: FakeBroker) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close()  # the drop
            return
        resume = await broker.recv(ws)
        assert resume.type == "resume" and resume["session"] == "s1"
        # The broker (or someone in its place) answers as if it were the agent.
        await ws.send(encode("resume_challenge", nonce=b64(secrets.token_bytes(32)),
                             received=0, proof=b64(secrets.token_bytes(32))))
        await asyncio.sleep(1.0)  # anything the relay sends back is recorded
        async for frame in ws:
            broker.received.append(decode(frame))

    broker.script = script
    relay, sink, events = await relay_over(broker)
    await asyncio.wait_for(relay.task, 20)
    assert relay.failure is not None and relay.failure.startswith("refusing to resume")
    assert [m.type for m in broker.received] == ["resume"]  # no proof was given away
    assert events[-1].kind == "gave_up" and sink.lost.is_set()


async def test_a_broker_that_has_no_such_session_ends_it_at_once(broker: FakeBroker) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        if n == 1:
            await ws.close()
            return
        await broker.recv(ws)
        await ws.send(encode("error", code="unknown_session",
                             message="that session is over, or has no connection of yours"))
        await ws.close()

    broker.script = script
    relay, sink, events = await relay_over(broker)
    await asyncio.wait_for(relay.task, 20)
    assert broker.connections == 2  # no retry after an answer that cannot change
    assert relay.failure is not None and "that session is over" in relay.failure
    assert [e.kind for e in events] == ["lost", "retrying", "gave_up"]
    assert sink.lost.is_set()


async def test_no_broker_within_the_window_is_the_end(broker: FakeBroker) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await ws.close()  # the drop, then every new link closes at once

    broker.script = script
    relay, sink, events = await relay_over(broker, window=1.5)
    await asyncio.wait_for(relay.task, 20)
    assert relay.failure is not None and "within 2 s" in relay.failure
    assert events[0].kind == "lost" and events[-1].kind == "gave_up"
    assert {e.kind for e in events[1:-1]} == {"retrying"}
    assert sink.lost.is_set()


async def test_without_a_resumption_a_broken_link_is_the_end(broker: FakeBroker) -> None:
    async def script(ws: ServerConnection, n: int) -> None:
        await asyncio.sleep(0.1)  # the link is open on the client's side
        await ws.send(b"early ssh bytes")
        await ws.close()

    broker.script = script
    link = await broker.link()
    relay = SSHRelay(link, lambda _msg: asyncio.sleep(0))
    sink = Sink()
    await asyncio.sleep(0.4)  # the bytes arrive before SSH asks for the connection
    await relay.create_connection(lambda: sink, "consentry-agent", 0)
    await asyncio.wait_for(relay.task, 20)
    assert bytes(sink.data) == b"early ssh bytes" and sink.lost.is_set()
    assert broker.connections == 1 and relay.failure is None



