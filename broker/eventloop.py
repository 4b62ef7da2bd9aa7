"""Which event loop the programs run on.

uvloop where it is installed (Linux, macOS): the broker holds each idle TLS
connection in a fraction of the memory the stdlib loop needs, and every hop
of the relay costs less. The stdlib loop otherwise, with the same behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
