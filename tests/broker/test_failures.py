"""Folding failures into a bounded number of audit events (fake clock)."""

from __future__ import annotations

import datetime as dt

from broker.failures import (
    FailureAggregator,
    FailureRecord,
    Suppressed,
    join_event,
    login_event,
)

T0 = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_the_first_failure_is_written_at_once_the_rest_once_per_interval() -> None:
    agg = FailureAggregator(interval=60)
    first = agg.note("10.0.0.1", "alice", "unknown_user_or_key", at(0))
    assert first == FailureRecord("10.0.0.1", "alice", 1, {"unknown_user_or_key": 1},
                                  at(0), at(0))
    for t in range(1, 50):
        assert agg.note("10.0.0.1", "alice", "unknown_user_or_key", at(t)) is None
    assert agg.due(at(59)) == []
    assert agg.due(at(60)) == [FailureRecord("10.0.0.1", "alice", 49,
                                             {"unknown_user_or_key": 49}, at(1), at(49))]
    # Still failing: one event per interval, not an immediate one again.
    for t in range(61, 100):
        assert agg.note("10.0.0.1", "alice", "unknown_user_or_key", at(t)) is None
    [again] = agg.due(at(120))
    assert isinstance(again, FailureRecord) and again.count == 39
    # A quiet interval forgets the key; the next failure is news again.
    assert agg.due(at(180)) == []
    assert not agg.pending
    assert agg.note("10.0.0.1", "alice", "unknown_user_or_key", at(200)) is not None


def test_a_source_trying_many_names_is_one_event_for_the_source() -> None:
    agg = FailureAggregator(interval=60, names_per_group=3)
    written = [agg.note("10.0.0.1", f"name{i}", "unknown_user_or_key", at(0))
               for i in range(100)]
    # Three names on their own, then one record for all names of the source.
    assert [r.name for r in written if r is not None] == ["name0", "name1", "name2", None]
    assert len(agg) == 4
    [folded] = agg.due(at(60))
    assert isinstance(folded, FailureRecord)
    assert (folded.group, folded.name, folded.count) == ("10.0.0.1", None, 96)


def test_the_budget_bounds_the_events_of_an_interval_and_a_summary_counts_the_rest() -> None:
    agg = FailureAggregator(interval=60, budget=5)
    written = [agg.note(f"10.0.{i // 250}.{i % 250}", "x", "unknown_user_or_key", at(i / 100))
               for i in range(1000)]
    assert sum(r is not None for r in written) == 5
    out = agg.drain(at(30))
    records = [r for r in out if isinstance(r, FailureRecord)]
    assert records == []  # the budget was spent
    [summary] = [r for r in out if isinstance(r, Suppressed)]
    assert (summary.failures, summary.events) == (995, 995)
    assert summary.reasons == {"unknown_user_or_key": 995}
    assert not agg.pending


def test_at_most_budget_plus_one_events_per_interval_whatever_is_sent() -> None:
    agg = FailureAggregator(interval=60, budget=10, max_keys=500)
    per_interval: dict[int, int] = {}
    for step in range(6000):  # 10 minutes of ten failures a second, new keys each
        now = at(step / 10)
        writes: list[FailureRecord | Suppressed | None] = [
            agg.note(f"src{step}", f"name{step}", "unknown_user_or_key", now)]
        if step % 50 == 0:
            writes += agg.due(now)
        interval = step // 600
        per_interval[interval] = per_interval.get(interval, 0) + sum(w is not None
                                                                     for w in writes)
    assert max(per_interval.values()) <= 2 * (10 + 1)  # an interval can straddle two windows
    assert sum(per_interval.values()) <= 11 * 11


def test_keys_tracked_are_bounded_and_untracked_failures_still_counted() -> None:
    agg = FailureAggregator(interval=60, budget=1000, max_keys=100)
    for i in range(10_000):
        agg.note(f"src{i}", "x", "unknown_user_or_key", at(0))
    assert len(agg) == 100
    out = agg.drain(at(1))
    [summary] = [r for r in out if isinstance(r, Suppressed)]
    assert summary.failures == 9_900 and summary.events == 0


def test_reasons_are_counted_and_the_commonest_named() -> None:
    agg = FailureAggregator(interval=60)
    agg.note("mallory", None, "unknown_code", at(0))
    for reason in ["unknown_code"] * 3 + ["rate_limited"] * 5:
        agg.note("mallory", None, reason, at(1))
    [record] = agg.due(at(60))
    assert isinstance(record, FailureRecord)
    assert record.reasons == {"unknown_code": 3, "rate_limited": 5}
    assert record.reason == "rate_limited"


def test_the_events_written() -> None:
    named = FailureRecord("10.0.0.1", "alice@example.com", 3, {"unknown_user_or_key": 3},
                          at(0), at(2))
    event, fields = login_event(named)
    assert event == "login_failed"
    assert fields["subject"] == "login:alice@example.com"
    # Personal data (the name typed, the address) only in the erasable part.
    assert fields["personal"] == {"user": "alice@example.com", "ip": "10.0.0.1"}
    assert fields["body"] == {"reason": "unknown_user_or_key", "count": 3,
                              "reasons": {"unknown_user_or_key": 3},
                              "first": "2026-01-05T09:00:00.000000Z",
                              "last": "2026-01-05T09:00:02.000000Z"}
    many = FailureRecord("10.0.0.1", None, 40, {"unknown_user_or_key": 40}, at(0), at(2))
    event, fields = login_event(many)
    assert fields["personal"] == {"ip": "10.0.0.1"} and fields["body"]["names"] == "many"
    event, fields = join_event(FailureRecord("mallory", None, 7, {"unknown_code": 7},
                                             at(0), at(5)))
    assert (event, fields["actor"], fields["body"]["count"]) == ("join_failed", "mallory", 7)
    assert "personal" not in fields
    event, fields = join_event(Suppressed(2, 9, {"unknown_code": 9}, at(0), at(5)))
    assert event == "failures_suppressed"
    assert fields["body"]["of"] == "join_failed" and fields["body"]["failures"] == 9
