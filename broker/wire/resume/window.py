"""When a lost peer may still come back, and when to try again: pure
decisions that take `now` (seconds on a monotonic clock) and an injected
random source, so tests drive them with a fake clock.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from broker.wire.limits import RESUME_WINDOW_SECONDS

__all__ = [
    "BACKOFF_FACTOR",
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "RESUME_WINDOW_SECONDS",
    "Backoff",
    "ResumeWindow",
]

# Reconnect delays: the first try comes quickly (most drops are short), then
# the wait doubles up to a ceiling, so thousands of clients cut by one broker
# restart do not all come back in the same second (with the jitter below).
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_FACTOR = 2.0
BACKOFF_MAX_SECONDS = 10.0


class Backoff:
    """Reconnect delays: exponential, capped, with "equal jitter" (each delay
    is drawn between half and all of its step), so it never drops to zero
    and never exceeds `cap`.

    `uniform01` returns a float in [0, 1); inject a seeded one in tests."""

    def __init__(self, uniform01: Callable[[], float] = random.random,
                 first: float = BACKOFF_FIRST_SECONDS, factor: float = BACKOFF_FACTOR,
                 cap: float = BACKOFF_MAX_SECONDS) -> None:
        if not 0 < first <= cap or factor < 1:
            raise ValueError("a backoff needs 0 < first <= cap and factor >= 1")
        self._uniform01 = uniform01
        self.first, self.factor, self.cap = first, factor, cap
        self._step = first

    def next_delay(self) -> float:
        step = self._step
        self._step = min(self.cap, step * self.factor)
        jitter = min(max(self._uniform01(), 0.0), 1.0)  # a bad source cannot unbound it
        return step / 2 + step / 2 * jitter

    def reset(self) -> None:
        """After a successful resume: the next drop starts quick again."""
        self._step = self.first


class ResumeWindow:
    """One end's view of its peer (or its own link): connected, or lost since
    a moment, and for how much longer a resume is allowed.

    ``lost(now)`` starts the window (a second call while lost keeps the first
    moment: the window is not extended by drops during reconnects);
    ``resumed(now)`` closes it and returns the gap; ``expired(now)`` says
    when the session must end instead."""

    def __init__(self, window: float = RESUME_WINDOW_SECONDS,
                 backoff: Backoff | None = None) -> None:
        if window <= 0:
            raise ValueError("a resume window is a positive number of seconds")
        self.window = window
        self.backoff = backoff if backoff is not None else Backoff()
        self._lost_at: float | None = None

    @property
    def down(self) -> bool:
        return self._lost_at is not None

    @property
    def lost_at(self) -> float | None:
        return self._lost_at

    def lost(self, now: float) -> None:
        if self._lost_at is None:
            self._lost_at = now

    def deadline(self) -> float | None:
        """When the session ends if nobody resumes it; None while connected."""
        return None if self._lost_at is None else self._lost_at + self.window

    def remaining(self, now: float) -> float:
        """Seconds left to resume (0 when expired; the whole window when connected)."""
        deadline = self.deadline()
        return self.window if deadline is None else max(0.0, deadline - now)

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def may_resume(self, now: float) -> bool:
        return self.down and not self.expired(now)

    def next_attempt(self, now: float) -> float | None:
        """Seconds to wait before the next reconnect, or None: give up, the
        window is over. A delay never reaches past the deadline, so the last
        try still comes in time."""
        if not self.may_resume(now):
            return None
        return min(self.backoff.next_delay(), self.remaining(now))

    def resumed(self, now: float) -> float:
        """The peer is back: returns how long it was gone (for the audit's
        `session_resumed`) and resets the backoff."""
        if self._lost_at is None:
            raise ValueError("resumed() while the link was not lost")
        gap = max(0.0, now - self._lost_at)
        self._lost_at = None
        self.backoff.reset()
        return gap
