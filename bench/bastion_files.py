"""Bulk beside the bastion without a terminal (issue 15): a file fetched
with SFTP, and a command's output through an exec channel.

SFTP: the stock `sftp` client on every path, fetching one file of the bulk
size from the customer: from its sshd directly, through the bastion (-J),
through the customer's reverse tunnel (-R), and through consentry with
`consentry-console proxy` as sftp's ProxyCommand, as the README tells an
engineer to (the files right asked for and granted by the harness's
screen; the agent's SFTP server reads the customer's shared folder). A run
is a whole `sftp` process, so it includes logging in (and for consentry the
join and consent); the same fetch of a one-byte file, run just before, is
subtracted from both its time and the relay's CPU, which leaves the
transfer's own.

exec: `ssh -T HOST 'head -c N /dev/zero'` (no PTY) on the OpenSSH paths.
consentry's agent offers a shell, files and chat and refuses exec; the row
asks for exec through the proxy and reports what ssh said, rather than
assume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.bastion import (
    CONSENTRY,
    DIRECT,
    JUMP,
    PATHS,
    REVERSE,
    OpenSsh,
    Snapshot,
    cpu_of,
    descendants,
    openssh_bulk,
    spent,
)
from bench.cases import GIB, Mode
from bench.fixture import BIN, Deployment
from bench.paths import Agents
from bench.procs import cpu_seconds_with_reaped
from broker.wire.text import printable

BULK_FILE, TINY_FILE = "bulk.bin", "tiny.bin"
RUN_TIMEOUT = 600.0
CHUNK = 1 << 20
# A smoke run's bulk size is too small for the subtraction to mean anything.
MIN_SFTP_BYTES = 16 << 20
OPENSSH_PATHS = (DIRECT, JUMP, REVERSE)


@dataclass
class FileResults:
    """Per path and repetition: SFTP MB/s and relay s/GiB; exec the same on
    the OpenSSH paths; what consentry answered to exec."""

    sftp_rate: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    sftp_relay_gib: dict[str, list[float]] = field(
        default_factory=lambda: {p: [] for p in PATHS})
    exec_rate: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    exec_relay_gib: dict[str, list[float]] = field(
        default_factory=lambda: {p: [] for p in PATHS})
    exec_refused: str = ""


def _reps(mode: Mode) -> int:
    return 1 if mode.smoke else mode.reps  # the smoke run keeps the rows working, fast


def make_shared(folder: Path, mode: Mode) -> None:
    """The customer's shared folder: the bulk file (random: nothing on the
    way may compress it) and a one-byte file."""
    size = max(mode.bulk_bytes, MIN_SFTP_BYTES)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / BULK_FILE).open("wb") as out:
        left = size
        while left:
            out.write(os.urandom(min(CHUNK, left)))
            left -= min(CHUNK, left)
    (folder / TINY_FILE).write_bytes(b"x")


def _proxy_options(dep: Deployment, known: Path, *rights: str) -> list[str]:
    """The README's ssh options for `consentry-console proxy` (host `consentry-CODE`)."""
    proxy = shlex.join([str(BIN / "consentry-console"), "proxy", "%n", "--broker", dep.url,
                        "--ca", str(dep.pki.ca_cert), "--identity", str(dep.key_path),
                        "--user", dep.user, "--known-hosts", str(known), *rights])
    return ["-F", "/dev/null", "-o", f"ProxyCommand={proxy}",
            "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none", "-i", str(dep.key_path), "-o", "BatchMode=yes",
            "-o", "Ciphers=aes128-gcm@openssh.com"]


def _tree_with_reaped(pid: int) -> float:
    total = 0.0
    for each in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += cpu_seconds_with_reaped(each)
    return total


async def _run(argv: list[str], cpu: Callable[[], Snapshot]) -> tuple[float, float, int, str]:
    """Seconds from exec to exit, CPU `cpu` spent meanwhile, exit status, stderr."""
    before, start = cpu(), time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    taken = time.perf_counter() - start
    return taken, spent(before, cpu()), proc.returncode or 0, err.decode(errors="replace")


