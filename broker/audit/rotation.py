"""Rotating the key that wraps subject keys (see `broker.audit.keyring`).

A rotation adds a generation to the key ring, re-wraps every live subject
key under it in one transaction (recorded as ``keys_rotated``, counts only),
and then destroys the older generations. Afterwards a subject key that was
erased before the rotation cannot be opened from any copy of the database
(a backup, old row versions, WAL, a replica): its wrapping key is gone.

The broker rotates from its retention loop whenever the current generation
is older than the personal-data retention, so no erased subject key stays
recoverable from old copies for longer than one retention period. Pure
decision (`rotation_due`) and the transaction are apart, so tests drive it
with a fake clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from broker.audit.chain import format_time
from broker.audit.keyring import WrapRing
from broker.audit.store import AuditLog
from broker.errors import AuditError

__all__ = ["ROTATION_EVENT", "RotationReport", "rotate_wrapping", "rotation_due"]

ROTATION_EVENT = "keys_rotated"


@dataclass(frozen=True)
class RotationReport:
    generation: int
    subjects: int  # live subject keys re-wrapped
    destroyed: list[int]  # generations destroyed
    seq: int  # the keys_rotated event
    wal_truncated: bool


def rotation_due(ring: WrapRing, now: dt.datetime, every_days: int) -> bool:
    """Whether the current generation is at least `every_days` old."""
    return now - ring.current.created >= dt.timedelta(days=every_days)


async def rotate_wrapping(audit: AuditLog, *, now: dt.datetime,
                          actor: str = "retention") -> RotationReport:
    """Rotate once (see the module doc). The new generation is on disk
    before anything is wrapped with it, and the old ones are destroyed only
    after the re-wrapped keys are committed: a failure at any point leaves
    every live key openable (the next rotation finishes the job)."""
    time = format_time(now)
    async with audit.maintenance() as work:
        ring = work.keys.ring
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
