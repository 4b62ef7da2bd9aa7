"""The registry and the failed-login counts in PostgreSQL, for several nodes.

With one node the registry is a SQLite file (`broker.registry`) and failed
logins are counted in memory (`broker.throttle`). Behind a load balancer an
engineer added on one node must be able to log in on any, a device bound
to its key on one node must be refused with another key on every node, and
someone guessing passwords must not get each node's free attempts anew: so
in cluster mode these live in the shared database.

The rules are the registry's (`new_engineer`, `device_digest`): one set for
both backends. Times are wall-clock UTC here, since several machines share
the rows (a monotonic clock is per machine).
"""

from __future__ import annotations

import datetime as dt
import hmac

import asyncpg

from broker.errors import RegistryError
from broker.registry import REGISTRY_TABLES, Engineer, device_digest, new_engineer

__all__ = ["REGISTRY_DDL", "PgLoginCounts", "PgRegistry"]

REGISTRY_DDL = REGISTRY_TABLES + """
CREATE TABLE IF NOT EXISTS failed_logins (
    at     TIMESTAMPTZ NOT NULL,
    source TEXT NOT NULL,
    name   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS failed_logins_source ON failed_logins (source, at);
CREATE INDEX IF NOT EXISTS failed_logins_name ON failed_logins (name, at);
"""

def _engineer(row: asyncpg.Record | None) -> Engineer | None:
    return None if row is None else Engineer(*row)


class PgRegistry:
    """Engineers and device bindings in PostgreSQL (see the module doc)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create_tables(self) -> None:
        """Idempotent: every node runs it at start."""
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(REGISTRY_DDL)
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"cannot prepare the registry in PostgreSQL: {exc}") from exc

    async def add(self, name: str, public_key_text: str, *, role: str = "engineer",
                  display: str | None = None, now: dt.datetime) -> Engineer:
        engineer = new_engineer(name, public_key_text, role=role, display=display, now=now)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if await conn.fetchrow("SELECT 1 FROM engineers WHERE name = $1", name):
                    raise RegistryError(f"an engineer named {name!r} is already registered")
                other = await conn.fetchval("SELECT name FROM engineers WHERE public_key = $1",
                                            engineer.public_key)
                if other is not None:
                    raise RegistryError(f"this key is already registered to {other!r}; "
                                        "each person needs their own key")
                await conn.execute(
                    "INSERT INTO engineers (name, display, role, public_key, added) "
                    "VALUES ($1, $2, $3, $4, $5)",
                    engineer.name, engineer.display, engineer.role, engineer.public_key,
                    engineer.added)
        except asyncpg.UniqueViolationError as exc:  # a second node adding the same at once
            raise RegistryError(f"{name!r} or its key was registered meanwhile") from exc
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the registry in PostgreSQL: {exc}") from exc
        return engineer

    async def get(self, name: str) -> Engineer | None:
        return _engineer(await self._fetchrow(
            "SELECT name, display, role, public_key, added FROM engineers WHERE name = $1", name))

    async def list(self) -> list[Engineer]:
        try:
            rows = await self._pool.fetch(
                "SELECT name, display, role, public_key, added FROM engineers ORDER BY name")
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the registry in PostgreSQL: {exc}") from exc
        return [Engineer(*row) for row in rows]

    async def remove(self, name: str) -> bool:
        try:
            status = await self._pool.execute("DELETE FROM engineers WHERE name = $1", name)
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the registry in PostgreSQL: {exc}") from exc
        return status != "DELETE 0"

    async def bind_device(self, pseudonym: str, device_key: bytes, *,
                          now: dt.datetime) -> bool:
        """As `Registry.bind_device`: the first key a device came with is its key,
        on every node (one INSERT ... ON CONFLICT DO NOTHING decides a race)."""
        digest = device_digest(device_key)
        try:
            async with self._pool.acquire() as conn:
                await conn.execute(
                    "INSERT INTO devices (pseudonym, key_sha256, first_seen) "
                    "VALUES ($1, $2, $3) ON CONFLICT (pseudonym) DO NOTHING",
                    pseudonym, digest, now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
                stored = await conn.fetchval(
                    "SELECT key_sha256 FROM devices WHERE pseudonym = $1", pseudonym)
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the registry in PostgreSQL: {exc}") from exc
        return stored is not None and hmac.compare_digest(str(stored), digest)

    async def _fetchrow(self, sql: str, *args: object) -> asyncpg.Record | None:
        try:
            return await self._pool.fetchrow(sql, *args)
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the registry in PostgreSQL: {exc}") from exc


class PgLoginCounts:
    """Failed logins counted across every node: `failed` records one and
    says how many the source and the name had within `window` (the larger
    count sets the delay, as `broker.throttle.LoginThrottle` does on one node).
    Rows older than the window are deleted as new ones come, so the table
    stays the size of one window of failures."""

    def __init__(self, pool: asyncpg.Pool, window: dt.timedelta) -> None:
        self._pool = pool
        self.window = window

    async def failed(self, source: str, name: str, now: dt.datetime) -> int:
        since = now - self.window
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("DELETE FROM failed_logins WHERE at < $1", since)
                await conn.execute(
                    "INSERT INTO failed_logins (at, source, name) VALUES ($1, $2, $3)",
                    now, source, name)
                by_source = await conn.fetchval(
                    "SELECT count(*) FROM failed_logins WHERE source = $1 AND at >= $2",
                    source, since)
                by_name = await conn.fetchval(
                    "SELECT count(*) FROM failed_logins WHERE name = $1 AND at >= $2",
                    name, since)
        except (asyncpg.PostgresError, OSError) as exc:
            raise RegistryError(f"the failed-login counts in PostgreSQL: {exc}") from exc
        return max(int(by_source), int(by_name))
