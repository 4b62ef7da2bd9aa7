"""Login delays and join limits: pure decisions on a fake clock."""

from __future__ import annotations

from broker.throttle import JoinLimits, LoginThrottle
from broker.wire import limits


def test_the_first_failures_are_free_then_the_delay_doubles_to_its_cap() -> None:
    throttle = LoginThrottle(free=3, first=0.25, cap=4.0)
    delays = [throttle.failed("10.0.0.1", "alice", float(t)) for t in range(10)]
    assert delays == [0, 0, 0, 0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_the_delay_follows_the_name_from_any_source() -> None:
    throttle = LoginThrottle(free=1, first=1.0, cap=8.0)
    delays = [throttle.failed(f"10.0.0.{i}", "alice", 0.0) for i in range(4)]
    assert delays == [0, 1.0, 2.0, 4.0]


def test_the_delay_follows_the_source_for_any_name() -> None:
    throttle = LoginThrottle(free=1, first=1.0, cap=8.0)
    delays = [throttle.failed("10.0.0.1", f"name{i}", 0.0) for i in range(4)]
    assert delays == [0, 1.0, 2.0, 4.0]
    # Someone else, elsewhere, is not slowed by it.
    assert throttle.failed("10.0.0.2", "bob", 0.0) == 0


def test_failures_age_out_of_the_window() -> None:
    throttle = LoginThrottle(free=1, first=1.0, cap=8.0, window=60)
    for _ in range(5):
        throttle.failed("10.0.0.1", "alice", 0.0)
    assert throttle.failed("10.0.0.1", "alice", 59.0) == 8.0
    assert throttle.failed("10.0.0.1", "alice", 120.0) == 0


def test_a_flood_of_failures_keeps_bounded_memory_per_key() -> None:
    throttle = LoginThrottle(free=3, first=0.25, cap=4.0)
    for t in range(10_000):
        throttle.failed("10.0.0.1", "alice", t / 1000)
    # Counting stops where the delay reaches the cap.
    assert throttle.failed("10.0.0.1", "alice", 10.0) == 4.0
    assert len(throttle._by_name._seen["alice"]) == 8


def test_held_refusals_are_bounded() -> None:
    throttle = LoginThrottle(max_delayed=2)
    assert throttle.hold() and throttle.hold()
    assert not throttle.hold()  # the third failure is refused at once
    throttle.release()
    assert throttle.hold()


def test_the_cap_leaves_the_refusal_readable() -> None:
    # The clients wait 60 s for an answer: a held refusal arrives well before.
    assert limits.LOGIN_DELAY_MAX < 60 / 4


# -- joins ---------------------------------------------------------------------


def test_misses_refuse_joins_for_the_engineer_until_the_window_passes() -> None:
    joins = JoinLimits()
    window = limits.JOIN_MISS_WINDOW_SECONDS
    for t in range(limits.MAX_JOIN_MISSES_PER_ENGINEER):
        assert joins.refusal("mallory", "10.0.0.1", float(t)) is None
        joins.missed("mallory", "10.0.0.1", float(t))
    refusal = joins.refusal("mallory", "10.0.0.1", 20.0)
    assert refusal is not None and "found no waiting customer" in refusal
    # Another engineer at the same address still joins.
    assert joins.refusal("alice", "10.0.0.1", 20.0) is None
    # Refusals do not renew the block: waiting is enough.
    for t in range(30, 300):
        assert joins.refusal("mallory", "10.0.0.1", float(t)) is not None
    assert joins.refusal("mallory", "10.0.0.1", window + 0.0) is None


def test_the_limit_is_reported_once_per_window_when_reached() -> None:
    joins = JoinLimits()
    limit, window = limits.MAX_JOIN_MISSES_PER_ENGINEER, limits.JOIN_MISS_WINDOW_SECONDS
    reached = [joins.missed("mallory", "10.0.0.1", float(t)) for t in range(limit)]
    assert reached[-1] == ["engineer"] and not any(reached[:-1])
    # A sweeper retrying as each old miss ages out keeps the limit reached:
    # still one report per window, not one per miss.
    later = [joins.missed("mallory", "10.0.0.1", window + t) for t in range(limit - 1)]
    assert not any(later)
    # A window after the report, the next miss that keeps it reached is news.
    assert joins.missed("mallory", "10.0.0.1", window + limit - 1) == ["engineer"]


def test_misses_from_one_address_stop_the_engineers_who_missed_not_their_colleagues() -> None:
    joins = JoinLimits()
    for i in range(limits.MAX_JOIN_MISSES_PER_SOURCE):
        joins.missed(f"sweeper{i}", "10.0.0.1", 0.0)
    # Each sweeping account is stopped, though none reached its own limit...
    refusal = joins.refusal("sweeper0", "10.0.0.1", 1.0)
    assert refusal is not None and "network address" in refusal
    # ...and a new one is stopped after its first miss...
    assert joins.refusal("sweeper99", "10.0.0.1", 1.0) is None
    joins.missed("sweeper99", "10.0.0.1", 1.0)
    assert joins.refusal("sweeper99", "10.0.0.1", 2.0) is not None
    # ...while a colleague behind the same address who has not missed joins,
    # and so does anyone elsewhere.
    assert joins.refusal("alice", "10.0.0.1", 2.0) is None
    assert joins.refusal("sweeper0", "10.0.0.2", 2.0) is None


def test_a_busy_harness_joins_hundreds_that_succeed() -> None:
    """The bench joins 200 sessions at once from one account, then 50 more:
    joins that find their customer are counted loosely."""
    joins = JoinLimits()
    for i in range(250):
        assert joins.refusal("bench", "127.0.0.1", i / 100) is None
    for _ in range(limits.MAX_JOINS_PER_ENGINEER - 250):
        joins.refusal("bench", "127.0.0.1", 3.0)
    refusal = joins.refusal("bench", "127.0.0.1", 4.0)
    assert refusal is not None and f"{limits.MAX_JOINS_PER_ENGINEER} joins" in refusal
