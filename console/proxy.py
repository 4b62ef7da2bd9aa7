"""`consentry-console proxy`: a consented session as OpenSSH's ProxyCommand.

The join is the same as `consentry-console join` (login, pairing, the
customer's consent); then, instead of an SSH client of our own, the relay's
raw SSH byte stream is carried on stdin/stdout, so the engineer's own `ssh`,
`scp`, `sftp` or `rsync -e ssh` speaks to the agent's SSH server end to end.
The agent enforces the rights whatever that client sends (view-only input is
dropped, exec and forwarding are refused, SFTP needs `files`). Every human
message goes to stderr: stdout belongs to ssh.

Flow control both ways: when the broker link's buffer fills, stdin is not
read (ssh waits); when ssh does not take what the agent sends, the link is
not read (the broker holds the rest, bounded by SSH's windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import TYPE_CHECKING

from broker.client.relay import LinkEvent
from broker.wire.text import printable
from console.errors import ConsoleError, UsageError
from console.format import granted_text, link_text
from console.status_line import status

if TYPE_CHECKING:
    from console.client import JoinedSession

# What waits for ssh on stdout before the link stops being read.
STDOUT_HIGH_WATER = 1024 * 1024


class _ToSSH(asyncio.Protocol):
    """The relay's end of the SSH connection: the agent's bytes go to stdout,
    and the relay's transport is where stdin's bytes go."""

    def __init__(self, out: asyncio.WriteTransport, done: asyncio.Event) -> None:
        self._out = out
        self._done = done
        self.relay: asyncio.Transport | None = None
        self.stdin: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.relay = transport

    def data_received(self, data: bytes) -> None:
        if not self._out.is_closing():
            self._out.write(data)

    # The link's buffer to the broker is full: stop reading ssh's bytes.
    def pause_writing(self) -> None:
        if self.stdin is not None:
            self.stdin.pause_reading()

    def resume_writing(self) -> None:
        if self.stdin is not None:
            self.stdin.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()


class _FromSSH(asyncio.Protocol):
    """stdin: ssh's bytes, into the relay."""

    def __init__(self, to_ssh: _ToSSH, done: asyncio.Event) -> None:
        self._to_ssh = to_ssh
        self._done = done
        self.closed_by_ssh = False

    def data_received(self, data: bytes) -> None:
        relay = self._to_ssh.relay
        if relay is not None:
            relay.write(data)

    def eof_received(self) -> bool:
        self.closed_by_ssh = True
        self._done.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed_by_ssh = True
        self._done.set()


class _Stdout(asyncio.Protocol):
    """stdout's flow control: ssh not keeping up pauses the broker link."""

    def __init__(self, joined: JoinedSession, done: asyncio.Event) -> None:
        self._joined = joined
        self._done = done

    def _link_reading(self, on: bool) -> None:
        transport = self._joined.link.ws.transport
        if transport is not None and not transport.is_closing():
            with contextlib.suppress(RuntimeError):
                (transport.resume_reading if on else transport.pause_reading)()

    def pause_writing(self) -> None:
        self._link_reading(False)

    def resume_writing(self) -> None:
        self._link_reading(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()  # ssh went away


def check_stdio() -> None:
    """A ProxyCommand's stdin and stdout are ssh's pipes, never a terminal:
    SSH bytes on a terminal would be garbage to the person reading it."""
    if sys.stdout.isatty() or sys.stdin.isatty():
        raise UsageError("proxy speaks SSH on stdin/stdout: run it as ssh's ProxyCommand "
                         "(see the README), not on a terminal; `consentry-console join` "
                         "is the command for a shell of your own")


async def carry(joined: JoinedSession) -> str | None:
    """Carry the session's SSH bytes between ssh and the relay until either
    side ends; the outcome in words when the other side ended it, None when
    ssh did (its user has their answer from ssh itself)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    out, _ = await loop.connect_write_pipe(lambda: _Stdout(joined, done), sys.stdout.buffer)
    out.set_write_buffer_limits(high=STDOUT_HIGH_WATER)
    to_ssh = _ToSSH(out, done)
    relay = joined.relay()
    from_ssh = _FromSSH(to_ssh, done)
    for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        # ssh sends SIGHUP to its ProxyCommand as it exits: the engineer left.
        loop.add_signal_handler(signum, from_ssh.eof_received)

    async def on_control(msg: object) -> None:
        if getattr(msg, "type", "") in ("rights", "control_result"):
            status(f"your rights now: {granted_text(joined.granted)}.")

    def on_link(event: LinkEvent) -> None:
        text = link_text(event)
        if text is not None:
            status(text)  # stderr: ssh's stdin and stdout carry SSH

    joined.on_control.append(on_control)
    joined.on_link.append(on_link)
    try:
        await relay.create_connection(lambda: to_ssh, "consentry-agent", 0)
        stdin, _ = await loop.connect_read_pipe(lambda: from_ssh, sys.stdin.buffer)
        to_ssh.stdin = stdin
        await done.wait()
        left = from_ssh.closed_by_ssh and joined.ended is None
        stdin.close()
        out.close()
        relay.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay.task
        if left:
            return None
        try:
            return joined.outcome(left=False)
        except ConsoleError as exc:
            return printable(str(exc), 300)
    finally:
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await joined.leave()
