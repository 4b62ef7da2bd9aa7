"""The plain join's terminal (`console.terminal.run_terminal_session`) on a
real PTY against the loopback chat server, for pexpect: no broker, the SSH
connection goes straight to tests/console/chat_server.py.

    python tests/console/plain_chat_harness.py [--no-chat] [--view-only]

Prints the session's outcome when it ends, as `consentry-console join` does.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import cast

import asyncssh

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from broker.client.link import BrokerLink  # noqa: E402
from console.client import JoinedSession  # noqa: E402
from console.identity import Identity  # noqa: E402
from console.terminal import KEYS_TEXT, run_terminal_session, status  # noqa: E402
from tests.console.chat_server import ChatServer, chat_listener, connect  # noqa: E402


class _NoLink:
    """The broker's link, of which this session has none."""

    async def send(self, *_args: object, **_fields: object) -> None:
        return None

    async def close(self) -> None:
        return None


class LoopbackJoined(JoinedSession):
    port = 0

    async def open_ssh(self) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[None]]:
        conn = await connect(self.port)
        # The broker link's pump: runs until the session is over.
        pump = asyncio.get_running_loop().create_task(asyncio.Event().wait())
        return conn, cast("asyncio.Task[None]", pump)


async def main(argv: list[str]) -> int:
    server = ChatServer(offer_chat="--no-chat" not in argv)
    granted = ("view",) if "--view-only" in argv else ("view", "control")
    async with chat_listener(server) as port:
        joined = LoopbackJoined(
            link=cast(BrokerLink, _NoLink()), session="sessA1", alias="front desk",
            sas="7F3A-91C2", host_key=asyncssh.generate_private_key("ssh-ed25519"),
            granted=granted, identity=cast(Identity, None))
        joined.port = port
        status(f"connected to front desk. {KEYS_TEXT}.")
        status(await run_terminal_session(joined))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
