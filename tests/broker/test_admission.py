"""Admission decisions (pure), the open-file limit raise, and the memory
trim schedule."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from broker.admission import (
    MAX_PENDING_PER_SOURCE,
    Admission,
    Decision,
    capacity_for,
    source_of,
)
from broker.eventloop import (
    TRIM_MIN_INTERVAL_SECONDS,
    TRIM_SETTLE_SECONDS,
    TrimAfterClose,
    next_trim_at,
    return_freed_memory,
)


def test_one_source_past_its_pending_cap_replaces_its_own_oldest() -> None:
    gate = Admission(capacity=1000)
    tickets = []
    for _ in range(MAX_PENDING_PER_SOURCE):
        decision, drop = gate.decide("203.0.113.9")
        assert (decision, drop) == (Decision.ADMIT, None)
        tickets.append(gate.admit("203.0.113.9"))
    # The n+1th takes the place of that source's oldest; other sources are untouched.
    assert gate.decide("203.0.113.9") == (Decision.ADMIT, tickets[0])
    assert gate.decide("198.51.100.1") == (Decision.ADMIT, None)
    gate.evict(tickets[0])
    newest = gate.admit("203.0.113.9")
    assert gate.pending == MAX_PENDING_PER_SOURCE
    assert gate.decide("203.0.113.9") == (Decision.ADMIT, tickets[1])
    gate.release(tickets[0])
    gate.release(newest)
    tickets = tickets[1:]

    gate.established(tickets[0])  # introduced itself: no longer pending
    assert gate.decide("203.0.113.9") == (Decision.ADMIT, None)
    assert gate.open == MAX_PENDING_PER_SOURCE - 1
    assert gate.pending == MAX_PENDING_PER_SOURCE - 2
    gate.release(tickets[1])
    gate.release(tickets[1])  # once only
    assert gate.open == MAX_PENDING_PER_SOURCE - 2 and gate.closed_total == 3


def test_a_full_pending_pool_drops_its_oldest_for_a_newcomer() -> None:
    gate = Admission(capacity=20, per_source=100)  # pending cap: 10
    first = gate.admit("10.0.0.1")
    for _ in range(gate.pending_cap - 1):
        gate.admit("10.0.0.2")
    decision, drop = gate.decide("192.0.2.7")
    assert decision is Decision.ADMIT and drop is first
    dropped: list[bool] = []
    first.drop = lambda: dropped.append(True)
    gate.evict(first)
    assert dropped == [True] and gate.evicted == 1 and not first.pending
    gate.release(first)  # its socket closes afterwards
    assert gate.open == gate.pending_cap - 1


def test_when_every_descriptor_holds_an_established_peer_newcomers_are_refused() -> None:
    gate = Admission(capacity=3)
    for _ in range(3):
        gate.established(gate.admit("10.0.0.1"))
    assert gate.decide("10.0.0.9") == (Decision.REFUSE_FULL, None)


def test_sources_are_addresses_and_ipv6_slash_64s() -> None:
    assert source_of("192.0.2.1") == "192.0.2.1"
    assert source_of("::ffff:192.0.2.1") == "192.0.2.1"
    assert source_of("2001:db8:1:2::1") == source_of("2001:db8:1:2:ffff::9") == \
        "2001:db8:1:2::/64"
    assert source_of("2001:db8:1:3::1") != source_of("2001:db8:1:2::1")
    assert source_of("fe80::1%eth0") == "fe80::/64"


def test_capacity_keeps_the_reserve() -> None:
    assert capacity_for(1024, in_use=30, reserve=64) == 930
    assert capacity_for(64, in_use=30, reserve=64) == 0


RAISE = """
import resource
from broker.admission import raise_open_file_limit
soft, hard = raise_open_file_limit()
print(soft, hard, *resource.getrlimit(resource.RLIMIT_NOFILE))
"""


def test_the_soft_open_file_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    out = subprocess.run([sys.executable, "-c", RAISE], capture_output=True, text=True,
                         check=True, preexec_fn=lower).stdout.split()
    assert out == ["4096", "4096", "4096", "4096"]


def test_trims_wait_for_a_flood_to_end_and_come_no_closer_than_the_interval() -> None:
    assert next_trim_at(100.0, float("-inf")) == 100.0 + TRIM_SETTLE_SECONDS
    assert next_trim_at(100.0, 95.0) == 95.0 + TRIM_MIN_INTERVAL_SECONDS
    assert return_freed_memory() in (True, False)  # glibc or not, it never raises


async def test_many_closes_make_one_trim() -> None:
    calls: list[int] = []
    trimmer = TrimAfterClose(lambda: calls.append(1))
    for _ in range(100):
        trimmer.closed()
    await asyncio.sleep(TRIM_SETTLE_SECONDS + 0.5)
    assert calls == [1] and trimmer.trims == 1
    trimmer.closed()  # within the interval: scheduled, not run yet
    trimmer.cancel()
