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

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from console.status_line import status  # noqa: E402
from console.terminal import KEYS_TEXT, run_terminal_session  # noqa: E402
from tests.console.chat_server import ChatServer, chat_listener, loopback_joined  # noqa: E402


async def main(argv: list[str]) -> int:
    server = ChatServer(offer_chat="--no-chat" not in argv)
    granted = ("view",) if "--view-only" in argv else ("view", "control")
    async with chat_listener(server) as port:
        joined = loopback_joined(port, granted)
        status(f"connected to front desk. {KEYS_TEXT}.")
        status(await run_terminal_session(joined))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main(sys.argv[1:])))
