"""The node table in PostgreSQL: claim a free slot, renew its lease, find
the node that holds a slot, and the sessions each node holds.

Leases are counted by the database's clock (`now()`), never a node's, so
nodes whose clocks disagree still agree on who holds what. A claim is one
statement: two nodes racing for a slot both try to insert it, the second
waits on the first's row and then finds it held, and tries the next.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from broker.cluster.lease import FIRST_SLOT, LAST_SLOT
from broker.cluster.schema import CLUSTER_DDL
from broker.errors import ConfigError

__all__ = ["LostNode", "NodeTable", "connect"]

# pg_advisory_xact_lock key of the schema's creation: two nodes starting at
# once would otherwise race in CREATE TABLE IF NOT EXISTS.
_DDL_LOCK = 0x636F6E73656E7401  # "consent" + 1

# The slot range as parameters $4, $5: the statement is constant text.
_CLAIM = """
INSERT INTO cluster_nodes (slot, node_id, url, expires_at, lost_noted)
SELECT s, $1, $2, now() + make_interval(secs => $3), false
  FROM generate_series($4::int, $5::int) AS s
 WHERE NOT EXISTS (SELECT 1 FROM cluster_nodes n
                    WHERE n.slot = s AND n.expires_at > now() AND n.node_id <> $1)
 ORDER BY s LIMIT 1
ON CONFLICT (slot) DO UPDATE
   SET node_id = EXCLUDED.node_id, url = EXCLUDED.url,
       expires_at = EXCLUDED.expires_at, lost_noted = false
 WHERE cluster_nodes.expires_at <= now() OR cluster_nodes.node_id = EXCLUDED.node_id
RETURNING slot
"""

_RENEW = """
UPDATE cluster_nodes SET expires_at = now() + make_interval(secs => $3)
 WHERE slot = $1 AND node_id = $2 AND expires_at > now()
RETURNING slot
"""


@dataclass(frozen=True)
class LostNode:
    """A node whose lease ran out (or whose slot another node took), with
    the sessions the table still says it held."""

    node_id: str
    slot: int
    sessions: tuple[str, ...]


async def connect(url: str) -> asyncpg.Pool:
    """A small pool for the node table, its schema in place."""
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=3, timeout=10,
                                         command_timeout=10)
    except (OSError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # Never the URL itself: it holds the password.
        raise ConfigError(f"cannot reach the cluster database: {exc}") from None
    try:
        async with pool.acquire() as conn, conn.transaction():
            # Made already (by the audit schema's install, say): a node under
            # the consentry_broker role, which cannot CREATE, goes on.
            if await conn.fetchval("SELECT to_regclass('cluster_sessions')") is None:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _DDL_LOCK)
                await conn.execute(CLUSTER_DDL)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        await pool.close()
        raise ConfigError(f"cannot create the cluster's tables (the broker's database "
                          f"role needs CREATE on its schema the first time): {exc}") from None
    return pool


class NodeTable:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def claim(self, node_id: str, url: str, lease_seconds: float) -> int | None:
        """Take the lowest free slot (or keep our own); None when all are held."""
        for _ in range(LAST_SLOT):  # each retry lost one race for one slot
            slot = await self.pool.fetchval(_CLAIM, node_id, url, lease_seconds,
                                            FIRST_SLOT, LAST_SLOT)
            if slot is not None:
                return int(slot)
            free = await self.pool.fetchval(
                "SELECT count(*) FROM generate_series($1::int, $2::int) s WHERE NOT EXISTS "
                "(SELECT 1 FROM cluster_nodes n WHERE n.slot = s AND n.expires_at > now())",
                FIRST_SLOT, LAST_SLOT)
            if not free:
                return None
        return None

    async def renew(self, slot: int, node_id: str, lease_seconds: float) -> bool:
        """Extend our lease; False if it had already run out (or was taken)."""
        return await self.pool.fetchval(_RENEW, slot, node_id, lease_seconds) is not None

    async def release(self, slot: int, node_id: str) -> None:
        """A clean stop: the slot is free at once (its sessions were ended)."""
        await self.pool.execute(
            "UPDATE cluster_nodes SET expires_at = now(), lost_noted = true "
            "WHERE slot = $1 AND node_id = $2", slot, node_id)
        await self.pool.execute("DELETE FROM cluster_sessions WHERE node_id = $1", node_id)

    async def url_of(self, slot: int) -> str | None:
        """The URL of the live node holding `slot`."""
        url = await self.pool.fetchval(
            "SELECT url FROM cluster_nodes WHERE slot = $1 AND expires_at > now()", slot)
        return None if url is None else str(url)

    async def session_started(self, session: str, node_id: str, slot: int) -> None:
        await self.pool.execute(
            "INSERT INTO cluster_sessions (session_id, node_id, slot) VALUES ($1, $2, $3) "
            "ON CONFLICT (session_id) DO NOTHING", session, node_id, slot)

    async def session_over(self, session: str) -> None:
        await self.pool.execute("DELETE FROM cluster_sessions WHERE session_id = $1", session)

    async def lost_nodes(self, grace_seconds: float) -> list[LostNode]:
        """Nodes gone for `grace_seconds` past their lease and not yet
        noted, and holders of sessions that no slot names any more."""
        rows = await self.pool.fetch(
            """
            SELECT n.node_id, n.slot FROM cluster_nodes n
             WHERE NOT n.lost_noted AND n.expires_at < now() - make_interval(secs => $1)
            UNION
            SELECT s.node_id, min(s.slot) FROM cluster_sessions s
             WHERE NOT EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id = s.node_id)
             GROUP BY s.node_id
            """, grace_seconds)
        lost = []
        for row in rows:
            sessions = await self.pool.fetch(
                "SELECT session_id FROM cluster_sessions WHERE node_id = $1 "
                "ORDER BY started_at, session_id", row["node_id"])
            lost.append(LostNode(str(row["node_id"]), int(row["slot"]),
                                 tuple(str(s["session_id"]) for s in sessions)))
        return lost

    async def noted(self, node: LostNode) -> None:
        """node_lost is recorded for `node`: forget what it held."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE cluster_nodes SET lost_noted = true WHERE node_id = $1 AND slot = $2 "
                "AND expires_at <= now()", node.node_id, node.slot)
            await conn.execute("DELETE FROM cluster_sessions WHERE node_id = $1 AND "
                               "session_id = ANY($2::text[])", node.node_id, list(node.sessions))
