"""Agents for the harness, in one process: `python -m bench.agents ...`.

`--sessions N` runs N real `agent.client.Agent`s whose screen is the
harness's own: consent is answered with exactly what was asked, the
moment it is asked. That is a hook of the harness, not a flag of the agent: the agent
program itself always asks a person. Each new join code is printed as a JSON
line, so the harness can join.

`--idle N` opens N agent control connections (TLS, hello, keepalive pings)
and holds them, for measuring what an idle agent costs the broker.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.client import Agent
from agent.config import AgentConfig
from agent.consent import ConsentRequest, Decision
from agent.identity import load_identity
from agent.screen import Viewer
from bench.procs import raise_fd_limit
from broker import eventloop
from broker.client.link import open_link
from broker.wire.chat import ChatLine
from broker.wire.messages import b64encode

# Agents started together; under `MAX_PENDING_PER_SOURCE` (32), which the
# harness's own console clients share while joining.
START_WAVE = 16


def emit(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


class HarnessScreen:
    """Stands where the customer's terminal would: approves at once."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.quit = asyncio.Event()
        self.registered = asyncio.Event()  # its first code came
        # The agent sets these; nobody presses the keys that call them here.
        self.on_end_all: Callable[[], None] = lambda: None
        self.on_view_only: Callable[[str | None], None] = lambda _seat: None
        self.on_remove: Callable[[str], None] = lambda _seat: None
        self.on_invite: Callable[[], None] = lambda: None
        self.on_customer_input: Callable[[bytes], None] = lambda _data: None
        self.on_cancel_transfers: Callable[[], object] = lambda: None
        self.on_files: Callable[[], None] = lambda: None
        self.on_chat_send: Callable[[str], None] = lambda _text: None

    def set_code(self, code: str | None, expires_in: int) -> None:
        if code:
            self.registered.set()
            emit({"agent": self.index, "code": code})

    async def ask_consent(self, request: ConsentRequest, timeout: float,
                          max_rights: str) -> Decision:
        return Decision("granted", tuple(request.wants))  # all that was asked, never more

    def notice(self, text: str) -> None: ...
    def flash(self, text: str, seconds: float = 0) -> None: ...
    async def show_invite(self, code: str, expires_in: int,
                          claimed: asyncio.Event) -> None: ...
    async def show_panel(self, lines: Callable[[], list[str]],
                         actions: Mapping[str, Callable[[], object]]) -> None: ...
    def session_started(self, session: str, viewer: Viewer) -> None: ...
    def session_ended(self, session: str, message: str) -> None: ...
    def set_control(self, session: str, control: bool) -> None: ...
    def set_activity(self, text: str) -> None: ...
    def mirror(self, data: bytes) -> None: ...
    def chat_line(self, line: ChatLine) -> None: ...


async def run_sessions(args: argparse.Namespace) -> None:
    state = Path(tempfile.mkdtemp(prefix="bench-agent-"))
    agents = []
    for i in range(args.sessions):
        config = AgentConfig(broker=args.broker, ca=args.ca, alias=f"bench-{i}",
                             state_dir=state / str(i), shell=args.shell, share=args.share,
                             transfers_dir=state / str(i) / "transfers")
        screen = HarnessScreen(i)
        agents.append((Agent(config, load_identity(config.state_dir), screen), screen))
    async with asyncio.TaskGroup() as group:
        # In waves, as customers start their agents at different moments: all
        # at once from one address would be more pending connections than the
        # broker lets one source hold (broker/admission.py).
        for start in range(0, len(agents), START_WAVE):
            wave = agents[start:start + START_WAVE]
            for agent, _ in wave:
                group.create_task(agent.run())
            await asyncio.wait_for(asyncio.gather(*(s.registered.wait() for _, s in wave)), 120)


async def run_idle(args: argparse.Namespace) -> None:
    links = []
    for i in range(args.idle):
        link = await open_link(args.broker, "/v1/agent", args.ca)
        await link.send("hello", device_id=f"idle{i:06d}", device_key=b64encode(bytes(32)),
                        alias=f"idle-{i}")
        await link.expect("nameplate", timeout=60)
        links.append(link)
        if (i + 1) % 500 == 0 or i + 1 == args.idle:
            emit({"connected": i + 1})
    await asyncio.Event().wait()  # hold them until the harness stops us


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--ca", type=Path, required=True)
    p.add_argument("--sessions", type=int, default=0)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--shell", default="/bin/cat")
    p.add_argument("--share", type=Path, default=None, help="a folder shared read-only")
    args = p.parse_args()
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        eventloop.run(run_idle(args) if args.idle else run_sessions(args))


if __name__ == "__main__":
    main()
