"""A shell in a pseudo-terminal, driven from asyncio.

The shell is a session leader with the PTY as its controlling terminal, so
job control and full-screen programs work. Output is delivered through a
callback; reading pauses while the consumer is flow-controlled.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import pty
import signal
import struct
import termios
from collections.abc import Callable, Mapping

READ_CHUNK = 64 * 1024
# Keystrokes held for a shell that is not reading (a big paste into a busy
# program); beyond this they are dropped rather than grow without bound.
MAX_PENDING_INPUT = 256 * 1024
# Flow control for engineer input: past the high-water mark the SSH channel
# stops reading (its window closes, so the engineer's console waits), and it
# reads again once the shell has taken the queue down to the low-water mark.
# Far below MAX_PENDING_INPUT, so a paste of any size is never cut.
INPUT_HIGH_WATER = 64 * 1024
INPUT_LOW_WATER = 16 * 1024
# A read shorter than this emptied the terminal's buffer.
_SMALL_READ = 1024
# After the shell exits, output still arriving keeps the session open; this
# long with nothing read (while not flow-controlled) means it is over.
_EXIT_DRAIN_QUIET = 0.5


def _controlling_tty(slave: int) -> Callable[[], None]:
    """Child setup: lead a new session and take the PTY as its terminal.

    Uses the PTY's own descriptor and calls setsid itself, so it does not
    depend on whether the event loop wires stdin or starts the session
    before or after this runs (the stdlib loop and uvloop differ).
    """

    def setup() -> None:  # pragma: no cover - runs in the child
        if os.getsid(0) != os.getpid():
            os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    return setup


def set_winsize(fd: int, cols: int, rows: int) -> None:
    cols, rows = max(1, min(cols, 1000)), max(1, min(rows, 1000))
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyShell:
    def __init__(
        self,
        argv: list[str],
        *,
        cols: int,
        rows: int,
        env: Mapping[str, str],
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        on_input_room: Callable[[], None] = lambda: None,
    ) -> None:
        self._argv = argv
        self._cols, self._rows = cols, rows
        self._env = dict(env)
        self._on_output = on_output
        self._on_exit = on_exit
        self._on_input_room = on_input_room
        self._master = -1
        self._proc: asyncio.subprocess.Process | None = None
        self._reading = False
        self._writing = False
        self._pending = bytearray()
        self._closed = False
        self._eof = False
        self._read_count = 0

    async def start(self) -> None:
        master, slave = pty.openpty()
        set_winsize(master, self._cols, self._rows)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self._argv, stdin=slave, stdout=slave, stderr=slave,
                env=self._env, cwd=self._env.get("HOME") or None,
                preexec_fn=_controlling_tty(slave),
            )
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        self._master = master
        set_winsize(master, self._cols, self._rows)  # resized while spawning?
        self.resume_reading()
        self._flush()  # typeahead that arrived while the shell was starting
        asyncio.get_running_loop().create_task(self._wait_exit())

    async def _wait_exit(self) -> None:
        assert self._proc is not None
        status = await self._proc.wait()
        # Everything the shell wrote must reach the engineer before the exit
        # does, even if flow control has paused us: read on to end-of-file.
        # A background job may keep the terminal open after the shell is gone,
        # so stop waiting once nothing has come for a while with reading on.
        quiet_since = asyncio.get_running_loop().time()
        last_seen = self._read_count
        while not self._eof and self._master >= 0:
            await asyncio.sleep(0.05)
            now = asyncio.get_running_loop().time()
            if self._read_count != last_seen or not self._reading:
                last_seen, quiet_since = self._read_count, now
            elif now - quiet_since > _EXIT_DRAIN_QUIET:
                break
        self.pause_reading()
        self._on_exit(status)

    def _readable(self) -> None:
        # The terminal hands over at most ~4 KiB per read, yet a busy program
        # usually has more waiting: after a large read, read on until it runs
        # dry (or READ_CHUNK) so bulk output leaves as one SSH write instead
        # of sixteen. A small read (an echoed keystroke) drained it: no second
        # read, as system calls are what an interactive round trip pays for.
        chunks: list[bytes] = []
        total = 0
        eof = False
        while total < READ_CHUNK:
            try:
                data = os.read(self._master, READ_CHUNK - total)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EINTR):
                    break
                data = b""  # EIO: the shell side closed
            if not data:
                eof = True
                break
            chunks.append(data)
            total += len(data)
            if len(data) < _SMALL_READ:
                break
        if chunks:
            self._read_count += 1
            self._on_output(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof:
            self._eof = True
            self.pause_reading()

    def pause_reading(self) -> None:
        if self._reading and self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            self._reading = False

    def resume_reading(self) -> None:
        if not self._reading and self._master >= 0:
            asyncio.get_running_loop().add_reader(self._master, self._readable)
            self._reading = True

    def write(self, data: bytes) -> None:
        """Queue input for the shell; never blocks the event loop. Keys typed
        before the shell has started are kept for it (typeahead); input beyond
        `MAX_PENDING_INPUT` while the shell is not reading is dropped."""
        if self._closed:
            return
        room = MAX_PENDING_INPUT - len(self._pending)
        self._pending += data[: max(0, room)]
        if self._master >= 0:
            self._flush()

    @property
    def input_pending(self) -> int:
        """Bytes of input queued for a shell that has not read them yet."""
        return len(self._pending)

    def _flush(self) -> None:
        was_full = len(self._pending) > INPUT_LOW_WATER
        while self._pending and self._master >= 0:
            try:
                sent = os.write(self._master, self._pending)
            except BlockingIOError:
                break
            except OSError:
                self._pending.clear()
                break
            del self._pending[:sent]
        # Only when the writer must be (un)registered: on Python 3.11,
        # asyncio.get_running_loop() costs a getpid() system call.
        if self._pending and not self._writing:
            asyncio.get_running_loop().add_writer(self._master, self._flush)
            self._writing = True
        elif not self._pending and self._writing:
            asyncio.get_running_loop().remove_writer(self._master)
            self._writing = False
        if was_full and len(self._pending) <= INPUT_LOW_WATER:
            self._on_input_room()

    def resize(self, cols: int, rows: int) -> None:
        # Kept, so a resize while the shell is still being spawned is the
        # size `start` gives it (the engineer's window settles meanwhile).
        self._cols, self._rows = cols, rows
        if self._master >= 0:
            set_winsize(self._master, cols, rows)
            if self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGWINCH)

    def close(self) -> None:
        """Hang up the shell (SIGHUP to its process group) and free the PTY."""
        self._closed = True
        self._pending.clear()
        self.pause_reading()
        if self._writing:
            asyncio.get_running_loop().remove_writer(self._master)
            self._writing = False
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGHUP)
        if self._master >= 0:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = -1
