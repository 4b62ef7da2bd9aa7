"""Slowing guessers without locking anyone out: pure decisions, time passed in.

`LoginThrottle` says how long to hold a refused login before the refusal is
sent. It never refuses by itself: the signature is always checked, and a
correct one gets in at once, however many failures came before it from the
same name or address.

`JoinLimits` says whether a logged-in engineer's join may go ahead. It is
asked before the nameplate is claimed, so a refused join spends no
customer's code.
"""

from __future__ import annotations

from broker.auth import AttemptLimiter
from broker.wire import limits

__all__ = ["JoinLimits", "LoginThrottle"]


class LoginThrottle:
    """Delays for refused logins, per source address and per name.

    The delay grows with the larger of the two recent failure counts, so it
    costs whoever guesses, from one place or for one name. Holding a refusal
    back holds its connection open, so at most `max_delayed` are held at
    once; beyond that a failure is refused at once (it still counts).
    """

    def __init__(self, *, free: int = limits.LOGIN_FREE_FAILURES,
                 first: float = limits.LOGIN_DELAY_FIRST, cap: float = limits.LOGIN_DELAY_MAX,
                 window: float = limits.LOGIN_WINDOW_SECONDS,
                 max_delayed: int = limits.MAX_DELAYED_REFUSALS,
                 max_keys: int = 10_000) -> None:
        self.free, self.first, self.cap = free, first, cap
        self.max_delayed = max_delayed
        # Counting further than the failure whose delay reaches the cap
        # changes nothing, so each key keeps only that many timestamps.
        saturation = free + 1
        while first * 2 ** (saturation - free - 1) < cap:
            saturation += 1
        self._by_source = AttemptLimiter(saturation, window, max_keys)
        self._by_name = AttemptLimiter(saturation, window, max_keys)
        self.delayed = 0

    def delay_for(self, failures: int) -> float:
        """Seconds to hold the refusal of the `failures`-th recent failure."""
        if failures <= self.free:
            return 0.0
        # 2.0, not 2: int ** int is typed Any (a negative exponent gives a float).
        return min(self.cap, self.first * 2.0 ** (failures - self.free - 1))

    def failed(self, source: str, name: str, now: float) -> float:
        """Count one failed login; return how long to hold its refusal."""
        self._by_source.record(source, now)
        self._by_name.record(name, now)
        worst = max(self._by_source.count(source, now), self._by_name.count(name, now))
        return self.delay_for(worst)

    def hold(self) -> bool:
        """Take a slot to hold one refusal back; False when all are taken."""
        if self.delayed >= self.max_delayed:
            return False
        self.delayed += 1
        return True

    def release(self) -> None:
        self.delayed = max(0, self.delayed - 1)


class JoinLimits:
    """Joins per engineer and per source: misses counted tightly, all loosely.

    `refusal` is asked before a join claims its nameplate and counts the join
    when it may go ahead; `missed` counts a join that found no customer (or
    whose PAKE failed). A refused join is not counted again, so waiting is
    enough to be let through.

    The misses of a source (several accounts sweeping from one address) stop
    only those of its engineers who missed themselves: a colleague behind the
    same office address who has not missed keeps joining, so a sweep cannot
    lock out the honest engineers next to it. Each further account still
    adds at most one miss before it is stopped too.
    """

    def __init__(self) -> None:
        window = limits.JOIN_MISS_WINDOW_SECONDS
        self._misses = {
            "engineer": AttemptLimiter(limits.MAX_JOIN_MISSES_PER_ENGINEER, window),
            "source": AttemptLimiter(limits.MAX_JOIN_MISSES_PER_SOURCE, window),
        }
        # A limit reached is reported once per window, not at each miss that
        # keeps it reached.
        self._reported = {scope: AttemptLimiter(1, window) for scope in self._misses}
        window = limits.JOIN_WINDOW_SECONDS
        self._joins = {
            "engineer": AttemptLimiter(limits.MAX_JOINS_PER_ENGINEER, window),
            "source": AttemptLimiter(limits.MAX_JOINS_PER_SOURCE, window),
        }

    def refusal(self, engineer: str, source: str, now: float) -> str | None:
        """Why this join is refused now, in words for the engineer, or None
        (then the join is counted and may claim its nameplate)."""
        keys = {"engineer": engineer, "source": source}
        missed_before = self._misses["engineer"].count(engineer, now) > 0
        for scope, limiter in self._misses.items():
            if scope == "source" and not missed_before:
                continue
            if limiter.blocked(keys[scope], now):
                return (f"{_WHO[scope]} made {limiter.limit} joins that found no waiting "
                        f"customer in the last {_minutes(limiter.window)}; check the code "
                        "with the customer and try again in a few minutes")
        for scope, limiter in self._joins.items():
            if limiter.blocked(keys[scope], now):
                return (f"{_WHO[scope]} made {limiter.limit} joins in the last "
                        f"{_minutes(limiter.window)}; try again in a few minutes")
        for scope, limiter in self._joins.items():
            limiter.record(keys[scope], now)
        return None

    def missed(self, engineer: str, source: str, now: float) -> list[str]:
        """Count a miss; return the scopes ("engineer", "source") whose limit
        this miss reached, each at most once per window, so the operator
        hears of a sweep without hearing of it at every miss."""
        reached = []
        for scope, key in (("engineer", engineer), ("source", source)):
            limiter = self._misses[scope]
            limiter.record(key, now)
            if limiter.blocked(key, now) and self._reported[scope].allow(key, now):
                reached.append(scope)
        return reached


_WHO = {"engineer": "your account", "source": "your network address"}


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} minutes"
