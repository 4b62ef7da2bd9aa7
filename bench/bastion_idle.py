"""Memory per idle waiting customer beside the bastion (issue 15).

A customer waiting for an engineer is, with OpenSSH, a reverse tunnel held
open on the bastion (`ssh -N -R`): the bastion keeps an sshd process pair
for it (the privileged monitor and the session's child). With consentry it
is an agent's control connection to the broker (TLS, hello, keepalive).
Both are measured on the relay, in the same run: the bastion's sshd
processes with and without the tunnels, the broker's RSS and USS with and
without the idle agents (`bench.agents --idle`, as the idle-agents row).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from bench.bastion import OpenSsh, SshProcess, descendants, free_port
from bench.cases import Mode, idle_agents_held
from bench.fixture import Deployment
from bench.procs import rss_bytes, uss_bytes

SETTLE_SECONDS = 2.0  # for RSS to stop moving after the last connection (0.5 s in a smoke run)


@dataclass
class IdleMemory:
    """Bytes per waiting customer on the relay."""

    tunnels: int
    bastion_rss: float
    bastion_uss: float
    agents: int
    broker_rss: float
    broker_uss: float


def _memory(pids: list[int]) -> tuple[int, int]:
    rss = uss = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            rss, uss = rss + rss_bytes(pid), uss + uss_bytes(pid)
    return rss, uss


async def idle_memory(ssh: OpenSsh, dep: Deployment, mode: Mode) -> IdleMemory:
    assert ssh.bastion is not None and dep.broker is not None
    bastion = ssh.bastion.proc.pid
    tunnels, agents = (3, 50) if mode.smoke else (10, 1000)
    settle = 0.5 if mode.smoke else SETTLE_SECONDS

    def bastion_memory() -> tuple[int, int]:
        return _memory([bastion, *descendants(bastion, "sshd")])

    rss0, uss0 = bastion_memory()
    held: list[SshProcess] = []
    try:
        for _ in range(tunnels):
            held.append(await ssh.reverse_tunnel(free_port()))
        await asyncio.sleep(settle)
        rss1, uss1 = bastion_memory()
    finally:
        for proc in held:
            await proc.stop()
    broker = dep.broker.pid
    b_rss0, b_uss0 = _memory([broker])
    async with idle_agents_held(dep, agents):
        await asyncio.sleep(settle)
        b_rss1, b_uss1 = _memory([broker])
    return IdleMemory(tunnels, (rss1 - rss0) / tunnels, (uss1 - uss0) / tunnels,
                      agents, (b_rss1 - b_rss0) / agents, (b_uss1 - b_uss0) / agents)
