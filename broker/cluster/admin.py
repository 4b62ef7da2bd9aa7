"""The `engineer` admin commands against a cluster's database.

With `--database-url` (the owner's URL, as for installing the schema) the
engineers are the cluster's (`broker.pg_registry`), and each grant or
removal is recorded in the cluster's audit log, as on one node: a grant
that cannot be recorded is undone (fail closed).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from broker.audit.stores import check_database_url, open_store
from broker.errors import RegistryError
from broker.pg_registry import PgRegistry
from broker.registry import Engineer

__all__ = ["add_engineer", "list_engineers", "remove_engineer"]


@asynccontextmanager
async def _registry(url: str) -> AsyncIterator[PgRegistry]:
    try:
        pool = await asyncpg.create_pool(check_database_url(url), min_size=1, max_size=2)
    except (asyncpg.PostgresError, OSError) as exc:
        raise RegistryError(f"cannot reach the cluster database: {exc}") from None
    try:
        yield PgRegistry(pool)
    except RegistryError as exc:
        if "does not exist" in str(exc):
            raise RegistryError(
                "the cluster database has no consentry schema yet: install it first "
                "(`consentry-broker audit verify --database-url` with the owner's URL)"
            ) from None
        raise
    finally:
        await pool.close()


async def _record(data_dir: Path, url: str, event: str, engineer: Engineer,
                  actor: str, now: dt.datetime) -> None:
    audit = await open_store(data_dir, database_url=url)
    try:
        await audit.append(event, now=now, actor=actor, body={
            "name": engineer.name, "role": engineer.role, "key": engineer.fingerprint})
    finally:
        await audit.close()


def add_engineer(url: str, data_dir: Path, name: str, key_text: str, *, role: str,
                 display: str | None, actor: str, now: dt.datetime) -> Engineer:
    async def run() -> Engineer:
        async with _registry(url) as registry:
            engineer = await registry.add(name, key_text, role=role, display=display, now=now)
            try:
                await _record(data_dir, url, "engineer_added", engineer, actor, now)
            except BaseException:
                await registry.remove(engineer.name)
                raise
            return engineer

    return asyncio.run(run())


def list_engineers(url: str) -> list[Engineer]:
    async def run() -> list[Engineer]:
        async with _registry(url) as registry:
            return await registry.list()

    return asyncio.run(run())


def remove_engineer(url: str, data_dir: Path, name: str, *, actor: str,
                    now: dt.datetime) -> Engineer | None:
    async def run() -> Engineer | None:
        async with _registry(url) as registry:
            engineer = await registry.get(name)
            if engineer is None or not await registry.remove(name):
                return None
            await _record(data_dir, url, "engineer_removed", engineer, actor, now)
            return engineer

    return asyncio.run(run())
