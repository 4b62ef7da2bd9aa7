"""The broker's keepalive sweep, on real websockets connections over
loopback, with the sweep's clock given explicitly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.protocol import State

from broker.client.link import FastClientConnection
from broker.keepalive import sweep
from broker.listener import FastServerConnection

INTERVAL, TIMEOUT = 20.0, 10.0


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, asyncio.Future[FastServerConnection]]]:
    """A server that sends nothing of its own (no pings either); yields its
    port and the connection it accepts."""
    accepted: asyncio.Future[FastServerConnection] = asyncio.get_running_loop().create_future()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, FastServerConnection)
        accepted.set_result(ws)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, create_connection=FastServerConnection,
                     ping_interval=None, compression=None) as server:
        yield server.sockets[0].getsockname()[1], accepted


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FastServerConnection, ClientConnection]]:
    async with silent_server() as (port, accepted), connect(
            f"ws://127.0.0.1:{port}", ping_interval=None, compression=None) as client:
        yield await asyncio.wait_for(accepted, 5), client


async def heard_more_than(ws: FastServerConnection | FastClientConnection,
                          count: int) -> None:
    for _ in range(500):
        if ws.heard_count > count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nothing came back from the peer")


async def test_a_silent_peer_is_pinged_and_an_answer_keeps_it(pair) -> None:  # type: ignore[no-untyped-def]
    server, _client = pair
    heard = server.last_heard
    assert heard > 0  # the handshake itself was heard

    sweep([server], heard + INTERVAL - 1, interval=INTERVAL, timeout=TIMEOUT)
    assert server._ping_sent_at == 0  # not silent long enough: no ping

    sent = heard + INTERVAL
    before = server.heard_count
    sweep([server], sent, interval=INTERVAL, timeout=TIMEOUT)
    assert server._ping_sent_at == sent
    await heard_more_than(server, before)  # the client's pong
    # Answered, though on the clock the pong came "before" the ping (the sweep
    # runs ahead here; on a real loop both can fall in one clock tick).
    assert server.last_heard < sent

    later = sent + TIMEOUT + 1
    sweep([server], later, interval=INTERVAL, timeout=TIMEOUT)
    assert server.state is State.OPEN  # answered: not failed
    # By the sweep's clock it has been silent for longer than the interval
    # since, so the next ping goes out - a new one, not the old one pending.
    assert server._ping_sent_at == later


async def test_a_peer_that_does_not_answer_is_dropped(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    client.transport.pause_reading()  # alive on the network, but not reading: no pong
    sent = server.last_heard + INTERVAL
    sweep([server], sent, interval=INTERVAL, timeout=TIMEOUT)
    sweep([server], sent + TIMEOUT - 1, interval=INTERVAL, timeout=TIMEOUT)
    assert server.state is State.OPEN  # still within the timeout

    sweep([server], sent + TIMEOUT, interval=INTERVAL, timeout=TIMEOUT)
    await asyncio.wait_for(server.wait_closed(), 5)
    assert server.protocol.close_sent is not None
    assert server.protocol.close_sent.code == 1011  # internal error: keepalive ping timeout
    client.transport.resume_reading()
    await asyncio.wait_for(client.wait_closed(), 5)


async def test_a_closed_connection_is_left_alone(pair) -> None:  # type: ignore[no-untyped-def]
    server, client = pair
    await client.close()
    await asyncio.wait_for(server.wait_closed(), 5)
    sweep([server], server.last_heard + 10 * INTERVAL, interval=INTERVAL, timeout=TIMEOUT)
    assert server._ping_sent_at == 0


async def test_a_client_pings_a_silent_server_and_drops_it_when_it_does_not_answer() -> None:
    """The clients' keepalive task (agent, console) on a real connection:
    short intervals stand in for the real 60 s / 30 s."""
    async with silent_server() as (port, held):
        client = await connect(f"ws://127.0.0.1:{port}", create_connection=FastClientConnection,
                               ping_interval=0.1, ping_timeout=0.2, compression=None)
        assert isinstance(client, FastClientConnection)
        peer = await asyncio.wait_for(held, 5)
        answered = client.heard_count
        await heard_more_than(client, answered)  # silent server: pinged, and it answered
        assert client.state is State.OPEN

        peer.transport.pause_reading()  # now it stops answering
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.protocol.close_sent is not None
        assert client.protocol.close_sent.code == 1011
        peer.transport.resume_reading()
