"""The console's start-up: from `exec` to its first byte on the network.

Issue 15's target is 100 ms. `consentry-console join` runs as a fresh
process against a listening socket that takes the first byte (its TLS
ClientHello) and closes; the same clock times the interpreter itself
(`python -c` that connects and sends one byte) in the same run, interleaved,
as the floor no Python console can go below. `python -X importtime` on the
console shows where the rest goes (README, "Performance").
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time

from bench.cases import Mode, Row
from bench.fixture import BIN, Deployment
from bench.stats import percentile

TARGET_MS = 100.0
_FLOOR = ("import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
          "s.send(b'x'); s.close()")


def first_byte_ms(argv: list[str]) -> float:
    """Milliseconds from starting `argv` (given the port as "{port}") to the
    first byte it sends to a socket on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(30)
        port = server.getsockname()[1]
        began = time.perf_counter()
        proc = subprocess.Popen([arg.replace("{port}", str(port)) for arg in argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                conn.recv(1)
                elapsed = (time.perf_counter() - began) * 1000
        finally:
            proc.kill()
            proc.wait()
    return elapsed


# The console's own line once the shell is open, then the remote /bin/sh's
# prompt ("# " for root, "$ " otherwise) as it lands on the engineer's screen.
_CONNECTED = b"connected to "
_PROMPT = re.compile(rb"[#$] ")


def join_to_prompt_ms(argv: list[str], timeout: float = 60.0) -> float:
    """Milliseconds from starting a real `consentry-console join` in a PTY of
    its own (80x24) to the remote shell's prompt on that screen; the
    customer's consent is the harness's agent's (at once)."""
    master, slave = pty.openpty()
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    seen = b""
    try:
        deadline = began + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or proc.poll() is not None:
                raise RuntimeError("consentry-console join showed no prompt: "
                                   f"{seen[-300:].decode(errors='replace')!r}")
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:  # the console exited: its PTY is gone
                    continue
                at = seen.find(_CONNECTED)
                line_end = seen.find(b"\n", at) if at >= 0 else -1
                if line_end >= 0 and _PROMPT.search(seen, line_end):
                    return (time.perf_counter() - began) * 1000
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)


def join_argv(dep: Deployment, code: str) -> list[str]:
    """`consentry-console join CODE` against the harness's broker."""
    return [str(BIN / "consentry-console"), "join", code, "--broker", dep.url,
            "--ca", str(dep.pki.ca_cert), "--identity", str(dep.key_path), "--user", dep.user]


def console_argv(dep: Deployment) -> list[str]:
    """A plain `consentry-console join` against the port `first_byte_ms` gives."""
    return [str(BIN / "consentry-console"), "join", "4821-193-775",
            "--broker", "wss://127.0.0.1:{port}", "--ca", str(dep.pki.ca_cert),
            "--identity", str(dep.key_path), "--user", dep.user]


def _measure(dep: Deployment, runs: int) -> tuple[list[float], list[float]]:
    console = console_argv(dep)
    floor = [sys.executable, "-c", _FLOOR, "{port}"]
    first_byte_ms(console)  # warm the page cache and .pyc files once
    consoles: list[float] = []
    floors: list[float] = []
    for _ in range(runs):  # interleaved: a busy moment slows both alike
        consoles.append(first_byte_ms(console))
        floors.append(first_byte_ms(floor))
    return consoles, floors


async def console_startup(dep: Deployment, mode: Mode) -> list[Row]:
    runs = 3 if mode.smoke else 15
    consoles, floors = await asyncio.to_thread(_measure, dep, runs)
    p50 = percentile(consoles, 50)
    floor = percentile(floors, 50)
    return [Row("console start-up to its first byte on the network (plain join)",
                f"python itself: p50 {floor:.0f} ms", f"p50 <= {TARGET_MS:.0f} ms",
                f"p50 {p50:.0f} ms, p99 {percentile(consoles, 99):.0f} ms; "
                f"{p50 - floor:.0f} ms above the interpreter's own start-up (n={runs})",
                p50 <= TARGET_MS, {"console_ms": consoles, "python_ms": floors},
                note="what a join imports before connecting (asyncio, ssl, websockets, "
                     "uvloop; asyncssh and the pairing load on a worker thread meanwhile): "
                     "`python -X importtime -c 'import console.__main__'`")]
