"""A person's terminal as non-blocking, flow-controlled byte streams: the
engineer's in the plain console, the customer's in the agent.

Why this exists: the event loop (uvloop) makes a descriptor non-blocking
when it watches it for input, and stdin, stdout and stderr of a terminal
are one open file description, so they all become non-blocking together. A
plain `os.write` to stdout then fails with EAGAIN as soon as the terminal
falls behind (a large paste echoed back, a build log, a slow ssh or serial
link, a terminal window nobody scrolls); a blocking one, or a retry in a
loop, would freeze everything else the program does (the relay, keepalives,
the customer's kill switch). So output is buffered here, bounded: past
`OUTPUT_HIGH_WATER` the producer is told to pause (the console's SSH channel
stops reading, so the window closes and the agent stops sending; the agent
stops reading the shell's PTY, so the engineer's side waits in turn), and
resumed once the terminal has taken the buffer down to `OUTPUT_LOW_WATER`.

Input is read in large chunks while the consumer has room; the consumer
pauses it (the SSH channel's send buffer is full) and resumes it, so a
multi-megabyte paste waits in the terminal's own buffer rather than in
memory here.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from collections.abc import Callable

# Output waiting for the terminal: enough for a screenful of a fast program
# many times over; beyond this the remote side is paused, not buffered.
OUTPUT_HIGH_WATER = 256 * 1024
OUTPUT_LOW_WATER = 64 * 1024
# One read of the keyboard: a paste arrives in pieces of this size.
INPUT_CHUNK = 64 * 1024
# The final flush when the session ends may wait this long for a terminal
# that has stopped reading (at most OUTPUT_HIGH_WATER bytes are left).
FINAL_FLUSH_SECONDS = 5.0

_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)


class TerminalFailed(OSError):
    """The terminal could not be read or written (it hung up, or the output
    goes to a pipe nobody reads any more)."""


def set_nonblocking(*fds: int) -> Callable[[], None]:
    """Make `fds` non-blocking; the function returned puts their flags back.
    Why put back: the terminal is shared with the shell that started us (and
    uvloop never undoes it), and a shell left with a non-blocking terminal
    sees its own reads fail."""
    saved: dict[int, int] = {}
    for fd in fds:
        if fd not in saved:
            saved[fd] = fcntl.fcntl(fd, fcntl.F_GETFL)
            os.set_blocking(fd, False)

    def restore() -> None:
        for fd, flags in saved.items():
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    return restore


class TerminalOutput:
    """Writes to `fd` without ever blocking the loop; see the module doc.

    `on_pause` / `on_resume` tell the producer to stop and go on;
    `on_error` is called once with a `TerminalFailed` when a write fails for
    good, after which everything written is discarded.
    """

    def __init__(self, fd: int, *, on_pause: Callable[[], None],
                 on_resume: Callable[[], None],
                 on_error: Callable[[TerminalFailed], None]) -> None:
        self._fd = fd
        self._on_pause = on_pause
        self._on_resume = on_resume
        self._on_error = on_error
        self._buffer = bytearray()
        self._watching = False
        self._paused = False
        self.error: TerminalFailed | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def write(self, data: bytes) -> None:
        if self.error is not None or not data:
            return
        self._buffer += data
        if not self._watching:
            self._flush()
        if not self._paused and len(self._buffer) > OUTPUT_HIGH_WATER:
            self._paused = True
            self._on_pause()

    def _flush(self) -> None:
        while self._buffer:
            try:
                sent = os.write(self._fd, self._buffer)
            except OSError as exc:
                if exc.errno in _RETRY:
                    break
                self._fail(exc)
                return
            del self._buffer[:sent]
        self._watch(bool(self._buffer))
        if self._paused and len(self._buffer) <= OUTPUT_LOW_WATER:
            self._paused = False
            self._on_resume()

    def _watch(self, flag: bool) -> None:
        if flag != self._watching:
            loop = asyncio.get_running_loop()
            if flag:
                loop.add_writer(self._fd, self._flush)
            else:
                loop.remove_writer(self._fd)
            self._watching = flag

    def _fail(self, exc: OSError) -> None:
        self._buffer.clear()
        self._watch(False)
        self.error = TerminalFailed(exc.errno, exc.strerror)
        self._on_error(self.error)

    async def drain(self, timeout: float = FINAL_FLUSH_SECONDS) -> None:
        """Wait (bounded) until the terminal has taken everything written."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._buffer and self.error is None:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.01)

    def close(self) -> None:
        """Stop watching the descriptor; what is still buffered is dropped."""
        self._watch(False)
        self._buffer.clear()


class TerminalInput:
    """Reads `fd` while not paused and hands each chunk to `on_data`.

    Read errors go to `on_error`, and so does the end of input on a terminal
    (it hung up); the end of other input (`< file`) just stops reading.
    """

    def __init__(self, fd: int, *, on_data: Callable[[bytes], None],
                 on_error: Callable[[TerminalFailed], None]) -> None:
        self._fd = fd
        self._on_data = on_data
        self._on_error = on_error
        self._eof_is_error = os.isatty(fd)
        self._reading = False
        self._polled = False
        self._poll_handle: asyncio.Handle | None = None
        self._paused = False
        self._closed = False

    def start(self) -> None:
        self._closed = False
        self._update()

    def pause(self) -> None:
        self._paused = True
        self._update()

    def resume(self) -> None:
        self._paused = False
        self._update()

    def close(self) -> None:
        self._closed = True
        self._update()

    def _update(self) -> None:
        want = not self._paused and not self._closed
        if want == self._reading:
            return
        loop = asyncio.get_running_loop()
        self._reading = want
        if self._polled:
            if want:
                self._schedule_poll()
        elif want:
            try:
                loop.add_reader(self._fd, self._readable)
            except PermissionError:
                # A regular file (`< commands.txt`, `< /dev/null`) cannot be
                # watched, and is always ready: read it a chunk per turn.
                self._polled = True
                self._schedule_poll()
        else:
            loop.remove_reader(self._fd)

    def _schedule_poll(self) -> None:
        if self._poll_handle is None:
            self._poll_handle = asyncio.get_running_loop().call_soon(self._poll)

    def _poll(self) -> None:
        self._poll_handle = None
        if self._reading:
            self._readable()
            if self._reading:
                self._schedule_poll()

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, INPUT_CHUNK)
        except OSError as exc:
            if exc.errno in _RETRY:
                return
            self.close()
            self._on_error(TerminalFailed(exc.errno, exc.strerror))
            return
        if not data:
            self.close()
            if self._eof_is_error:
                self._on_error(TerminalFailed(errno.EIO, "the terminal was closed"))
            return
        self._on_data(data)
