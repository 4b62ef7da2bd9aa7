"""Which event loop the programs run on.

uvloop where it is installed (Linux, macOS): the broker holds each idle TLS
connection in a fraction of the memory the stdlib loop needs, and every hop
of the relay costs less. The stdlib loop otherwise, with the same behaviour.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ssl
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, cast

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# glibc's mallopt parameter for the size above which an allocation gets its
# own mapping; setting it also turns off glibc's habit of raising it.
_M_MMAP_THRESHOLD = -3


def keep_connection_buffers_mapped(threshold: int = 128 * 1024) -> bool:
    """Give every allocation of `threshold` bytes or more its own mapping.

    uvloop gives each TLS connection a 256 KiB read buffer of which an idle
    connection touches a page or two. glibc serves such sizes with a mapping
    at first, where untouched pages cost nothing - until the first one is
    freed, when it raises its threshold and later buffers are carved from
    the heap, where they keep pages that earlier data touched resident. For
    a broker holding thousands of idle agents that is ~20 KiB per
    connection (measured: 57 KiB -> 37 KiB per idle TLS WebSocket).

    A no-op (False) where the C library is not glibc.
    """
    mallopt = _libc_function("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, threshold))


def _libc_function(name: str) -> Callable[..., int] | None:
    try:
        # ctypes gives its functions as Any; these return a C int.
        return cast("Callable[..., int]", getattr(ctypes.CDLL(ctypes.util.find_library("c")), name))
    except (OSError, AttributeError, TypeError):
        return None


def return_freed_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc's malloc_trim).

    Why: every connection, even one that never finishes TLS, leaves tens of
    KiB of OpenSSL and uvloop state on the C heap, between allocations that
    live on. When it closes, glibc keeps the freed pages for later (it only
    gives back the top of the heap by itself): measured, 25 rounds of 1,000
    idle sockets took the broker from 52 to 367 MB, never returned, and
    malloc_trim brings it back to within ~15 MB of the start. M_ARENA_MAX
    changes nothing (it is all the main thread's arena), nor does
    `keep_connection_buffers_mapped`'s threshold. A trim walks the free
    chunks: ~6-15 ms for a heap of 350 MB.

    A no-op (False) where the C library is not glibc.
    """
    trim = _libc_function("malloc_trim")
    return trim is not None and bool(trim(0))


# After a connection closes, wait this long for others closing with it (a
# flood ends all at once), so one trim covers them all.
TRIM_SETTLE_SECONDS = 1.0
# Trims at most this often: at 10,000 held agents coming and going, a trim
# every 10 s costs ~0.1% of a core.
TRIM_MIN_INTERVAL_SECONDS = 10.0


def next_trim_at(now: float, last_trim_at: float) -> float:
    """When to trim after a connection closed at `now`."""
    return max(now + TRIM_SETTLE_SECONDS, last_trim_at + TRIM_MIN_INTERVAL_SECONDS)


class TrimAfterClose:
    """Calls `trim` (by default `return_freed_memory`) on the running loop
    some time after connections close (see `next_trim_at`)."""

    def __init__(self, trim: Callable[[], object] = return_freed_memory) -> None:
        self._trim = trim
        self._handle: asyncio.TimerHandle | None = None
        self._last = float("-inf")
        self.trims = 0

    def closed(self) -> None:
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(next_trim_at(loop.time(), self._last), self._run)

    def _run(self) -> None:
        self._handle = None
        self._last = asyncio.get_running_loop().time()
        self.trims += 1
        self._trim()

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


# One TLS record holds at most 16 KiB, so a read never needs more than this.
_TLS_READ_MAX = 64 * 1024


class _BoundedReadSSLObject(ssl.SSLObject):
    """uvloop asks each TLS read for up to 256 KiB (and once more to learn
    there is nothing left): Python allocates the full size each time and
    shrinks it after. With `keep_connection_buffers_mapped` that is a fresh
    mapping and page faults per read; bounded to 64 KiB, the buffer comes
    from the heap, and a record still fits."""

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        if buffer is None:
            len = min(len, _TLS_READ_MAX)
        return super().read(len, buffer)


def bounded_tls_reads(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Make the TLS connections of `ctx` read at most 64 KiB at a time."""
    ctx.sslobject_class = _BoundedReadSSLObject
    return ctx
