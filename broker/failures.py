"""What to write to the audit log about failures, and when: pure, time passed in.

Failed logins come from anyone who reaches the port, and each audit event
costs disk and an fsync. Written one by one they let a stranger fill the
operator's quota, after which no session can start. So failures are folded:

- per key (a source address and a name tried; an engineer for joins) the
  first failure of an interval is written at once, the rest of the interval
  are counted and written as one event (count, reasons, first and last time)
  when the interval ends; a key still failing gets one event per interval;
- a source trying many names is folded into one key for that source, so a
  flood of made-up names from one address is one event per interval;
- whatever the keys, at most `budget` events are written per interval;
  the rest are dropped and counted, and one summary (`Suppressed`) per
  interval says how many failures and events were left out;
- at most `max_keys` keys are tracked; failures of further keys are counted
  in the summary only.

So unauthenticated peers add at most `budget + 1` events per interval to the
log, whatever they send. The driver (`broker.server`) writes the records
this returns, calls `due` on a timer and `drain` at shutdown.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker.audit.chain import format_time

__all__ = ["FAILURE_EVENT_BUDGET", "FAILURE_INTERVAL_SECONDS", "FLUSH_EVERY_SECONDS",
           "FailureAggregator", "FailureEvent", "FailureRecord", "Suppressed", "join_event",
           "login_event"]

# One event per key per five minutes (the login window) is enough to see who
# fails and how often: the first failure of a key is written at once, and an
# admin reading `audit list` sees a count instead of a page per attacker.
FAILURE_INTERVAL_SECONDS = 5 * 60.0
# Events per interval (per kind of failure). Measured at ~1 KiB each (the
# event, its encrypted personal part and the subject's key), failed logins
# grow the log by at most 26 KiB per 5 minutes (~0.3 MiB an hour, 7.5 MiB a
# day), whatever is sent - against ~0.7 GiB an hour when every failure was
# an event.
FAILURE_EVENT_BUDGET = 25
# Names tried from one source within an interval before the rest of that
# source's failures are folded into one event for the source.
NAMES_PER_SOURCE = 5
# Keys tracked at once (a few hundred bytes each).
MAX_TRACKED_KEYS = 10_000
# How often the driver asks for what is due: an aggregate is written at most
# this long after its interval ended.
FLUSH_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class FailureRecord:
    """Failures to write as one event."""

    group: str  # the source address (logins) or the engineer (joins)
    name: str | None  # the name tried; None: all names tried from `group`
    count: int
    reasons: dict[str, int]
    first: dt.datetime
    last: dt.datetime

    @property
    def reason(self) -> str:
        """The most frequent reason (ties: the first in name order)."""
        return min(self.reasons, key=lambda r: (-self.reasons[r], r))


@dataclass(frozen=True)
class Suppressed:
    """Failures of one interval that no event records."""

    events: int  # aggregated events not written for want of budget
    failures: int
    reasons: dict[str, int]
    first: dt.datetime
    last: dt.datetime


@dataclass
class _Tally:
    opened: dt.datetime
    count: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    first: dt.datetime | None = None
    last: dt.datetime | None = None

    def add(self, reason: str, now: dt.datetime, count: int = 1) -> None:
        self.count += count
        self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.first = self.first or now
        self.last = now

    def merge(self, other: _Tally) -> None:
        for reason, count in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + count
        self.count += other.count
        assert other.first is not None and other.last is not None
        self.first = min(self.first or other.first, other.first)
        self.last = max(self.last or other.last, other.last)


Key = tuple[str, str | None]


class FailureAggregator:
    def __init__(self, *, interval: float = FAILURE_INTERVAL_SECONDS,
                 budget: int = FAILURE_EVENT_BUDGET, names_per_group: int = NAMES_PER_SOURCE,
                 max_keys: int = MAX_TRACKED_KEYS) -> None:
        self.interval = dt.timedelta(seconds=interval)
        self.budget = budget
        self.names_per_group = names_per_group
        self.max_keys = max_keys
        self._tallies: dict[Key, _Tally] = {}
        self._names: dict[str, int] = {}  # group -> its named tallies
        self._window_end: dt.datetime | None = None
        self._spent = 0
        self._dropped = _Tally(opened=dt.datetime.min.replace(tzinfo=dt.UTC))
        self._dropped_events = 0
        self._ready: Suppressed | None = None

    def __len__(self) -> int:
        """Keys tracked now."""
        return len(self._tallies)

    @property
    def pending(self) -> bool:
        """True while something is left to write (by `due` or `drain`)."""
        return bool(self._tallies) or self._ready is not None or self._dropped.count > 0

    def note(self, group: str, name: str | None, reason: str,
             now: dt.datetime) -> FailureRecord | None:
        """Count one failure; return a record to write at once, or None when
        it was folded (into an event `due` returns later, or the summary)."""
        self._roll(now)
        folded = self._tallies.get((group, None)) or self._tallies.get((group, name))
        if folded is not None:
            folded.add(reason, now)
            return None
        key: Key = (group, name)
        if name is not None and self._names.get(group, 0) >= self.names_per_group:
            key = (group, None)  # many names from one source: one event for all
        if len(self._tallies) >= self.max_keys:
            self._dropped.add(reason, now)
            return None
        self._tallies[key] = tally = _Tally(opened=now)
        if key[1] is not None:
            self._names[group] = self._names.get(group, 0) + 1
        if self._spend():
            return FailureRecord(group, key[1], 1, {reason: 1}, now, now)
        tally.add(reason, now)
        return None

    def due(self, now: dt.datetime) -> list[FailureRecord | Suppressed]:
        """What to write now: each key whose interval ended with failures not
        yet written, and the summary of an interval that dropped some."""
        return self._collect(now, force=False)

    def drain(self, now: dt.datetime) -> list[FailureRecord | Suppressed]:
        """Everything pending (at shutdown), still within the budget: what
        does not fit is counted in the summary, which comes last."""
        return self._collect(now, force=True)

    def _collect(self, now: dt.datetime, force: bool) -> list[FailureRecord | Suppressed]:
        self._roll(now)
        out: list[FailureRecord | Suppressed] = []
        for key, tally in list(self._tallies.items()):
            if not force and now < tally.opened + self.interval:
                continue
            if tally.count:
                assert tally.first is not None and tally.last is not None
                if self._spend():
                    out.append(FailureRecord(key[0], key[1], tally.count, dict(tally.reasons),
                                             tally.first, tally.last))
                else:
                    self._dropped.merge(tally)
                    self._dropped_events += 1
            if tally.count and not force:
                # Still failing: it stays one more interval, so a steady
                # stream is one event per interval, not two.
                self._tallies[key] = _Tally(opened=now)
            else:
                self._forget(key)
        if force:
            self._roll(now, force=True)
        if self._ready is not None:
            out.append(self._ready)
            self._ready = None
        return out

    def _forget(self, key: Key) -> None:
        del self._tallies[key]
        if key[1] is not None:
            left = self._names.get(key[0], 0) - 1
            if left > 0:
                self._names[key[0]] = left
            else:
                self._names.pop(key[0], None)

    def _spend(self) -> bool:
        if self._spent >= self.budget:
            return False
        self._spent += 1
        return True

    def _roll(self, now: dt.datetime, force: bool = False) -> None:
        """Start a new budget interval once the current one is over."""
        if self._window_end is None:
            self._window_end = now + self.interval
        if not force and now < self._window_end:
            return
        dropped = self._dropped
        if dropped.count:
            assert dropped.first is not None and dropped.last is not None
            summary = Suppressed(self._dropped_events, dropped.count, dict(dropped.reasons),
                                 dropped.first, dropped.last)
            if self._ready is not None:  # `due` was not asked for a while: one summary
                summary = Suppressed(
                    summary.events + self._ready.events,
                    summary.failures + self._ready.failures,
                    {r: summary.reasons.get(r, 0) + self._ready.reasons.get(r, 0)
                     for r in {*summary.reasons, *self._ready.reasons}},
                    self._ready.first, summary.last)
            self._ready = summary
        self._dropped = _Tally(opened=now)
        self._dropped_events = 0
        self._spent = 0
        self._window_end = now + self.interval


# -- the audit events (type and fields for `AuditLog.append`) -----------------

FailureEvent = Callable[["FailureRecord | Suppressed"], tuple[str, dict[str, Any]]]


def _span(record: FailureRecord | Suppressed) -> dict[str, Any]:
    return {"reasons": dict(sorted(record.reasons.items())),
            "first": format_time(record.first), "last": format_time(record.last)}


def _suppressed(kind: str, record: Suppressed) -> tuple[str, dict[str, Any]]:
    return "failures_suppressed", {"body": {"of": kind, "events": record.events,
                                            "failures": record.failures, **_span(record)}}


def login_event(record: FailureRecord | Suppressed) -> tuple[str, dict[str, Any]]:
    """`login_failed`: the name typed (maybe someone's e-mail address) and the
    address go in the erasable personal part; a source that tried many names
    is recorded under its address, with ``"names": "many"``."""
    if isinstance(record, Suppressed):
        return _suppressed("login_failed", record)
    body = {"reason": record.reason, "count": record.count, **_span(record)}
    if record.name is None:
        return "login_failed", {"subject": f"login-source:{record.group}",
                                "personal": {"ip": record.group},
                                "body": {**body, "names": "many"}}
    return "login_failed", {"subject": f"login:{record.name}",
                            "personal": {"user": record.name, "ip": record.group},
                            "body": body}


def join_event(record: FailureRecord | Suppressed) -> tuple[str, dict[str, Any]]:
    """`join_failed`, by the engineer who joined (the actor)."""
    if isinstance(record, Suppressed):
        return _suppressed("join_failed", record)
    return "join_failed", {"actor": record.group,
                           "body": {"reason": record.reason, "count": record.count,
                                    **_span(record)}}
