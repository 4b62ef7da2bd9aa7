"""Cluster membership (broker.cluster): slots and leases in the node table
of a real PostgreSQL, slot-prefixed nameplates, the leader by advisory
lock and its failover, and node_lost for the sessions of a node that died."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from broker.cluster.health import AuditHealth, health_answer
from broker.cluster.leader import LEADER_LOCK, Leader
from broker.cluster.lease import Lease, nameplate_prefix, slot_of
from broker.cluster.lost import close_lost_nodes
from broker.cluster.membership import Membership
from broker.cluster.nodes import NodeTable, connect
from broker.cluster.urls import node_url_problem
from broker.pairing import NameplateBook

WAIT = 20.0  # a bound on every wait below, never a timing assertion


# -- pure rules ---------------------------------------------------------------


def test_a_nameplate_names_the_slot_of_the_node_that_issued_it() -> None:
    book = NameplateBook(prefix=nameplate_prefix(17))
    plates = {book.allocate(f"agent-{n}", now=0.0).value for n in range(50)}
    assert len(plates) == 50
    assert all(p.startswith("17") and slot_of(p) == 17 for p in plates)
    assert all(len(p) <= 8 for p in plates)
    assert slot_of("4821") == 48 and slot_of("0912") is None and slot_of("12") is None
    with pytest.raises(ValueError):
        nameplate_prefix(9)  # a code never begins with 0: slots have two digits


def test_the_prefix_leaves_the_drawn_digits_as_sparse_as_a_single_node() -> None:
    single, clustered = NameplateBook(), NameplateBook(prefix="12")
    assert (len(clustered.allocate("a", 0.0).value) - 2 == len(single.allocate("a", 0.0).value))


def test_a_lease_counts_as_lost_before_the_table_would_free_it() -> None:
    lease = Lease(slot=3, asked_at=100.0, seconds=15.0, margin=3.0)
    assert lease.held(100.0) and lease.held(111.9)
    assert not lease.held(112.0)  # the table frees it at 115 at the earliest
    assert lease.renewed(110.0).held(120.0)


def test_healthz_says_200_only_with_a_lease_and_a_writable_log() -> None:
    audit = AuditHealth()
    assert health_answer(clustered=False, slot=None, audit=audit)[0] == 200
    assert health_answer(clustered=True, slot=2, audit=audit)[0] == 200
    assert health_answer(clustered=True, slot=None, audit=audit)[0] == 503
    audit.failed("disk full")
    assert health_answer(clustered=False, slot=None, audit=audit)[0] == 503
    audit.wrote()
    assert health_answer(clustered=True, slot=2, audit=audit)[0] == 200


@pytest.mark.parametrize(("url", "ok"), [
    ("wss://node1.example:8443", True), ("wss://127.0.0.1:8451", True),
    ("wss://[::1]:8443", True), ("ws://node1:8443", False), ("https://node1", False),
    ("wss://user@node1:8443", False), ("wss://node1:8443/v1/console", False),
    ("wss://node1:8443?x=1", False), ("wss://node1:99999", False), ("wss://", False),
    ("wss://node\x1b[2J:8443", False), ("wss://" + "a" * 300, False),
])
def test_only_a_plain_wss_host_and_port_is_a_node_url(url: str, ok: bool) -> None:
    assert (node_url_problem(url) is None) is ok


# -- the node table -----------------------------------------------------------


@pytest.fixture
async def table(database_url: str) -> AsyncIterator[NodeTable]:
    pool = await connect(database_url)
    try:
        yield NodeTable(pool)
    finally:
        await pool.close()


async def _expire(table: NodeTable, slot: int, ago: float = 1.0) -> None:
    await table.pool.execute(
        "UPDATE cluster_nodes SET expires_at = now() - make_interval(secs => $2) "
        "WHERE slot = $1", slot, ago)


async def test_two_nodes_get_different_slots_and_each_is_found_by_its_slot(
        table: NodeTable) -> None:
    one = await table.claim("node-a", "wss://a.example:8443", 15)
    two = await table.claim("node-b", "wss://b.example:8443", 15)
    assert (one, two) == (10, 11)
    assert await table.url_of(11) == "wss://b.example:8443"
    assert await table.url_of(12) is None
    assert await table.claim("node-a", "wss://a.example:8443", 15) == 10  # its own, kept


async def test_nodes_claiming_at_once_never_share_a_slot(database_url: str) -> None:
    pools = [await connect(database_url) for _ in range(4)]
    try:
        slots = await asyncio.gather(*(NodeTable(pool).claim(f"node-{n}", f"wss://n{n}:1", 15)
                                       for n, pool in enumerate(pools) for _ in range(3)))
        # Each node asked three times: it keeps its one slot; four nodes, four slots.
        assert set(slots) == {10, 11, 12, 13}
    finally:
        for pool in pools:
            await pool.close()


async def test_a_lease_not_renewed_is_taken_over_and_its_old_holder_cannot_renew(
        table: NodeTable) -> None:
    assert await table.claim("node-a", "wss://a.example:8443", 15) == 10
    assert await table.renew(10, "node-a", 15)
    await _expire(table, 10)
    assert await table.claim("node-b", "wss://b.example:8443", 15) == 10
    assert not await table.renew(10, "node-a", 15)
    assert await table.url_of(10) == "wss://b.example:8443"


async def test_a_node_whose_lease_ran_out_stops_issuing_and_claims_again(
        table: NodeTable) -> None:
    changes: list[int | None] = []
    member = Membership(table, "wss://a.example:8443", lease_seconds=15, renew_every=0.05)
    member.on_change = changes.append
    assert await member.join() == 10
    try:
        await table.claim("node-b", "wss://b.example:8443", 15)  # slot 11
        await _expire(table, 10)
        await table.claim("node-c", "wss://c.example:8443", 15)  # takes slot 10
        async with asyncio.timeout(WAIT):
            while len(changes) < 3:
                await asyncio.sleep(0.02)
        # Lost (no nameplates meanwhile), then the next free slot.
        assert changes[:3] == [10, None, 12]
        assert member.slot == 12
    finally:
        await member.leave()
    assert await table.url_of(12) is None  # a clean stop frees the slot at once


# -- the leader ---------------------------------------------------------------


async def test_one_leader_at_a_time_and_another_takes_over_when_it_dies(
        database_url: str) -> None:
    ran: list[str] = []

    def job(name: str) -> Any:
        async def loop() -> None:
            ran.append(name)
            await asyncio.Event().wait()
        return loop

    first = Leader(database_url, [job("first")], try_every=0.1)
    second = Leader(database_url, [job("second")], try_every=0.1)
    first.start()
    await asyncio.wait_for(first.leading.wait(), WAIT)
    second.start()
    watcher = await asyncpg.connect(database_url)
    try:
        # The second tries and fails while the first holds the lock.
        async with asyncio.timeout(WAIT):
            while not await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE "
                    "'%pg_try_advisory_lock%' AND pid <> pg_backend_pid()") >= 1:
                await asyncio.sleep(0.05)
        assert not second.leading.is_set() and ran == ["first"]
        # The first's connection dies (as with kill -9 of its node): the lock goes with it.
        await watcher.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
            "AND objid = $1::bigint % 4294967296 AND granted", LEADER_LOCK)
        await asyncio.wait_for(second.leading.wait(), WAIT)
        assert "second" in ran
        async with asyncio.timeout(WAIT):
            while first.leading.is_set():  # it noticed, and stopped its jobs
                await asyncio.sleep(0.05)
    finally:
        await watcher.close()
        await first.stop()
        await second.stop()


# -- node_lost ----------------------------------------------------------------


class RecordingAudit:
    """Just the append of an AuditStore, remembered."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    async def append(self, type: str, *, now: dt.datetime, **fields: Any) -> int:
        self.events.append((type, fields))
        return len(self.events)


