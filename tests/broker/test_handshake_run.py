"""The handshake's driver (`broker.client.handshake.HandshakeRun`) on a real
WebSocket over loopback: what the machine says is sent, what arrives is
handed in, a deadline passes on a fake clock, a closed link is `lost`."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from broker.client.handshake import HandshakeRun
from broker.client.link import BrokerLink
from broker.wire.machine.handshake import (
    STEP_TIMEOUT,
    Failed,
    Failure,
    Handshake,
    Joined,
    Source,
)
from broker.wire.messages import encode
from tests.wire.handshakes import CODE, console_side


async def test_a_run_sends_hands_in_and_times_out_on_its_clock() -> None:
    heard: list[str] = []

    async def broker(ws: ServerConnection) -> None:
        async for frame in ws:
            heard.append(json.loads(frame)["type"])
            if heard[-1] == "join":
                await ws.send(encode("joined", session="s1", alias="Front Desk"))

    now = [100.0]
    async with serve(broker, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            run = HandshakeRun(BrokerLink(ws), Handshake(console_side(), CODE),
                               clock=lambda: now[0])
            await run.start()
            assert await asyncio.wait_for(run.next_event(), 5) == Joined("s1", "Front Desk")
            now[0] += STEP_TIMEOUT  # the agent's pake never comes
            failed = await asyncio.wait_for(run.next_event(), 5)
            assert failed == Failed(Failure.TIMEOUT, "the broker did not answer in time",
                                    Source.LOCAL)
            assert await run.next_event() is failed  # the outcome, again
    assert heard == ["join", "pake"]


async def test_a_link_that_closes_is_lost() -> None:
    async def broker(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.close(1000, "going away")

    async with serve(broker, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            run = HandshakeRun(BrokerLink(ws), Handshake(console_side(), CODE))
            await run.start()
            failed = await asyncio.wait_for(run.next_event(), 5)
    assert isinstance(failed, Failed) and failed.reason == Failure.CLOSED
    assert "going away" in failed.message
