"""What the harness measures on an SSH connection, whichever path it took:
keystroke round trips through a PTY, bulk output, echo under load."""

from __future__ import annotations

import asyncio
import time

import asyncssh

from bench.stats import percentile

# A shell turned into a byte-for-byte echo: no line discipline, no echo by the
# PTY, `cat` writing back each byte as it reads it.
RAW_CAT = b"stty raw -echo; printf R''EADY; exec cat\r"
READY = b"READY"


class Tap(asyncssh.SSHClientSession):  # type: ignore[type-arg]
    """Counts bytes and wakes waiters; keeps a short tail to spot markers."""

    def __init__(self) -> None:
        self.received = 0
        self.tail = b""
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.marked = False  # READY seen; `after_mark` counts the bytes after it
        self.after_mark = 0

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.received += len(data)
        if self.marked:
            self.after_mark += len(data)
        else:
            window = self.tail + data
            at = window.find(READY)
            if at >= 0:
                self.marked = True
                self.after_mark = len(window) - at - len(READY)
        self.tail = (self.tail + data)[-64:]
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.changed.set()

    async def until(self, predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed.is_set():
                raise RuntimeError("the session closed")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer from the remote shell (last bytes: {self.tail!r})")
            self.changed.clear()
            if predicate():
                return
            await asyncio.wait_for(self.changed.wait(), left)


async def open_shell(conn: asyncssh.SSHClientConnection,
                     ) -> tuple[asyncssh.SSHClientChannel, Tap]:  # type: ignore[type-arg]
    chan, tap = await conn.create_session(Tap, term_type="xterm", term_size=(80, 24),
                                          encoding=None)
    return chan, tap


async def make_echo(conn: asyncssh.SSHClientConnection,
                    ) -> tuple[asyncssh.SSHClientChannel, Tap]:  # type: ignore[type-arg]
    chan, tap = await open_shell(conn)
    chan.write(RAW_CAT)
    await tap.until(lambda: tap.marked)
    tap.received = tap.after_mark
    return chan, tap


async def keystrokes(chan: asyncssh.SSHClientChannel,  # type: ignore[type-arg]
                     tap: Tap, count: int) -> list[float]:
    """Round trips of one byte through the remote PTY (an echo made by
    `make_echo`), in seconds."""
    samples = []
    for _ in range(count):
        want = tap.received + 1
        start = time.perf_counter()
        chan.write(b"x")
        await tap.until(lambda w=want: tap.received >= w)
        samples.append(time.perf_counter() - start)
    return samples


async def bulk(conn: asyncssh.SSHClientConnection, size: int) -> float:
    """Seconds to receive `size` bytes of shell output."""
    chan, tap = await open_shell(conn)
    chan.write(f"stty raw -echo; printf R''EADY; head -c {size} /dev/zero; exit\r".encode())
    await tap.until(lambda: tap.marked)
    start = time.perf_counter()
    await tap.until(lambda: tap.after_mark >= size, timeout=600)
    elapsed = time.perf_counter() - start
    chan.close()
    return elapsed


async def steady_echo(conn: asyncssh.SSHClientConnection, *, rate: int, chunk: int,
                      seconds: float, start: asyncio.Event) -> list[float]:
    """Send `rate` bytes/s in `chunk`s for `seconds`; return each chunk's round trip."""
    chan, tap = await make_echo(conn)
    await start.wait()
    interval = chunk / rate
    sent = 0
    pending: list[tuple[int, float]] = []
    samples: list[float] = []
    deadline = time.monotonic() + seconds
    next_send = time.monotonic()
    payload = b"y" * chunk
    while time.monotonic() < deadline or pending:
        now = time.monotonic()
        if now >= next_send and now < deadline:
            chan.write(payload)
            sent += chunk
            pending.append((sent, time.perf_counter()))
            next_send += interval
        while pending and tap.received >= pending[0][0]:
            samples.append(time.perf_counter() - pending.pop(0)[1])
        if tap.closed.is_set():
            raise RuntimeError("a session was dropped under load")
        wait = max(0.0, min(next_send - time.monotonic(), 0.05)) if now < deadline else 0.05
        tap.changed.clear()
        with _quiet_timeout():
            await asyncio.wait_for(tap.changed.wait(), wait)
        if time.monotonic() > deadline + 30:
            raise RuntimeError("echo did not come back within 30 s")
    chan.close()
    return samples


class _quiet_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: object, tb: object) -> bool:
        return exc_type is TimeoutError


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50), percentile(samples, 99)