async def test_the_leader_closes_a_dead_nodes_sessions_in_the_log_once(
        table: NodeTable) -> None:
    audit = RecordingAudit()
    assert await table.claim("node-a", "wss://a.example:8443", 15) == 10
    assert await table.claim("node-b", "wss://b.example:8443", 15) == 11
    await table.session_started("s-1", "node-a", 10)
    await table.session_started("s-2", "node-a", 10)
    await table.session_started("s-3", "node-b", 11)
    await table.session_over("s-2")
    assert await close_lost_nodes(table, audit, grace=15) == 0  # alive: nothing
    await _expire(table, 10, ago=5)
    assert await close_lost_nodes(table, audit, grace=15) == 0  # within the grace
    await _expire(table, 10, ago=30)
    assert await close_lost_nodes(table, audit, grace=15) == 1
    assert audit.events == [("node_lost", {"body": {"node": "node-a", "slot": 10,
                                                    "sessions": ["s-1"]}})]
    assert await close_lost_nodes(table, audit, grace=15) == 0
    # A node whose slot was taken before the leader looked is found by its sessions.
    await table.session_started("s-4", "node-b", 11)
    await _expire(table, 11, ago=1)
    await table.claim("node-c", "wss://c.example:8443", 15)
    await table.claim("node-d", "wss://d.example:8443", 15)
    assert await close_lost_nodes(table, audit, grace=15) == 1
    assert audit.events[-1] == ("node_lost", {"body": {"node": "node-b", "slot": 11,
                                                       "sessions": ["s-3", "s-4"]}})
