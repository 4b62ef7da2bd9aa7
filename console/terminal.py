"""The plain-terminal join: the remote shell on your own terminal.

Raw mode while the session runs; ``Ctrl-]`` then ``q`` leaves, ``Ctrl-]``
then ``c`` asks the customer for control (``Ctrl-]`` twice sends one
``Ctrl-]``). In view-only mode keystrokes are not sent and a one-line notice
says so. Window resizes are sent to the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import termios
import time
import tty

import asyncssh

from broker.wire.messages import Message
from broker.wire.text import printable
from console.client import JoinedSession, Progress
from console.errors import ConsoleError

CTRL_RBRACKET = 0x1D
_ENDED_GRACE_STEPS = 60  # x 50 ms: how long to wait for the broker to say why

# What the engineer is told about the answer to Ctrl-] c.
CONTROL_RESULT_TEXT = {
    "granted": "the customer granted control: you can type now",
    "denied": "the customer declined control: you can still watch",
    "timeout": "the customer did not answer the request for control: you can still watch",
    "unchanged": "nothing to ask: you already have control, or the customer is still "
                 "deciding on your request",
}


def status(text: str) -> None:
    """A status line for the engineer, kept apart from the remote output."""
    sys.stderr.write(f"consentry: {text}\r\n")
    sys.stderr.flush()


class ProgressPrinter:
    """Prints join progress; counts down while the customer decides."""

    def __init__(self) -> None:
        self._countdown: asyncio.Task[None] | None = None

    def __call__(self, progress: Progress) -> None:
        self.stop()
        status(printable(progress.text, 300))
        if progress.deadline is not None and sys.stderr.isatty():
            self._countdown = asyncio.get_running_loop().create_task(
                self._count(progress.deadline))

    async def _count(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            sys.stderr.write(f"\rconsentry: waiting for the customer to approve ({left:.0f} s) ")
            sys.stderr.flush()
            await asyncio.sleep(1)

    def stop(self) -> None:
        if self._countdown is not None:
            self._countdown.cancel()
            self._countdown = None
            sys.stderr.write("\r\x1b[K")


class _Output(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    def __init__(self, done: asyncio.Event) -> None:
        self._done = done

    def data_received(self, data: bytes, datatype: int | None) -> None:
        os.write(sys.stdout.fileno(), data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()


def _size() -> tuple[int, int]:
    try:
        size = os.get_terminal_size(sys.stdout.fileno())
        return size.columns, size.lines
    except OSError:
        return 80, 24


async def run_terminal_session(joined: JoinedSession) -> str:
    """Run the shell until someone ends it; return why it ended, in words.
    Raises `BrokerError` (`LinkLost`) when the broker failed or vanished."""
    done = asyncio.Event()
    notices: list[str] = []

    async def on_control(msg: Message) -> None:
        if msg.type == "rights":
            notices.append("the customer changed your rights to: "
                           + ("view and control" if "control" in msg["granted"] else "view only"))
            status(notices[-1])
        elif msg.type == "control_result":
            status(CONTROL_RESULT_TEXT.get(msg["decision"], printable(msg["decision"], 40)))
        elif msg.type in ("ended", "error"):
            done.set()

    joined.on_control.append(on_control)
    conn, pump = await joined.open_ssh()
    cols, rows = _size()
    term = os.environ.get("TERM", "xterm-256color")
    chan, _session = await conn.create_session(
        lambda: _Output(done), term_type=term, term_size=(cols, rows), encoding=None,
    )
    loop = asyncio.get_running_loop()
    stdin = sys.stdin.fileno()
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    escape = False
    leaving = False  # the engineer chose to leave (Ctrl-] q)
    warned_view_only = False
    requests: set[asyncio.Task[None]] = set()

    async def ask_for_control() -> None:
        try:
            await joined.request_control()
        except ConsoleError as exc:
            status(str(exc))
            return
        status("asking the customer for control...")

    def on_key() -> None:
        nonlocal escape, warned_view_only, leaving
        data = os.read(stdin, 4096)
        if not data:
            loop.remove_reader(stdin)
            return
        out = bytearray()
        for byte in data:
            if escape:
                escape = False
                if byte in (ord("q"), ord("Q")):
                    leaving = True
                    done.set()
                    return
                if byte in (ord("c"), ord("C")):
                    task = loop.create_task(ask_for_control())
                    requests.add(task)
                    task.add_done_callback(requests.discard)
                    continue
                if byte == CTRL_RBRACKET:
                    out.append(byte)
                continue
            if byte == CTRL_RBRACKET:
                escape = True
                continue
            out.append(byte)
        if not out:
            return
        if joined.control:
            chan.write(bytes(out))
        elif not warned_view_only:
            warned_view_only = True
            status("view only: your keystrokes are not sent "
                   "(Ctrl-] then c asks for control, Ctrl-] then q leaves)")

    def on_resize() -> None:
        chan.change_terminal_size(*_size())

    try:
        if saved is not None:
            tty.setraw(stdin)
        loop.add_reader(stdin, on_key)
        loop.add_signal_handler(signal.SIGWINCH, on_resize)
        await asyncio.wait(
            [asyncio.ensure_future(done.wait()), pump], return_when=asyncio.FIRST_COMPLETED)
    finally:
        loop.remove_reader(stdin)
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(signal.SIGWINCH)
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        conn.close()
        if joined.ended is None and not leaving:
            # The shell's connection closed under us: the broker's `ended`,
            # with the reason, normally follows within moments.
            for _ in range(_ENDED_GRACE_STEPS):
                if joined.ended is not None or pump.done():
                    break
                await asyncio.sleep(0.05)
        lost = joined.ended is None and not leaving and pump.done()
        if joined.ended is None and not lost:
            await joined.leave()
            leaving = True  # the link is up and the shell closed: we end it
        pump.cancel()
    return joined.outcome(left=leaving)
