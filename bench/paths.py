"""The two ways the harness reaches a shell: directly (baseline) and through
the broker's relay (the product), with the same asyncssh client on top."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from bench.fixture import Deployment
from broker.wire.code import parse_code
from broker.wire.limits import SSH_CIPHERS
from console.client import ConsoleClient, JoinedSession
from console.identity import load_file_identity


@dataclass
class Direct:
    """`bench.direct` in its own process, like the agent would be."""

    port: int
    host_key: asyncssh.SSHKey
    proc: asyncio.subprocess.Process

    @classmethod
    async def start(cls, dep: Deployment) -> Direct:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.direct", "--client-key", f"{dep.key_path}.pub",
            stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        info = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))
        return cls(info["port"], asyncssh.import_public_key(info["host_key"]), proc)

    async def connect(self, dep: Deployment) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            "127.0.0.1", self.port, username=dep.user, client_keys=[str(dep.key_path)],
            known_hosts=([self.host_key], [], []), config=None, agent_path=None,
            encryption_algs=list(SSH_CIPHERS), keepalive_interval=0)

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        await self.proc.wait()


@dataclass
class Agents:
    """`bench.agents --sessions N`: reads each agent's current join code."""

    proc: asyncio.subprocess.Process
    codes: dict[int, asyncio.Queue[str]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, dep: Deployment, count: int, shell: str = "/bin/sh",
                    share: Path | None = None) -> Agents:
        """`share`: the folder the agents' customers share read-only."""
        shared = ["--share", str(share)] if share is not None else []
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.agents", "--broker", dep.url, "--ca",
            str(dep.pki.ca_cert), "--sessions", str(count), "--shell", shell, *shared,
            stdout=asyncio.subprocess.PIPE, limit=1 << 20)
        agents = cls(proc, {i: asyncio.Queue() for i in range(count)})
        agents.reader = asyncio.create_task(agents._read())
        return agents

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            record = json.loads(line)
            if "code" in record:
                queue = self.codes[record["agent"]]
                while not queue.empty():  # only the newest code is valid
                    queue.get_nowait()
                queue.put_nowait(record["code"])

    async def code(self, index: int) -> str:
        return await asyncio.wait_for(self.codes[index].get(), 60)

    async def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        await self.proc.wait()
        if self.reader is not None:
            self.reader.cancel()


def console_client(dep: Deployment) -> ConsoleClient:
    identity = load_file_identity(dep.user, dep.key_path, None)
    return ConsoleClient(dep.url, dep.pki.ca_cert, identity)


async def join(dep: Deployment, agents: Agents, index: int,
               client: ConsoleClient | None = None) -> JoinedSession:
    client = client or console_client(dep)
    code = parse_code(await agents.code(index))
    return await client.join(code, ("view", "control"))


@contextlib.asynccontextmanager
async def relayed(dep: Deployment, agents: Agents, index: int,
                  ) -> AsyncIterator[asyncssh.SSHClientConnection]:
    joined = await join(dep, agents, index)
    conn, pump = await joined.open_ssh()
    try:
        yield conn
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()
