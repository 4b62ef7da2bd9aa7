"""`audit verify` on any open store (`AuditStore`): the chain from the first
event to the last, walked with `chain.ChainWalk` over the store's own
`scan` pages, and the start of a purged log held against its signed purge
record (`broker.audit.purge_record`).

What `broker.audit.verify.verify_log` adds on SQLite, reading the file
itself, is not here yet: the checkpoint file and table, witnesses, and the
finer diagnosis of a break (moved, inserted or swapped rows). A PostgreSQL
log has no checkpoints until the cluster's leader writes them; the report
says so, as `verify_log` does for a log never checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence

import nacl.signing

from broker.audit.chain import GENESIS_HASH, ChainWalk, StoredRow, canonical_json, row_hash
from broker.audit.interface import AuditEvent, AuditStore
from broker.audit.purge_record import PURGE_EVENT, check_purge_body, purge_covers
from broker.audit.verify import Problem, VerifyReport
from broker.errors import AuditError

__all__ = ["verify_store"]

_PAGE = 1000


def _stored(event: AuditEvent) -> StoredRow:
    # The body as the store keeps it: its canonical text (`chain.check_body`).
    body_text = canonical_json(event.body).decode()
    return (event.seq, event.time, event.type, event.session, event.actor, event.subject,
            body_text, event.prev_hash, event.hash)


def _break(row: StoredRow, expected_seq: int) -> Problem:
    seq = row[0]
    if seq != expected_seq:
        gap = (f"seq {expected_seq} is missing" if seq == expected_seq + 1
               else f"seq {expected_seq}-{seq - 1} are missing")
        return Problem(f"seq {seq}: does not follow seq {expected_seq - 1} (an event is "
                       f"missing or was inserted: {gap})", seq=seq)
    if row_hash(row) != row[8]:
        return Problem(f"seq {seq}: contents changed (hash does not match)", seq=seq)
    return Problem(f"seq {seq}: does not follow seq {seq - 1} (an event is missing or was "
                   f"inserted: its prev_hash is not the hash of seq {seq - 1})", seq=seq)


def _check_start(report: VerifyReport, first_prev: str, purges: Sequence[AuditEvent],
                 key: nacl.signing.VerifyKey | None) -> None:
    first = report.first_seq
    if first is None:
        return
    if first == 1:
        if first_prev != GENESIS_HASH:
            report.add("events", Problem(
                "seq 1: does not start the chain (its prev_hash is not the genesis hash)",
                seq=1))
        return
    reasons: list[str] = []
    for event in purges:
        try:
            if key is None:
                raise AuditError("there is no audit public key to check it with")
            purge = check_purge_body(event.body, key)
        except AuditError as exc:
            reasons.append(f"the purge record at seq {event.seq} is not valid: {exc}")
            continue
        if purge_covers(purge, first, first_prev):
            report.purged_through = purge.through_seq
            return
        reasons.append(f"the purge record at seq {event.seq} covers seq 1-{purge.through_seq}")
    why = "; ".join(reasons) if reasons else "there is no events_purged record"
    report.add("events", Problem(
        f"seq {first}: the log starts here, but no valid signed purge record accounts "
        f"for seq 1-{first - 1} ({why}): events were deleted from the start", seq=first))


async def verify_store(store: AuditStore, *,
                       public_key: nacl.signing.VerifyKey | None) -> VerifyReport:
    """Walk the whole chain of `store`; tampering is reported, never raised
    (AuditError only if the store cannot be read)."""
    report = VerifyReport()
    walk: ChainWalk | None = None
    first_prev = GENESIS_HASH
    purges: list[AuditEvent] = []
    after = 0
    while page := await store.scan(after_seq=after, limit=_PAGE):
        rows = [_stored(event) for event in page]
        if walk is None:
            report.first_seq, first_prev = rows[0][0], rows[0][7]
            walk = ChainWalk(rows[0][0], rows[0][7])
        report.events += len(rows)
        if not report.problems:
            broken = walk.first_break(rows)
            good = page if broken is None else page[:broken]
            purges.extend(event for event in good if event.type == PURGE_EVENT)
            if broken is not None:
                report.add("events", _break(rows[broken], walk.expected_seq))
        report.last_seq = after = page[-1].seq
    _check_start(report, first_prev, purges, public_key)
    report.unsealed = report.events
    report.notes.append("no checkpoints: events deleted from the end of the log cannot be "
                        "detected until checkpoints are written")
    report.close()
    return report
