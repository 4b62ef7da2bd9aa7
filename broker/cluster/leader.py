"""The one node that runs the cluster's own jobs (checkpoints, retention,
closing the sessions of nodes that died), chosen by a PostgreSQL session
advisory lock held on a connection of its own.

Whoever holds the lock leads; the others try again every few seconds.
When the leader dies, its connection ends, PostgreSQL releases the lock,
and the next try of another node takes it: failover needs no election of
our own. A leader whose connection breaks stops leading at once (its jobs
are cancelled) before anyone else can take the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import asyncpg

from broker.cluster.membership import DATABASE_TROUBLE

__all__ = ["LEADER_LOCK", "Leader"]

log = logging.getLogger("consentry.cluster")

LEADER_LOCK = 0x636F6E73656E7402  # "consent" + 2: the pg_advisory_lock key
TRY_EVERY_SECONDS = 2.0

Job = Callable[[], Coroutine[Any, Any, None]]


class Leader:
    """Runs `jobs` (each a coroutine that loops for as long as it runs)
    while this node holds the lock."""

    def __init__(self, url: str, jobs: Sequence[Job], *,
                 try_every: float = TRY_EVERY_SECONDS) -> None:
        self.url = url
        self.jobs = tuple(jobs)
        self.try_every = try_every
        self.leading = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self._contend()
            except Exception as exc:  # a lost database, or a job that failed
                # Leading stops; the lock is let go with the connection, and
                # this node (or another) takes it again at a later try.
                log.warning("cluster leadership ended: %r", exc)
            await asyncio.sleep(self.try_every)

    async def _contend(self) -> None:
        """On one connection: try the lock every few seconds; once held,
        lead until the connection or a job fails."""
        conn = await asyncpg.connect(self.url, timeout=10)
        try:
            # A poll of the database (nothing here could set an Event).
            while True:
                if await self._try_lock(conn):
                    break
                await asyncio.sleep(self.try_every)
            log.info("this node leads the cluster (retention, lost nodes)")
            self.leading.set()
            try:
                async with asyncio.TaskGroup() as jobs:
                    for job in self.jobs:
                        jobs.create_task(job())
                    jobs.create_task(self._watch(conn))
            finally:
                self.leading.clear()
                log.warning("this node no longer leads the cluster")
        finally:
            with contextlib.suppress(*DATABASE_TROUBLE):
                await asyncio.wait_for(conn.close(), 5)
            conn.terminate()

    async def _try_lock(self, conn: asyncpg.Connection) -> bool:
        got = await asyncio.wait_for(
            conn.fetchval("SELECT pg_try_advisory_lock($1)", LEADER_LOCK), self.try_every * 5)
        return bool(got)

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Raise once the lock's connection is gone (and the lock with it)."""
        while True:
            await asyncio.sleep(self.try_every)
            await asyncio.wait_for(conn.fetchval("SELECT 1"), self.try_every * 2)
