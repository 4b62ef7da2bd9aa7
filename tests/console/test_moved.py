"""A console told `moved` by a cluster node joins again at the node named,
once: a second `moved` (nodes that disagree) and a URL that is not a plain
wss:// one are refused with a sentence, never followed. The node here is
a small fake over real TLS, answering every join with `moved`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
from websockets.asyncio.server import ServerConnection, serve

from broker.certs import PkiPaths, init_dev_pki
from broker.server import server_tls
from broker.wire.code import parse_code
from broker.wire.messages import b64encode, encode
from console.client import ConsoleClient
from console.errors import BrokerError
from console.identity import load_file_identity

CODE = parse_code("114821-193-775")


class MovingNode:
    """Logs anyone in, and answers each join `moved` to `target`."""

    def __init__(self) -> None:
        self.target = ""
        self.joins = 0

    async def handle(self, ws: ServerConnection) -> None:
        assert json.loads(await ws.recv())["type"] == "login"
        await ws.send(encode("challenge", nonce=b64encode(b"n" * 32)))
        assert json.loads(await ws.recv())["type"] == "login_proof"
        await ws.send(encode("login_ok", user="alice", display="Alice", role="engineer"))
        assert json.loads(await ws.recv())["type"] == "join"
        self.joins += 1
        await ws.send(encode("moved", url=self.target))
        await ws.close()


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return init_dev_pki(tmp_path / "certs")


@pytest.fixture
async def node(pki: PkiPaths) -> AsyncIterator[tuple[MovingNode, str]]:
    fake = MovingNode()
    async with serve(fake.handle, "127.0.0.1", 0, ssl=server_tls(pki.cert, pki.key)) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        url = f"wss://127.0.0.1:{port}"
        yield fake, url


def _client(url: str, pki: PkiPaths, tmp_path: Path) -> ConsoleClient:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(str(tmp_path / "id"))
    return ConsoleClient(url, pki.ca_cert, load_file_identity("alice", tmp_path / "id", None))


async def test_a_second_move_is_refused_not_followed(
        node: tuple[MovingNode, str], pki: PkiPaths, tmp_path: Path) -> None:
    fake, url = node
    fake.target = url  # it sends the join to itself: a loop, were it followed
    with pytest.raises(BrokerError, match="sent it on again"):
        await _client(url, pki, tmp_path).join(CODE, ("view",))
    assert fake.joins == 2


@pytest.mark.parametrize("target", ["ws://127.0.0.1:1", "wss://evil@127.0.0.1:1",
                                    "wss://127.0.0.1:1/elsewhere"])
async def test_a_move_to_anything_but_wss_host_port_is_refused(
        node: tuple[MovingNode, str], pki: PkiPaths, tmp_path: Path, target: str) -> None:
    fake, url = node
    fake.target = target
    with pytest.raises(BrokerError, match="not acceptable"):
        await _client(url, pki, tmp_path).join(CODE, ("view",))
    assert fake.joins == 1
