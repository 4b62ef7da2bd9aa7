"""A broker as one node of a cluster: its lease (`membership`), the node
table, and the leader's jobs, started and stopped together by the broker.

Routing: a join's nameplate names its node by its slot prefix. A join that
reached another node is answered `moved` with the URL of the node holding
that slot; both ends of a session then meet on one node, and the relay
path is the single node's. The agent needs no redirect: its `join_request`
carries this node's own URL (`node`), and the agent opens the session
connection there rather than at the balancer, which might pick another
node. So each node must be reachable at its `--node-url` by agents and
consoles alike (its own name, or a port of its own on the balancer:
contrib/haproxy.cfg).
"""

from __future__ import annotations

import asyncpg

from broker.cluster.leader import Job, Leader
from broker.cluster.lease import LEASE_SECONDS, nameplate_prefix, slot_of
from broker.cluster.membership import Membership
from broker.cluster.nodes import NodeTable, connect

__all__ = ["ClusterNode"]


class ClusterNode:
    def __init__(self, pool: asyncpg.Pool, database_url: str, node_url: str,
                 lease_seconds: float = LEASE_SECONDS) -> None:
        self.pool = pool
        self.database_url = database_url
        self.lease_seconds = lease_seconds
        self.table = NodeTable(pool)
        self.membership = Membership(self.table, node_url, lease_seconds=lease_seconds,
                                     renew_every=lease_seconds / 5)
        self.leader: Leader | None = None

    @classmethod
    async def open(cls, database_url: str, node_url: str,
                   lease_seconds: float = LEASE_SECONDS) -> ClusterNode:
        return cls(await connect(database_url), database_url, node_url, lease_seconds)

    @property
    def node_id(self) -> str:
        return self.membership.node_id

    @property
    def slot(self) -> int | None:
        return self.membership.slot

    @property
    def healthy_slot(self) -> int | None:
        """Our slot, unless its last renewal failed (for /healthz)."""
        return None if self.membership.renewal_failing else self.slot

    @property
    def prefix(self) -> str | None:
        slot = self.slot
        return None if slot is None else nameplate_prefix(slot)

    def owner_slot(self, nameplate: str) -> int | None:
        return slot_of(nameplate)

    async def url_of(self, slot: int) -> str | None:
        return await self.table.url_of(slot)

    def lead(self, jobs: list[Job]) -> None:
        self.leader = Leader(self.database_url, jobs)
        self.leader.start()

    async def close(self) -> None:
        if self.leader is not None:
            await self.leader.stop()
        await self.membership.leave()
        await self.pool.close()
