"""A real broker under a low open-file limit, flooded with idle sockets:
it refuses what it cannot hold, at once, and still serves real peers.

Loopback is all of 127.0.0.0/8 on Linux, so each flood source binds its
own 127.x address while the legitimate peers come from 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Iterator

from websockets.asyncio.client import connect

from broker.admission import MAX_PENDING_PER_SOURCE
from broker.wire.messages import encode
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment

# Low enough that the flood below would exhaust it without admission.
LOW_NOFILE = 256


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_NOFILE, LOW_NOFILE))


@contextlib.contextmanager
def idle_sockets(port: int, sources: list[str], per_source: int) -> Iterator[list[socket.socket]]:
    """TCP connections that never say anything, `per_source` from each source."""
    held: list[socket.socket] = []
    try:
        for source in sources:
            for _ in range(per_source):
                sock = socket.socket()
                sock.bind((source, 0))
                sock.connect(("127.0.0.1", port))
                held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def was_reset(sock: socket.socket, wait: float = 2.0) -> bool:
    """True if the broker closed this socket; False if it still holds it."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def still_held(socks: list[socket.socket], cap: int, settle: float = 10.0) -> list[socket.socket]:
    """The sockets the broker still holds once it has worked through them:
    a socket it closed turns readable (EOF or reset, since it sends nothing
    before TLS), and resets still on their way while it accepts hundreds at
    once are waited for - up to `settle` s, until no more than `cap` remain."""
    left = set(socks)
    deadline = time.monotonic() + settle
    with selectors.DefaultSelector() as watch:  # epoll: no FD_SETSIZE limit
        for sock in socks:
            watch.register(sock, selectors.EVENT_READ)
        while len(left) > cap and (remaining := deadline - time.monotonic()) > 0:
            for key, _ in watch.select(remaining):
                watch.unregister(key.fileobj)
                left.discard(key.fileobj)
    return list(left)


async def agent_gets_a_code(dep: Deployment) -> None:
    tls = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    async with connect(dep.url + "/v1/agent", ssl=tls, compression=None,
                       open_timeout=10) as ws:
        await ws.send(encode("hello", device_id="legit", device_key="A" * 43 + "=",
                             alias="real customer"))
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply["type"] == "nameplate"


def test_one_source_is_cut_off_at_its_cap_and_a_real_agent_still_gets_in(
        deployment: Deployment) -> None:
    deployment.start_broker(preexec_fn=low_nofile)
    with idle_sockets(deployment.port, ["127.0.0.2"], MAX_PENDING_PER_SOURCE + 1) as held:
        # The n+1th takes the place of the oldest, which is reset; the rest
        # are held (awaiting TLS): never more than n from one source.
        assert was_reset(held[0])
        assert not any(was_reset(s, 0.05) for s in held[1:])
        with idle_sockets(deployment.port, ["127.0.0.2"], 300) as more:
            assert all(was_reset(s) for s in held[1:])  # churned out by newer ones
            assert len(still_held(more, MAX_PENDING_PER_SOURCE)) <= MAX_PENDING_PER_SOURCE
            asyncio.run(agent_gets_a_code(deployment))
    assert deployment.broker is not None and deployment.broker.poll() is None


def test_a_many_source_flood_beyond_the_descriptor_limit_leaves_room_for_real_peers(
        deployment: Deployment) -> None:
    key = deployment.add_engineer("alice")
    deployment.start_broker(preexec_fn=low_nofile)
    sources = [f"127.0.{n // 200}.{n % 200 + 2}" for n in range(40)]
    # 400 idle sockets against 256 descriptors: without admission the
    # broker's accept fails (EMFILE) and nobody gets in until they time out.
    with idle_sockets(deployment.port, sources, 10):
        asyncio.run(agent_gets_a_code(deployment))

        async def login() -> None:
            client = ConsoleClient(deployment.url, deployment.pki.ca_cert,
                                   load_file_identity("alice", key, None))
            link = await client.connect()
            await link.close()

        asyncio.run(login())
    assert deployment.broker is not None and deployment.broker.poll() is None
    assert "Traceback" not in deployment.broker_stdout.read_text()
