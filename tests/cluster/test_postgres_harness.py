"""The test PostgreSQL itself: asyncpg reaches it, on loopback only, and
each test's database is its own."""

from __future__ import annotations

import asyncpg

from tests.cluster.harness import Postgres


async def test_asyncpg_connects_to_a_database_of_its_own_on_loopback(
        database_url: str, postgres: Postgres) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
        assert await conn.fetchval("SELECT current_setting('listen_addresses')") == "127.0.0.1"
        assert await conn.fetchval("SELECT current_setting('unix_socket_directories')") == ""
        name = await conn.fetchval("SELECT current_database()")
        assert database_url.endswith("/" + name) and name.startswith("test_")
        await conn.execute("CREATE TABLE mine (x int)")
    finally:
        await conn.close()
    assert postgres.is_running()


async def test_the_next_test_starts_from_the_empty_template(database_url: str) -> None:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        assert await conn.fetchval("SELECT to_regclass('mine')") is None
    finally:
        await conn.close()


async def test_a_wrong_password_is_refused(postgres: Postgres) -> None:
    try:
        conn = await asyncpg.connect(postgres.url(password="not-it"), timeout=10)
    except asyncpg.InvalidPasswordError:
        return
    await conn.close()
    raise AssertionError("the test cluster let in a wrong password")
