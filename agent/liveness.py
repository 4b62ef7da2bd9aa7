"""Engineer input runs only in a session the agent knows is still live.

A stopped agent (SIGSTOP, a frozen VM, a suspended laptop) may wake with the
engineer's keystrokes in its socket buffer, ahead of the broker's `ended`
for a session that ended meanwhile: run as they arrive, they would execute
after the customer's session was over. So the agent keeps a heartbeat; input
that arrives after the loop stalled (the heartbeat is stale, or a late tick
noticed the gap) is held, bounded, until the broker answers `confirm_live`
with `live`. The answer comes on the same connection as `ended`, after it,
so an ended session never gets a `live` first. Released on `live`,
discarded (and counted as dropped) on anything else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# How often the heartbeat ticks, and how late one may be before the loop
# counts as stalled. A busy loop seldom lags by seconds; a stopped one does.
BEAT_INTERVAL = 0.5
STALL_AFTER = 2.0
# Input held while liveness is checked: a burst of typing or a paste; more
# than this is dropped (and counted) rather than grow without bound.
MAX_HELD_INPUT = 64 * 1024


def _clock() -> float:
    # CLOCK_BOOTTIME also runs while the machine sleeps; monotonic does not.
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class Heartbeat:
    """A cheap periodic timestamp: `suspect(now)` says whether the loop may
    have stalled since input was last known to be safe."""

    def __init__(self, clock: Callable[[], float] = _clock) -> None:
        self._clock = clock
        self.last = clock()
        self.stalled_at: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self._clock()
        if now - self.last > STALL_AFTER:
            self.stalled_at = now  # timers may run before I/O on waking (uvloop)
        self.last = now
        self._handle = asyncio.get_running_loop().call_later(BEAT_INTERVAL, self._tick)

    def suspect(self, now: float) -> bool:
        return self.stalled_at is not None or now - self.last > STALL_AFTER

    def confirmed(self, since: float) -> None:
        """Liveness was confirmed by a check started at `since`."""
        if self.stalled_at is not None and self.stalled_at <= since:
            self.stalled_at = None
        self.last = max(self.last, since)


class InputGuard:
    """Between the SSH server and the shell: passes input while the loop is
    healthy, holds it after a stall until `confirm_live` answers."""

    def __init__(self, heartbeat: Heartbeat, confirm_live: Callable[[], Awaitable[bool]],
                 on_discarded: Callable[[int], None]) -> None:
        self.heartbeat = heartbeat
        self._confirm_live = confirm_live
        self._on_discarded = on_discarded
        self._held: bytearray | None = None
        self._task: asyncio.Task[None] | None = None

    def admit(self, data: bytes, write: Callable[[bytes], None],
              allowed: Callable[[], bool],
              settled: Callable[[], None] = lambda: None) -> bool:
        """True: write `data` now. False: held (or dropped past the bound).
        `settled` is called once the check that holds it has been answered
        (the input written or discarded), so a caller that stopped reading
        while input was held can read on."""
        now = self.heartbeat._clock()
        if self._held is None and not self.heartbeat.suspect(now):
            return True
        if self._held is None:
            self._held = bytearray()
            self._task = asyncio.get_running_loop().create_task(
                self._check(now, write, allowed, settled))
        room = max(0, MAX_HELD_INPUT - len(self._held))
        self._held += data[:room]
        if len(data) > room:
            self._on_discarded(len(data) - room)
        return False

    async def _check(self, since: float, write: Callable[[bytes], None],
                     allowed: Callable[[], bool], settled: Callable[[], None]) -> None:
        live = False
        try:
            live = await self._confirm_live()
        finally:
            held, self._held = bytes(self._held or b""), None
            if live and allowed():
                self.heartbeat.confirmed(since)
                write(held)
            elif held:
                self._on_discarded(len(held))
            settled()

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