class _Sftp:
    """One path's `sftp -b` fetch of a shared file to a scratch file."""

    def __init__(self, ssh: OpenSsh, dep: Deployment, agents: Agents, share: Path) -> None:
        self.ssh, self.dep, self.agents, self.share = ssh, dep, agents, share
        self.scratch = ssh.root / "fetched.bin"
        self.known = ssh.root / "consentry_known_hosts"

    async def argv(self, path: str, name: str) -> list[str]:
        batch = self.ssh.root / f"batch-{name}"
        remote = f"shared/{name}" if path == CONSENTRY else str(self.share / name)
        batch.write_text(f"get {remote} {self.scratch}\n")
        if path == CONSENTRY:
            code = await self.agents.code(0)  # a fresh code and consent per connection
            return ["sftp", "-q", *_proxy_options(self.dep, self.known, "--files"),
                    "-b", str(batch), f"consentry-{code}"]
        return ["sftp", "-q", "-F", str(self.ssh.config), "-b", str(batch),
                *self.ssh.target(path, port_flag="-P")]

    def relay_cpu(self, path: str) -> Callable[[], Snapshot]:
        assert self.dep.broker is not None and self.ssh.bastion is not None
        if path == CONSENTRY:
            broker = self.dep.broker.pid
            return lambda: cpu_of([broker])
        if path == DIRECT:
            return dict
        # A whole sftp run: its connection's sshd processes have exited and
        # been reaped by the time it is read, so reaped children count too.
        bastion = self.ssh.bastion.proc.pid
        return lambda: {bastion: _tree_with_reaped(bastion)}

    async def fetch(self, path: str, name: str) -> tuple[float, float]:
        taken, cpu, status, err = await _run(await self.argv(path, name), self.relay_cpu(path))
        if status != 0:
            # The last lines say why; the proxy's progress lines come first.
            raise RuntimeError(f"sftp on {path} failed ({status}): "
                               f"{printable(err.strip()[-500:], 500) or 'no message'}")
        fetched = self.scratch.stat().st_size
        self.scratch.unlink()
        expected = (self.share / name).stat().st_size
        if fetched != expected:
            raise RuntimeError(f"sftp on {path} fetched {fetched} bytes of {expected}")
        return taken, cpu


async def sftp_bulk(ssh: OpenSsh, dep: Deployment, agents: Agents, share: Path,
                    mode: Mode, res: FileResults) -> None:
    """Interleaved by repetition; each path's one-byte fetch just before its big one."""
    sftp = _Sftp(ssh, dep, agents, share)
    size = (share / BULK_FILE).stat().st_size
    await sftp.fetch(DIRECT, TINY_FILE)  # warm the page cache and the client once
    for _ in range(_reps(mode)):
        for path in PATHS:
            small_s, small_cpu = await sftp.fetch(path, TINY_FILE)
            big_s, big_cpu = await sftp.fetch(path, BULK_FILE)
            # A connection slower than the one before it can outweigh a short
            # transfer; then the whole run is the fairer figure.
            seconds = big_s - small_s if big_s > small_s else big_s
            res.sftp_rate[path].append((size - 1) / seconds / 1e6)
            if path != DIRECT:
                res.sftp_relay_gib[path].append(max(0.0, big_cpu - small_cpu) / (size / GIB))


async def exec_bulk(ssh: OpenSsh, dep: Deployment, agents: Agents, mode: Mode,
                    res: FileResults) -> None:
    size = mode.bulk_bytes
    command = f"printf R''EADY; head -c {size} /dev/zero"
    for _ in range(_reps(mode)):
        for path in OPENSSH_PATHS:
            await openssh_bulk(ssh, path, command, size, res.exec_rate, res.exec_relay_gib,
                               tty=False)
    code = await agents.code(0)
    known = ssh.root / "consentry_known_hosts"
    _, _, status, err = await _run(
        ["ssh", "-T", *_proxy_options(dep, known), f"consentry-{code}", command], dict)
    # ssh's own words, not the proxy's progress lines before them.
    said = printable(" ".join(line for line in err.splitlines()
                              if line.strip() and not line.startswith("consentry:")), 200)
    if status == 0:
        raise RuntimeError("consentry's agent ran an exec command: it must refuse exec")
    res.exec_refused = said
