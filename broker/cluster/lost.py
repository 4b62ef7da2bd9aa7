"""The leader's job of closing, in the audit log, what a dead node held:
one `node_lost` event per node whose lease ran out (past a grace period, so
a node that only missed a renewal or two is not declared dead), naming the
sessions the node table says it held."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any, Protocol

from broker.cluster.lease import LEASE_SECONDS
from broker.cluster.nodes import NodeTable

__all__ = ["NODE_LOST", "close_lost_nodes", "lost_nodes_loop"]

log = logging.getLogger("consentry.cluster")

NODE_LOST = "node_lost"
LOOK_EVERY_SECONDS = 5.0


class Appender(Protocol):
    """The part of an AuditStore this job uses."""

    async def append(self, type: str, *, now: dt.datetime,
                     body: Mapping[str, Any] | None = None) -> int: ...


async def close_lost_nodes(table: NodeTable, audit: Appender, *, grace: float) -> int:
    """Record node_lost for each lost node not yet recorded; how many."""
    lost = await table.lost_nodes(grace)
    for node in lost:
        await audit.append(NODE_LOST, now=dt.datetime.now(dt.UTC), body={
            "node": node.node_id, "slot": node.slot, "sessions": list(node.sessions)})
        await table.noted(node)
        log.warning("cluster node %s (slot %d) is lost; closed its %d session(s) in the log",
                    node.node_id, node.slot, len(node.sessions))
    return len(lost)


async def lost_nodes_loop(table: NodeTable, audit: Appender, *,
                          grace: float = LEASE_SECONDS,
                          every: float = LOOK_EVERY_SECONDS) -> None:
    while True:
        await close_lost_nodes(table, audit, grace=grace)
        await asyncio.sleep(every)
