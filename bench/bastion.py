"""The bastion rows (issue 15): what a sysadmin uses instead of consentry,
plain OpenSSH through a bastion, measured in the same run as consentry's
relay and with the same measuring code.

The harness starts two `sshd` of its own on loopback (free ports, in the
foreground, as the current user; configs from bench/templates/, host and
user keys made per run with ssh-keygen, aes128-gcm on both sides):
"customer", the far end, where the PTY runs `stty raw -echo; cat`, and
"bastion", the only one that forwards. The client is the stock `ssh` with
a generated config (the host keys pinned, StrictHostKeyChecking yes, no
multiplexing). Three OpenSSH paths:

- direct sshd: `ssh -tt customer` (the floor, no relay),
- bastion -J: `ssh -J bastion customer` (ProxyJump: a second local `ssh -W`
  through the bastion's direct-tcpip),
- reverse -R: the customer side runs `ssh -N -R PORT:127.0.0.1:SSHD bastion`
  (as a customer behind NAT would) and the engineer `ssh -J bastion -p PORT
  127.0.0.1`,

and consentry's own (console client -> broker -> agent), taking turns in
short blocks. Keystrokes go through `bench.measure.keystrokes` on every
path: for OpenSSH the "channel" is the `ssh` process's stdin and the tap is
fed from its stdout (pipes, as the harness's asyncssh client has no local
terminal either).

CPU per round trip per process: relay = the bastion's sshd processes, client
= the engineer's `ssh` with its children (-J's `ssh -W`), customer side =
the customer sshd's processes (not the shell or `cat`) plus, for -R, the
tunnel's `ssh`; for consentry the broker, the harness's own process (the
console's client runs in it, so it also pays the measuring loop; the note
gives that loop's share as seen on the OpenSSH paths) and the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import cast

from bench import measure, startup
from bench.cases import GIB, Mode, Row
from bench.fixture import Deployment
from bench.paths import Agents, relayed
from bench.procs import cpu_seconds
from bench.stats import Summary, percentile, ratios
from broker.wire.text import printable

TEMPLATES = Path(__file__).parent / "templates"
THINK_SECONDS = 0.002  # between keystrokes, as in the table
KEYSTROKE_BLOCK = 50  # timed on one path before the next takes its turn
UP_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
STDERR_TAIL = 2048
DIRECT, JUMP, REVERSE, CONSENTRY = "direct sshd", "bastion -J", "reverse -R", "consentry"
PATHS = (DIRECT, JUMP, REVERSE, CONSENTRY)
RELAY, CLIENT, CUSTOMER = "relay", "client", "customer side"
ECHO_COMMAND = "stty raw -echo; printf R''EADY; exec cat"
# The agent in the harness runs /bin/sh (bench/agents.py); the customer's
# sshd gets the same shell, so a login bash's profile is not what is timed.
PROMPT_COMMAND = "exec /bin/sh -i"
MISSING_SSHD = ("no sshd found (the openssh-server package): `make bench` installs it when "
                "missing, or `apt-get install -y openssh-server openssh-client`")


# -- processes ----------------------------------------------------------------------


def _children_map() -> dict[int, list[tuple[int, str]]]:
    """Every live process's children, with their command names (from /proc)."""
    children: dict[int, list[tuple[int, str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
            ppid = int(tail.split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append((int(entry), head.split("(", 1)[1]))
    return children


def descendants(pid: int, name: str | None = None) -> list[int]:
    """`pid`'s live descendants (only those whose command is `name`, if given,
    though the walk goes on below the others)."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        for child, comm in children.get(todo.pop(), []):
            if name is None or comm == name:
                found.append(child)
            todo.append(child)
    return found


# CPU seconds so far, by process id. A sum over live processes would drop
# when an earlier connection's process exits mid-window; a difference of
# snapshots counts each process from where it stood (new ones from zero).
Snapshot = dict[int, float]


def cpu_of(pids: list[int]) -> Snapshot:
    taken = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            taken[pid] = cpu_seconds(pid)
    return taken


def spent(before: Snapshot, after: Snapshot) -> float:
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def _terminate(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def find_sshd() -> str:
    """The system's sshd, by absolute path (it re-executes itself)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("sshd", path=path)
    if found is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        raise RuntimeError(MISSING_SSHD)
    return os.path.abspath(found)


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, capture_output=True, timeout=30)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


@dataclass
class Sshd:
    """One of the harness's sshd, in the foreground (`-D -e`)."""

    role: str
    port: int
    host_key: str  # "ssh-ed25519 AAAA..."
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu(self) -> Snapshot:
        """CPU of its sshd processes (per connection: the privileged monitor
        and the session's child), not of the shells they run."""
        return cpu_of([self.proc.pid, *descendants(self.proc.pid, "sshd")])

    def stop(self) -> None:
        left = descendants(self.proc.pid)  # the connections' processes: ours too
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        _terminate(left)


def start_sshd(root: Path, sshd: str, role: str, authorized_keys: Path,
               forwarding: bool) -> Sshd:
    host_key = root / f"{role}_host_ed25519"
    public = _keygen(host_key, f"bench-{role}")
    port = free_port()
    config = root / f"sshd_{role}.conf"
    config.write_text(Template((TEMPLATES / "sshd_config.template").read_text()).substitute(
        port=port, host_key=host_key, pid_file=root / f"sshd_{role}.pid",
        authorized_keys=authorized_keys, forwarding="yes" if forwarding else "no"))
    checked = subprocess.run([sshd, "-t", "-f", str(config)], capture_output=True,
                             text=True, timeout=30)
    if checked.returncode != 0:
        raise RuntimeError(f"the {role} sshd refuses its config: "
                           f"{printable(checked.stderr.strip(), 500)}")
    log = root / f"sshd_{role}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    server = Sshd(role, port, public, proc, log)
    deadline = time.monotonic() + UP_TIMEOUT
    while not listening(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"the {role} sshd did not start: "
                               f"{printable(log.read_text(errors='replace').strip(), 500)}")
        time.sleep(0.02)
    return server


class _Pipes(asyncio.SubprocessProtocol):
    """An `ssh` process's stdout feeds a `measure.Tap`, as an asyncssh
    channel would; stderr keeps a short tail for error messages."""

    def __init__(self) -> None:
        self.tap = measure.Tap()
        self.stderr = b""
        self.done = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 1:
            self.tap.data_received(data, None)
        else:
            self.stderr = (self.stderr + data)[-STDERR_TAIL:]

    def connection_lost(self, exc: Exception | None) -> None:
        # After the process exited and every pipe is drained: no byte is lost.
        self.tap.connection_lost(exc)
        self.done.set()


@dataclass
class SshProcess:
    """A stock `ssh` with its stdin, stdout and stderr on pipes."""

    transport: asyncio.SubprocessTransport
    pipes: _Pipes

    @property
    def tap(self) -> measure.Tap:
        return self.pipes.tap

    @property
    def pid(self) -> int:
        return self.transport.get_pid()

    def write(self, data: bytes) -> None:
        # uvloop's pipe transports are not asyncio.WriteTransport subclasses.
        cast(asyncio.WriteTransport, self.transport.get_pipe_transport(0)).write(data)

    def why(self) -> str:
        return printable(self.pipes.stderr.decode(errors="replace").strip(), 500) or "no message"

    async def until(self, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
        try:
            await self.tap.until(predicate, timeout)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"ssh: {exc} ({self.why()})") from None

    async def until_marked(self) -> None:
        await self.until(lambda: self.tap.marked)

    async def until_after_mark(self, count: int, timeout: float) -> None:
        await self.until(lambda: self.tap.after_mark >= count, timeout)

    async def stop(self) -> None:
        left = descendants(self.pid)  # ProxyJump's `ssh -W`
        if self.transport.get_returncode() is None:
            self.transport.terminate()
        try:
            await asyncio.wait_for(self.pipes.done.wait(), STOP_TIMEOUT)
        except TimeoutError:
            self.transport.kill()
            await asyncio.wait_for(self.pipes.done.wait(), STOP_TIMEOUT)
        finally:
            self.transport.close()
            _terminate(left)


async def spawn(argv: list[str]) -> SshProcess:
    loop = asyncio.get_running_loop()
    transport, pipes = await loop.subprocess_exec(
        _Pipes, *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return SshProcess(transport, pipes)


@dataclass
class OpenSsh:
    """The customer and bastion sshd, the customer's reverse tunnel and the
    client's config; `stop` ends every process this started."""

    root: Path
    config: Path
    customer: Sshd | None = None
    bastion: Sshd | None = None
    reverse_port: int = 0
    tunnel: SshProcess | None = None
    started: list[SshProcess] = field(default_factory=list)

    @classmethod
    async def start(cls) -> OpenSsh:
        sshd = find_sshd()
        ssh = cls(Path(tempfile.mkdtemp(prefix="consentry-bench-bastion-")), Path())
        try:
            await asyncio.to_thread(ssh._start_servers, sshd)
            assert ssh.customer is not None
            ssh.reverse_port = free_port()
            ssh.tunnel = await ssh.reverse_tunnel(ssh.reverse_port)
            return ssh
        except BaseException:
            await ssh.stop()
            raise

    async def reverse_tunnel(self, port: int) -> SshProcess:
        """The customer behind NAT: its own `ssh -N -R` holds `port` open on
        the bastion, leading back to its sshd; returned once it listens."""
        assert self.customer is not None
        tunnel = await spawn(["ssh", "-F", str(self.config), "-n", "-N", "-R",
                              f"127.0.0.1:{port}:127.0.0.1:{self.customer.port}", "bastion"])
        deadline = time.monotonic() + UP_TIMEOUT
        while not listening(port):
            if tunnel.pipes.done.is_set() or time.monotonic() > deadline:
                await tunnel.stop()
                raise RuntimeError(f"the reverse tunnel did not open: {tunnel.why()}")
            await asyncio.sleep(0.02)
        return tunnel

    def _start_servers(self, sshd: str) -> None:
        """Keys, the two sshd and the client's config (blocking: a thread's)."""
        if os.geteuid() == 0:
            # sshd run by root separates privileges into this empty folder,
            # which the system's service would otherwise create.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        root = self.root
        identity = root / "engineer_ed25519"
        authorized = root / "authorized_keys"
        authorized.write_text(_keygen(identity, "bench-engineer") + "\n")
        self.customer = start_sshd(root, sshd, "customer", authorized, forwarding=False)
        self.bastion = start_sshd(root, sshd, "bastion", authorized, forwarding=True)
        known = root / "known_hosts"
        known.write_text(f"customer {self.customer.host_key}\n"
                         f"bastion {self.bastion.host_key}\n")
        self.config = root / "ssh_config"
        self.config.write_text(Template((TEMPLATES / "ssh_config.template").read_text())
                               .substitute(customer_port=self.customer.port,
                                           bastion_port=self.bastion.port,
                                           user=getpass.getuser(), identity=identity,
                                           known_hosts=known))

    def target(self, path: str, port_flag: str = "-p") -> list[str]:
        """The host arguments of one of the three OpenSSH paths (sftp spells
        the port flag -P)."""
        return {DIRECT: ["customer"], JUMP: ["-J", "bastion", "customer"],
                REVERSE: ["-J", "bastion", port_flag, str(self.reverse_port),
                          "-o", "HostKeyAlias=customer", "127.0.0.1"]}[path]

    def argv(self, path: str, command: str | None, tty: bool = True) -> list[str]:
        """`ssh` for one of the three OpenSSH paths, with a PTY unless `tty`
        is False (an exec channel); `command` None opens the login shell."""
        base = ["ssh", "-F", str(self.config), "-tt" if tty else "-T"]
        return base + self.target(path) + ([command] if command is not None else [])

    async def open(self, path: str, command: str | None, tty: bool = True) -> SshProcess:
        proc = await spawn(self.argv(path, command, tty))
        self.started.append(proc)
        return proc

    async def echo(self, path: str) -> SshProcess:
        """`ssh` to a PTY running `stty raw -echo; cat`, READY seen."""
        proc = await self.open(path, ECHO_COMMAND)
        await proc.until_marked()
        proc.tap.received = proc.tap.after_mark
        return proc

    async def close(self, proc: SshProcess) -> None:
        await proc.stop()
        if proc in self.started:
            self.started.remove(proc)

    async def stop(self) -> None:
        for proc in [*self.started, *([self.tunnel] if self.tunnel else [])]:
            with contextlib.suppress(Exception):
                await proc.stop()
        self.started.clear()
        for server in (self.bastion, self.customer):
            if server is not None:
                server.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def cpu_meters(self, path: str, proc: SshProcess) -> dict[str, Callable[[], Snapshot]]:
        """What each process of `path` has spent so far, by role."""
        assert self.customer is not None and self.bastion is not None
        customer, bastion, tunnel = self.customer, self.bastion, self.tunnel
        meters: dict[str, Callable[[], Snapshot]] = {
            CLIENT: lambda: cpu_of([proc.pid, *descendants(proc.pid)]),
            CUSTOMER: customer.cpu,
        }
        if path != DIRECT:
            meters[RELAY] = bastion.cpu
        if path == REVERSE and tunnel is not None:
            meters[CUSTOMER] = lambda: {**customer.cpu(), **cpu_of([tunnel.pid])}
        return meters


# -- the measurements ---------------------------------------------------------------


@dataclass
class Results:
    """Per path: per repetition p50/p99 (ms), bulk MB/s and relay s/GiB,
    connect ms; CPU seconds by role summed over every keystroke."""

    p50: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    p99: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    cpu: dict[str, dict[str, float]] = field(default_factory=lambda: {p: {} for p in PATHS})
    strokes: int = 0
    harness_on_openssh: float = 0.0  # the measuring loop's own CPU, on the OpenSSH paths
    openssh_strokes: int = 0
    rate: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    relay_gib: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    connect: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PATHS})
    console_startup: list[float] = field(default_factory=list)


async def measure_keystrokes(ssh: OpenSsh, dep: Deployment, agents: Agents, mode: Mode,
                      res: Results) -> None:
    assert dep.broker is not None
    broker, agent = dep.broker.pid, agents.proc.pid
    procs: list[SshProcess] = []
    try:
        for path in (DIRECT, JUMP, REVERSE):
            procs.append(await ssh.echo(path))
        async with relayed(dep, agents, 0) as conn:
            chan, tap = await measure.make_echo(conn)
            lanes: list[tuple[str, measure.Writer, measure.Tap,
                              dict[str, Callable[[], Snapshot]]]]
            lanes = [(path, proc, proc.tap, ssh.cpu_meters(path, proc))
                     for path, proc in zip((DIRECT, JUMP, REVERSE), procs, strict=True)]
            lanes.append((CONSENTRY, chan, tap, {
                RELAY: lambda: cpu_of([broker]),
                CLIENT: lambda: {0: time.process_time()},  # finer than /proc's ticks
                CUSTOMER: lambda: cpu_of([agent])}))
            block = min(mode.keystrokes, KEYSTROKE_BLOCK)
            blocks = max(1, mode.keystrokes // block)
            for _ in range(mode.reps):
                samples: dict[str, list[float]] = {path: [] for path in PATHS}
                for _ in range(blocks):
                    for path, writer, lane_tap, meters in lanes:
                        before = {role: meter() for role, meter in meters.items()}
                        harness = time.process_time()
                        samples[path] += await measure.keystrokes(writer, lane_tap, block,
                                                                  THINK_SECONDS)
                        if path != CONSENTRY:
                            res.harness_on_openssh += time.process_time() - harness
                            res.openssh_strokes += block
                        used = res.cpu[path]
                        for role, meter in meters.items():
                            used[role] = used.get(role, 0.0) + spent(before[role], meter())
                for path, taken in samples.items():
                    res.p50[path].append(percentile(taken, 50) * 1000)
                    res.p99[path].append(percentile(taken, 99) * 1000)
            res.strokes = mode.reps * blocks * block
    finally:
        for proc in procs:
            await ssh.close(proc)


async def measure_pty_bulk(ssh: OpenSsh, dep: Deployment, agents: Agents, mode: Mode,
                res: Results) -> None:
    """One fresh connection per repetition and path (the agent allows one
    shell per consented session); relay CPU from the first byte's command."""
    assert dep.broker is not None
    broker, size = dep.broker.pid, mode.bulk_bytes
    command = f"stty raw -echo; printf R''EADY; head -c {size} /dev/zero"
    for _ in range(mode.reps):
        for path in (DIRECT, JUMP, REVERSE):
            await openssh_bulk(ssh, path, command, size, res.rate, res.relay_gib)
        async with relayed(dep, agents, 0) as conn:
            window = _CpuWindow(broker)
            seconds = await measure.bulk(conn, size, on_ready=window.open)
            res.rate[CONSENTRY].append(size / seconds / 1e6)
            res.relay_gib[CONSENTRY].append(window.spent() / (size / GIB))


async def openssh_bulk(ssh: OpenSsh, path: str, command: str, size: int,
                       rate: dict[str, list[float]], relay_gib: dict[str, list[float]],
                       tty: bool = True) -> None:
    """`command` prints READY and then `size` bytes: MB/s from the mark to
    the last byte, and the bastion's CPU per GiB meanwhile (not for direct)."""
    assert ssh.bastion is not None
    proc = await ssh.open(path, command, tty)
    try:
        await proc.until_marked()
        relay_before = ssh.bastion.cpu()
        start = time.perf_counter()
        await proc.until_after_mark(size, timeout=600)
        rate[path].append(size / (time.perf_counter() - start) / 1e6)
        if path != DIRECT:
            relay_gib[path].append(spent(relay_before, ssh.bastion.cpu()) / (size / GIB))
    finally:
        await ssh.close(proc)


class _CpuWindow:
    """A process's CPU from `open` (a callback's moment) to `spent`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.began: float | None = None

    def open(self) -> None:
        self.began = cpu_seconds(self.pid)

    def spent(self) -> float:
        if self.began is None:
            raise RuntimeError("the bulk transfer never started")
        return cpu_seconds(self.pid) - self.began


async def measure_connect(ssh: OpenSsh, dep: Deployment, agents: Agents, mode: Mode,
                          res: Results) -> None:
    """From exec of `ssh` to the first byte of the login shell's prompt; for
    consentry from exec of a real `consentry-console join CODE` in a PTY to
    the remote shell's prompt on its screen, consent answered by the
    harness's agent at once; and, apart, the console's start-up to its first
    byte on the network (`bench/startup.py`), to show where the time goes."""
    console = startup.console_argv(dep)

    async def openssh_ms(path: str) -> float:
        start = time.perf_counter()
        proc = await ssh.open(path, PROMPT_COMMAND)
        try:
            await proc.until(lambda: proc.tap.received > 0)
            return (time.perf_counter() - start) * 1000
        finally:
            await ssh.close(proc)

    for warm in (True, *([False] * mode.reps)):  # one untimed round warms caches
        for path in (DIRECT, JUMP, REVERSE):
            taken = await openssh_ms(path)
            if not warm:
                res.connect[path].append(taken)
        code = await agents.code(0)
        joined = await asyncio.to_thread(startup.join_to_prompt_ms, startup.join_argv(dep, code))
        started = await asyncio.to_thread(startup.first_byte_ms, console)
        if not warm:
            res.connect[CONSENTRY].append(joined)
            res.console_startup.append(started)


# -- rows -----------------------------------------------------------------------------

BASE = "OpenSSH bastion -J (same run)"


def ms_cell(values: list[float]) -> str:
    return f"{Summary.of(values).median:.2f} ms"


def table_row(label: str, cells: dict[str, str], target: str, result: str, met: bool | None,
         detail: dict[str, object], note: str = "") -> Row:
    """A row of the main table that also carries its cells of the side-by-side
    table (bench/report.py)."""
    return Row(f"vs OpenSSH bastion: {label}", BASE, target, result, met,
               {"label": label, "cells": cells, **detail}, note=note)


def rows(res: Results, mode: Mode) -> list[Row]:
    out = []
    for label, values in (("keystroke p50 (2 ms think time)", res.p50),
                          ("keystroke p99 (2 ms think time)", res.p99)):
        ratio = ratios(values[CONSENTRY], values[JUMP])
        out.append(table_row(label, {p: ms_cell(values[p]) for p in PATHS}, "<= 1x bastion -J",
                        f"{ratio.fmt('x')}; consentry {Summary.of(values[CONSENTRY]).fmt(' ms', 3)}"
                        f", bastion -J {Summary.of(values[JUMP]).fmt(' ms', 3)}",
                        ratio.median <= 1.0,
                        {"ratio": ratio.__dict__, "ms": values}))
    per_stroke = {p: {role: used / res.strokes * 1e6 for role, used in res.cpu[p].items()}
                  for p in PATHS}
    harness_us = res.harness_on_openssh / max(1, res.openssh_strokes) * 1e6
    whose = {RELAY: ("broker", "the bastion's sshd processes"),
             CLIENT: ("the harness's process (console client + measuring loop)",
                      "ssh, with -J's `ssh -W`"),
             CUSTOMER: ("agent (not its shell)",
                        "the customer sshd's processes (not the shell), + the tunnel's ssh "
                        "for -R")}
    for role in (RELAY, CLIENT, CUSTOMER):
        ours, theirs = per_stroke[CONSENTRY][role], per_stroke[JUMP][role]
        # A smoke run's few keystrokes can cost a process less than a tick.
        ratio_value = ours / theirs if theirs > 0 else None
        note = (f"consentry: {whose[role][0]}; OpenSSH: {whose[role][1]}; from /proc, in "
                f"{res.strokes} round trips per path")
        if role == CLIENT:
            note += (f"; driving an OpenSSH path (the think-time timer, the pipe's write "
                     f"and read, the tap) costs the harness {harness_us:.0f} us per round "
                     "trip, and consentry's figure includes its own part of that loop (the "
                     "timer and the tap)")
        shown = f"{ratio_value:.2f}x" if ratio_value is not None else "no ratio (under a tick)"
        out.append(table_row(
            f"CPU per keystroke round trip, {role}",
            {p: (f"{per_stroke[p][role]:.0f} us" if role in per_stroke[p] else "-")
             for p in PATHS},
            "<= 1x bastion -J",
            f"{shown}; consentry {ours:.0f} us, bastion -J {theirs:.0f} us",
            ratio_value <= 1.0 if ratio_value is not None else None,
            {"us": per_stroke, "harness_loop_us": harness_us}, note))
    mib = mode.bulk_bytes >> 20
    rate = ratios(res.rate[CONSENTRY], res.rate[JUMP])
    out.append(table_row(f"bulk {mib} MiB through the PTY",
                    {p: f"{Summary.of(res.rate[p]).median:.1f} MB/s" for p in PATHS},
                    "- (the target is on SFTP, below)",
                    f"{rate.fmt('x')}; consentry {Summary.of(res.rate[CONSENTRY]).fmt(' MB/s', 1)}"
                    f", bastion -J {Summary.of(res.rate[JUMP]).fmt(' MB/s', 1)}",
                    None, {"ratio": rate.__dict__, "MBps": res.rate}))
    # A small (smoke) transfer can cost the bastion less than /proc's tick:
    # no repetition then gives a ratio.
    measured = any(x > 0 for x in res.relay_gib[JUMP])
    gib = ratios(res.relay_gib[CONSENTRY], res.relay_gib[JUMP]) if measured else None
    out.append(table_row("relay CPU per GiB (PTY traffic)",
                    {p: (f"{Summary.of(res.relay_gib[p]).median:.1f} s"
                         if res.relay_gib[p] else "-") for p in PATHS},
                    "- (the target is on SFTP, below)",
                    f"{gib.fmt('x') if gib else 'no ratio (under a CPU tick)'}; broker "
                    f"{Summary.of(res.relay_gib[CONSENTRY]).fmt(' s/GiB')}, bastion sshd "
                    f"{Summary.of(res.relay_gib[JUMP]).fmt(' s/GiB')}",
                    None, {"ratio": gib.__dict__ if gib else None,
                           "s_per_gib": res.relay_gib}))
    connect = ratios(res.connect[CONSENTRY], res.connect[JUMP])
    started = Summary.of(res.console_startup).median
    cells = {p: f"{Summary.of(res.connect[p]).median:.0f} ms" for p in PATHS}
    cells[CONSENTRY] += f" (of which start-up to the first byte {started:.0f})"
    out.append(table_row("connect to shell prompt", cells, "<= 1x bastion -J",
                         f"{connect.fmt('x')}; consentry "
                         f"{Summary.of(res.connect[CONSENTRY]).fmt(' ms', 0)}, bastion -J "
                         f"{Summary.of(res.connect[JUMP]).fmt(' ms', 0)}",
                         connect.median <= 1.0,
                         {"ratio": connect.__dict__, "ms": res.connect,
                          "console_startup_ms": res.console_startup},
                         note="OpenSSH: exec of `ssh -tt HOST 'exec /bin/sh -i'` to the first "
                              "byte of the prompt (the agent's shell here is /bin/sh too). "
                              "consentry: exec of `consentry-console join CODE` in a PTY of its "
                              "own to the remote prompt on its screen, after its 'connected' "
                              "line: start-up, login, pairing, the customer's consent (given "
                              "at once by the harness's agent) and the SSH connection; the "
                              "start-up alone is timed apart (bench/startup.py). OpenSSH keeps "
                              "its default key exchange (sntrup761x25519 in 9.2), which costs "
                              "about 130 ms a connection on loopback over curve25519-sha256 (by "
                              "hand, `ssh customer true`)"))
    return out
