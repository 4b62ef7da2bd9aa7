"""When the broker ends a session by itself."""

from __future__ import annotations

from broker.config import Timeouts
from broker.limits import session_over

T = Timeouts(idle=10, max_session=100)


def test_neither() -> None:
    assert session_over(now=50, started=0, last_activity=45, timeouts=T) is None
    assert session_over(now=99.9, started=0, last_activity=90.0, timeouts=T) is None


def test_idle() -> None:
    assert session_over(now=55, started=0, last_activity=45, timeouts=T) == "idle_timeout"
    assert session_over(now=20, started=0, last_activity=10, timeouts=T) == "idle_timeout"


def test_max_duration() -> None:
    assert session_over(now=100, started=0, last_activity=99, timeouts=T) == "max_duration"
    assert session_over(now=1100, started=1000, last_activity=1100, timeouts=T) == "max_duration"


def test_max_duration_wins_over_idle() -> None:
    assert session_over(now=500, started=0, last_activity=0, timeouts=T) == "max_duration"


def test_defaults_are_generous() -> None:
    d = Timeouts()
    assert session_over(now=600, started=0, last_activity=0, timeouts=d) is None
