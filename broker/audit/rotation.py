"""Rotating the key that wraps subject keys.

A rotation makes a new wrapping generation current, re-wraps every live
subject key under it in one transaction (recorded as ``keys_rotated``,
counts only), and then destroys the older generation. Afterwards a subject
key that was erased before the rotation cannot be opened from any copy of
the database (a backup, old row versions, WAL, a replica): its wrapping key
is gone.

- SQLite (`broker.audit.keyring`): the ring gains a random generation, and
  loses the older ones once the re-wrapped keys are committed.
- PostgreSQL (`broker.audit.ratchet`): the leader re-wraps under the
  ratchet's next step and moves the database's generation on in the same
  transaction; its own file steps after the commit, and every other node's
  when it sees the database's newer generation (`PgAuditLog.follow_rotation`).

The broker rotates from its retention loop (on a cluster, the leader's)
whenever the current generation is older than the personal-data retention,
so no erased subject key stays recoverable from old copies for longer than
one retention period. The pure decision (`rotation_due`) and the
transaction are apart, so tests drive it with a fake clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.audit.chain import format_time
from broker.audit.interface import RetentionStore
from broker.audit.keys import AuditKeys
from broker.audit.ratchet import check_value
from broker.audit.store import AuditLog
from broker.errors import AuditError

if TYPE_CHECKING:
    # Not at run time: asyncpg loads only for a log in PostgreSQL
    # (`broker.audit.stores`); a store that is not SQLite's is one.
    from broker.audit.pg_store import PgAuditLog

__all__ = ["ROTATION_EVENT", "RotationReport", "rotate_wrapping", "rotation_due",
           "wrapping_since"]

ROTATION_EVENT = "keys_rotated"


@dataclass(frozen=True)
class RotationReport:
    generation: int
    subjects: int  # live subject keys re-wrapped
    destroyed: list[int]  # generations destroyed
    seq: int  # the keys_rotated event
    wal_truncated: bool


def rotation_due(since: dt.datetime, now: dt.datetime, every_days: int) -> bool:
    """Whether the generation current `since` then is at least `every_days` old."""
    return now - since >= dt.timedelta(days=every_days)


async def wrapping_since(audit: RetentionStore) -> dt.datetime | None:
    """Since when the log's current wrapping generation is current; None for
    a log that has none to rotate."""
    if isinstance(audit, AuditLog):
        return None if audit.key_ring is None else audit.key_ring.current.created
    from broker.audit.pg_store import PgAuditLog  # loaded already: `audit` is one

    return await audit.wrapping_since() if isinstance(audit, PgAuditLog) else None


async def rotate_wrapping(audit: RetentionStore, *, now: dt.datetime,
                          actor: str = "retention") -> RotationReport:
    """Rotate once (see the module doc). A failure at any point leaves every
    live key openable (the next rotation finishes the job): on SQLite the
    new generation is on disk before anything is wrapped with it, and the
    old ones are destroyed only after the re-wrapped keys are committed; on
    PostgreSQL the next generation follows from the current one, so nothing
    is written before the commit."""
    if not isinstance(audit, AuditLog):
        from broker.audit.pg_store import PgAuditLog  # loaded already: `audit` is one

        if not isinstance(audit, PgAuditLog):
            raise AuditError("this audit log has no wrapping key to rotate")
        return await _rotate_ratchet(audit, now=now, actor=actor)
    time = format_time(now)
    async with audit.maintenance() as work:
        ring = audit.key_ring
        if ring is None:
            raise AuditError("this audit log has no key ring to rotate")
        await work.require_secure_delete()
        generation = ring.add(now)
        rows = await (await work.db.execute(
            "SELECT pseudonym, wrapped_key FROM subjects WHERE wrapped_key IS NOT NULL"
        )).fetchall()
        rewrapped = 0
        for pseudonym, wrapped in rows:
            key = work.keys.opened(wrapped)
            if key is None:  # from a generation already destroyed: it is erased
                await work.db.execute(
                    "UPDATE subjects SET wrapped_key = NULL, erased = ? WHERE pseudonym = ?",
                    (time, pseudonym))
                continue
            await work.db.execute("UPDATE subjects SET wrapped_key = ? WHERE pseudonym = ?",
                                  (work.keys.wrap(key), pseudonym))
            rewrapped += 1
        seq = await work.append(ROTATION_EVENT, now=now, actor=actor, body={
            "generation": generation.number, "subjects": rewrapped})
    destroyed = ring.forget_before(generation.number)
    # The old wrapped copies were overwritten (secure_delete); the WAL may
    # still hold them until it is truncated.
    truncated = await audit.truncate_wal()
    return RotationReport(generation.number, rewrapped, destroyed, seq, truncated)


async def _rotate_ratchet(audit: PgAuditLog, *, now: dt.datetime, actor: str) -> RotationReport:
    """The rotation on PostgreSQL, in one transaction under the chain head's
    lock (no node makes a subject key meanwhile; their reads still open the
    current generation's keys until the commit)."""
    time = format_time(now)
    async with audit.maintenance() as work:
        number, check, since = await work.lock_wrapping()
        work.ratchet.advance(number, check, since)  # another leader rotated before
        current = work.ratchet.current
        following = work.ratchet.following(now)
        rewrapped: list[tuple[str, bytes | None]] = []
        for pseudonym, wrapped in await work.live_subject_keys():
            # None: from a generation already gone (a database restored from
            # an older copy), so erased; the commit records it so.
            key = work.keys.opened(wrapped)
            rewrapped.append(
                (pseudonym, None if key is None else AuditKeys.wrap_under(key, following)))
        await work.commit_wrapping(current.number, check_value(following), time, rewrapped)
        live = sum(1 for _, key in rewrapped if key is not None)
        seq = await work.append(ROTATION_EVENT, now=now, actor=actor, body={
            "generation": following.number, "subjects": live})
    # Committed: this node forgets the old generation now, the others when
    # they next look (`PgAuditLog.follow_rotation`).
    audit.ratchet.advance(following.number, check_value(following), following.created)
    destroyed = [0, current.number] if current.number == 1 else [current.number]
    # Old row versions of the re-wrapped keys go with VACUUM; WAL and backups
    # keep them, under a generation that no longer exists.
    truncated = await audit.truncate_wal()
    return RotationReport(following.number, live, destroyed, seq, truncated)
