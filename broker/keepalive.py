"""Keepalive for every connection the broker holds, from one task.

websockets gives each connection a task that sleeps, pings and waits for the
pong: with 10,000 idle agents that is 10,000 tasks, timers and futures, and
most of the broker's idle CPU. Here one sweep a second looks at each
connection's `last_heard` and pings only those silent for `interval`
(anything received, including the peer's own pings, shows it is alive), and
fails those that leave a ping unanswered for `timeout`. Nothing is kept per
connection but two timestamps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from broker.framepath import FramePath

SWEEP_EVERY = 1.0


async def sweep_forever(connections: Callable[[], Iterable[object]], *,
                        interval: float, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(SWEEP_EVERY)
        sweep(connections(), loop.time(), interval=interval, timeout=timeout)


def sweep(connections: Iterable[object], now: float, *, interval: float,
          timeout: float) -> None:
    """One pass at time `now` (see `FramePath.keepalive_tick`)."""
    for ws in list(connections):  # a failed connection leaves the set
        if isinstance(ws, FramePath):
            ws.keepalive_tick(now, interval, timeout)
