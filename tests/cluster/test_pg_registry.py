"""The registry and the failed-login counts in PostgreSQL: the same rules
as the SQLite registry, shared by every node (two pools stand for two)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import asyncpg
import pytest

from broker.errors import RegistryError
from broker.pg_registry import PgLoginCounts, PgRegistry
from tests.broker.test_registry import ed25519_pub

NOW = dt.datetime(2026, 12, 3, 9, 0, tzinfo=dt.UTC)
ALICE_PUB, BOB_PUB = ed25519_pub("alice")[1], ed25519_pub("bob")[1]


@pytest.fixture
async def nodes(database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    one = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    two = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        await PgRegistry(one).create_tables()
        await PgRegistry(two).create_tables()  # idempotent: every node runs it
        yield one, two
    finally:
        await one.close()
        await two.close()


async def test_an_engineer_added_on_one_node_logs_in_on_another(
        nodes: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    one, two = (PgRegistry(pool) for pool in nodes)
    added = await one.add("alice", ALICE_PUB, role="admin", display="Alice Example", now=NOW)
    assert await two.get("alice") == added
    assert [e.name for e in await two.list()] == ["alice"]
    with pytest.raises(RegistryError, match="already registered"):
        await two.add("alice", BOB_PUB, now=NOW)
    with pytest.raises(RegistryError, match="already registered to 'alice'"):
        await two.add("bob", ALICE_PUB, now=NOW)
    with pytest.raises(RegistryError, match="invalid engineer name"):
        await two.add("Bob Builder", BOB_PUB, now=NOW)  # the same rules as SQLite's
    assert await two.remove("alice") and not await one.remove("alice")
    assert await one.get("alice") is None


async def test_a_device_is_bound_to_its_first_key_on_every_node(
        nodes: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    one, two = (PgRegistry(pool) for pool in nodes)
    # Two nodes seeing the same new device at once: one key wins, on both.
    first, second = await asyncio.gather(one.bind_device("p1", b"k" * 32, now=NOW),
                                         two.bind_device("p1", b"x" * 32, now=NOW))
    assert first != second
    winner = b"k" * 32 if first else b"x" * 32
    assert await one.bind_device("p1", winner, now=NOW)
    assert await two.bind_device("p1", winner, now=NOW)


async def test_failed_logins_are_counted_across_nodes_within_the_window(
        nodes: tuple[asyncpg.Pool, asyncpg.Pool]) -> None:
    window = dt.timedelta(minutes=15)
    one, two = (PgLoginCounts(pool, window) for pool in nodes)
    assert await one.failed("203.0.113.7", "alice", NOW) == 1
    assert await two.failed("203.0.113.7", "bob", NOW) == 2  # the same source
    assert await one.failed("198.51.100.1", "alice", NOW) == 2  # the same name
    # Past the window they no longer count, and are gone from the table.
    later = NOW + window + dt.timedelta(seconds=1)
    assert await two.failed("203.0.113.7", "carol", later) == 1
    rows = await nodes[0].fetchval("SELECT count(*) FROM failed_logins")
    assert rows == 1
