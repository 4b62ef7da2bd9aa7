"""What the harness measures on an SSH connection, whichever path it took:
keystroke round trips through a PTY, bulk output, echo under load."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Protocol

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
        self.on_received: Callable[[int], None] | None = None

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.received += len(data)
        if self.on_received is not None:
            self.on_received(self.received)
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
        if self.on_received is not None:
            self.on_received(self.received)

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
    assert isinstance(tap, Tap)  # the session object is the factory's
    return chan, tap


async def make_echo(conn: asyncssh.SSHClientConnection,
                    ) -> tuple[asyncssh.SSHClientChannel, Tap]:  # type: ignore[type-arg]
    chan, tap = await open_shell(conn)
    chan.write(RAW_CAT)
    await tap.until(lambda: tap.marked)
    tap.received = tap.after_mark
    return chan, tap


class Writer(Protocol):
    """Where keystrokes go: an asyncssh channel, or the stdin of a stock
    `ssh` process (bench/bastion.py), so that both are timed by one loop."""

    def write(self, data: bytes) -> None: ...


async def keystrokes(chan: Writer, tap: Tap, count: int, think: float = 0.0) -> list[float]:
    """Round trips of one byte through the remote PTY (an echo made by
    `make_echo`), in seconds; `think` seconds pass between keystrokes, as
    between a person's (the bastion rows use 2 ms)."""
    samples = []
    for _ in range(count):
        if think:
            await asyncio.sleep(think)
        want = tap.received + 1
        start = time.perf_counter()
        chan.write(b"x")
        await tap.until(lambda w=want: tap.received >= w)
        samples.append(time.perf_counter() - start)
    return samples


async def bulk(conn: asyncssh.SSHClientConnection, size: int,
               on_ready: Callable[[], None] | None = None) -> float:
    """Seconds to receive `size` bytes of shell output; `on_ready` is called
    when the shell is about to send them (where a CPU window starts)."""
    chan, tap = await open_shell(conn)
    chan.write(f"stty raw -echo; printf R''EADY; head -c {size} /dev/zero; exit\r".encode())
    await tap.until(lambda: tap.marked)
    if on_ready is not None:
        on_ready()
    start = time.perf_counter()
    await tap.until(lambda: tap.after_mark >= size, timeout=600)
    elapsed = time.perf_counter() - start
    chan.close()
    return elapsed


async def steady_echo(conn: asyncssh.SSHClientConnection, *, rate: int, chunk: int,
                      seconds: float, start: asyncio.Event, phase: float = 0.0,
                      ) -> list[float]:
    """Send `rate` bytes/s in `chunk`s for `seconds`; return each chunk's round trip.

    `phase` (0 to 1) shifts this session's sends within the interval: many
    sessions started together would otherwise all send at the same instant,
    and the last chunk of each such burst would measure the burst, not the
    relay.

    Timers send and the data callback times the echoes, so a session costs
    the harness no task wake-up per chunk: with 200 sessions in one process
    the harness must not be what is measured.
    """
    chan, tap = await make_echo(conn)
    await start.wait()
    loop = asyncio.get_running_loop()
    interval = chunk / rate
    payload = b"y" * chunk
    pending: collections.deque[tuple[int, float]] = collections.deque()
    samples: list[float] = []
    done: asyncio.Future[None] = loop.create_future()
    began = loop.time() + phase * interval
    deadline = began + seconds
    sent = 0

    def finish(exc: Exception | None = None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def arrived(received: int) -> None:
        now = time.perf_counter()
        while pending and received >= pending[0][0]:
            samples.append(now - pending.popleft()[1])
        if tap.closed.is_set():
            finish(RuntimeError("a session was dropped under load"))
        elif not pending and loop.time() >= deadline:
            finish()

    def send(n: int) -> None:
        nonlocal sent
        if done.done():
            return
        if loop.time() >= deadline:
            if not pending:
                finish()
            return
        chan.write(payload)
        sent += chunk
        pending.append((sent, time.perf_counter()))
        loop.call_at(began + (n + 1) * interval, send, n + 1)  # on schedule, not after

    tap.on_received = arrived
    loop.call_at(began, send, 0)
    try:
        await asyncio.wait_for(done, seconds + 30)
    except TimeoutError:
        raise RuntimeError("echo did not come back within 30 s") from None
    finally:
        tap.on_received = None
    chan.close()
    return samples


def p50_p99(samples: list[float]) -> tuple[float, float]:
    return percentile(samples, 50), percentile(samples, 99)
