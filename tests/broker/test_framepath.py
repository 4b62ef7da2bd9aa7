"""The binary fast path on real websockets connections over loopback."""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from broker.client.link import FastClientConnection
from broker.listener import FastServerConnection


async def test_frames_queued_together_arrive_whole_in_order_and_close_cleanly() -> None:
    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, FastServerConnection)
        # Echo each binary frame back from the protocol callback.
        ws.binary_sink = ws.send_binary_soon
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, create_connection=FastServerConnection,
                     compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", create_connection=FastClientConnection,
                           compression=None) as ws:
            assert isinstance(ws, FastClientConnection)
            got: asyncio.Queue[bytes] = asyncio.Queue()
            ws.binary_sink = got.put_nowait
            frames = [bytes([n]) * (n * 1000 + 1) for n in range(1, 6)]
            assert ws.send_binary_now(*frames)
            for frame in frames:
                assert await asyncio.wait_for(got.get(), 5) == frame
            await ws.send("control frames still take websockets' path")
        assert ws.close_code == 1000
        assert not ws.send_binary_now(b"late")
