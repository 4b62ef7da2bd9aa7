"""This node's place in the cluster: it claims a slot, renews the lease
every few seconds, and tells the broker when the lease is lost (it then
stops issuing nameplates) and when a slot is held again.

A renewal that fails (the database unreachable, the lease already run out)
does not end membership: the loop keeps trying, and once the lease is lost
it claims a slot afresh, which may be another one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable

import asyncpg

from broker.cluster.lease import LEASE_SECONDS, RENEW_EVERY_SECONDS, Lease
from broker.cluster.nodes import NodeTable

__all__ = ["Membership"]

log = logging.getLogger("consentry.cluster")

# What a renewal or claim may fail with while the database is away.
DATABASE_TROUBLE = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


class Membership:
    """`on_change(slot)` is called with the new slot when one is held, and
    with None when the lease is lost."""

    def __init__(self, table: NodeTable, url: str, *,
                 lease_seconds: float = LEASE_SECONDS,
                 renew_every: float = RENEW_EVERY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.url = url
        self.node_id = secrets.token_hex(8)  # one per process: a restart is a new node
        self.lease_seconds = lease_seconds
        self.renew_every = renew_every
        self.clock = clock
        self.lease: Lease | None = None
        self.on_change: Callable[[int | None], None] = lambda _slot: None
        self._task: asyncio.Task[None] | None = None
        # The last renewal failed (the database unreachable): the lease may
        # still be held, but /healthz already says 503 - a node that cannot
        # reach the database cannot record what it would be sent.
        self.renewal_failing = False

    @property
    def slot(self) -> int | None:
        """Our slot while the lease is held, else None."""
        lease = self.lease
        return lease.slot if lease is not None and lease.held(self.clock()) else None

    async def join(self) -> int | None:
        """The first claim (before serving), then the renewing task."""
        await self._claim()
        self._task = asyncio.create_task(self._keep())
        return self.slot

    async def leave(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        lease, self.lease = self.lease, None
        if lease is not None:
            with contextlib.suppress(*DATABASE_TROUBLE):
                await self.table.release(lease.slot, self.node_id)

    async def _claim(self) -> None:
        asked = self.clock()
        slot = await self.table.claim(self.node_id, self.url, self.lease_seconds)
        if slot is None:
            log.error("every cluster slot is held by a live node; this node issues no "
                      "nameplates until one is free")
            return
        self.lease = Lease(slot, asked, self.lease_seconds)
        log.info("holding cluster slot %d", slot)
        self.on_change(slot)

    async def _renew(self) -> None:
        lease = self.lease
        if lease is None or not lease.held(self.clock()):
            if lease is not None:
                self._lost(lease, "it could not be renewed in time")
            await self._claim()
            return
        asked = self.clock()
        if await self.table.renew(lease.slot, self.node_id, self.lease_seconds):
            self.lease = lease.renewed(asked)
        else:
            self._lost(lease, "the database says it ran out")

    def _lost(self, lease: Lease, why: str) -> None:
        self.lease = None
        log.error("lost the lease on cluster slot %d (%s): no new nameplates until a slot "
                  "is held again", lease.slot, why)
        self.on_change(None)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self.renew_every)
            try:
                async with asyncio.timeout(self.renew_every * 2):
                    await self._renew()
                self.renewal_failing = False
            except DATABASE_TROUBLE as exc:
                self.renewal_failing = True
                log.warning("cluster lease renewal failed: %s", exc)
                lease = self.lease
                if lease is not None and not lease.held(self.clock()):
                    self._lost(lease, "the database is unreachable")
