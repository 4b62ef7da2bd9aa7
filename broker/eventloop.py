"""Which event loop the programs run on.

uvloop where it is installed (Linux, macOS): the broker holds each idle TLS
connection in a fraction of the memory the stdlib loop needs, and every hop
of the relay costs less. The stdlib loop otherwise, with the same behaviour.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Coroutine
from typing import Any, TypeVar

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
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))


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
