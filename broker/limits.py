"""When the broker ends a session on its own: pure, with time passed in."""

from __future__ import annotations

from broker.config import Timeouts


def session_over(
    now: float, started: float, last_activity: float, timeouts: Timeouts
) -> str | None:
    """Return the end reason if a session must end now, else None."""
    if now - started >= timeouts.max_session:
        return "max_duration"
    if now - last_activity >= timeouts.idle:
        return "idle_timeout"
    return None
