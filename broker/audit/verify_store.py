"""`audit verify` on any open store (`AuditStore`): the chain from the first
event to the last, walked with `chain.ChainWalk` over the store's own
`scan` pages, and the start of a purged log held against its signed purge
record (`broker.audit.purge_record`).

On PostgreSQL, also the ``checkpoints`` table the cluster's leader writes
(`broker.audit.pg_checkpoints`): each row read with the one checkpoint
checker (`checkpoint_record.parse_checkpoint`, its signature against the
audit key), its ``prev`` link to the row before, and its (seq, hash)
against the events — the newest one past the end of the log means events
were deleted from the end. Only the rows there when the check began are
held against the log (a checkpoint written meanwhile may cover events the
scan has passed).

Witness files (checkpoints kept elsewhere, and a node's own
``checkpoints-postgresql.jsonl``) are held against the events with the same
check as on SQLite (`broker.audit.verify.hold_witness`), the hashes it
needs picked up during the one scan. What `verify_log` adds on SQLite,
reading the file itself, is not here: the finer diagnosis of a break
(moved, inserted or swapped rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nacl.signing

from broker.audit.chain import GENESIS_HASH, ChainWalk, StoredRow, canonical_json, row_hash
from broker.audit.checkpoint_record import GENESIS_CHECKPOINT, Checkpoint, parse_checkpoint
from broker.audit.interface import AuditEvent, AuditStore
from broker.audit.purge_record import PURGE_EVENT, check_purge_body, purge_covers
from broker.audit.verify import Problem, VerifyReport, hold_witness, witness_lines
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


def _short(digest: str) -> str:
    return digest[:12]


async def _check_checkpoints(store: AuditStore, report: VerifyReport, first_prev: str,
                             key: nacl.signing.VerifyKey | None, through_id: int) -> None:
    """Hold the checkpoints table (rows up to `through_id`) against the log
    whose span `report` has (PostgreSQL only)."""
    from broker.audit.pg_checkpoints import checkpoint_rows, event_hashes
    from broker.audit.pg_store import PgAuditLog

    assert isinstance(store, PgAuditLog)
    if key is None:
        raise AuditError("there are signed checkpoints but no audit public key to check "
                         "them with: pass --pubkey FILE (the output of `audit pubkey`)")
    first, last = report.first_seq, report.last_seq
    previous: tuple[int, Checkpoint] | None = None
    beyond: tuple[int, Checkpoint] | None = None
    after = 0
    while rows := await checkpoint_rows(store, after_id=after, through_id=through_id,
                                        limit=_PAGE):
        after = rows[-1][0]
        good: list[tuple[int, Checkpoint]] = []
        for row_id, record in rows:
            where = f"database checkpoint #{row_id}"
            try:
                checkpoint = parse_checkpoint(record, key)
            except AuditError as exc:
                report.add("checkpoint signatures", Problem(
                    f"{where}: not a checkpoint signed by the audit key ({exc}): forged, "
                    "edited, or written with another node's key"))
                continue
            expected = GENESIS_CHECKPOINT if previous is None else previous[1].digest
            if checkpoint.prev != expected:
                after_what = ("the start" if previous is None
                              else f"database checkpoint #{previous[0]}")
                report.add("checkpoint links", Problem(
                    f"{where}: does not follow {after_what} (checkpoints were removed, "
                    "reordered or inserted)"))
            elif previous is not None and checkpoint.seq < previous[1].seq:
                report.add("checkpoint links", Problem(
                    f"{where}: covers seq {checkpoint.seq}, behind seq {previous[1].seq} of "
                    f"database checkpoint #{previous[0]}"))
            previous = (row_id, checkpoint)
            report.checkpoints += 1
            report.last_checkpoint = checkpoint
            good.append((row_id, checkpoint))
        wanted = [cp.seq for _, cp in good
                  if cp.seq > 0 and (first is None or cp.seq >= first)
                  and last is not None and cp.seq <= last]
        stored = await event_hashes(store, wanted) if wanted else {}
        for row_id, cp in good:
            where = f"database checkpoint #{row_id}, {cp.time}"
            if cp.seq == 0:
                if cp.hash != GENESIS_HASH:
                    report.add("checkpoints", Problem(
                        f"{where}: a checkpoint of the empty log must name the genesis hash"))
            elif last is None or cp.seq > last:
                if beyond is None or cp.seq >= beyond[1].seq:
                    beyond = (row_id, cp)
            elif first is not None and cp.seq < first:
                # Purged (if a signed record says so, `_check_start`): only
                # the link to the first kept event can still be checked.
                if cp.seq == first - 1 and cp.hash != first_prev:
                    report.add("checkpoint hashes", Problem(
                        f"checkpoint for seq {cp.seq} names hash {_short(cp.hash)} but event "
                        f"{first} follows hash {_short(first_prev)} ({where})", seq=first))
            elif cp.seq in stored and stored[cp.seq] != cp.hash:
                report.add("checkpoint hashes", Problem(
                    f"checkpoint for seq {cp.seq} names hash {_short(cp.hash)} but event "
                    f"{cp.seq} has hash {_short(stored[cp.seq])} ({where}: an event up to "
                    f"seq {cp.seq} was changed, inserted or removed and the chain "
                    "recomputed)", seq=cp.seq))
            # (a seq missing from the middle is a gap, which the chain check names)
    if beyond is not None:
        row_id, cp = beyond
        end = "log is empty" if last is None else f"log ends at seq {last}"
        report.add("truncation", Problem(
            f"{end} but database checkpoint #{row_id} of {cp.time} covers seq {cp.seq}: "
            "events were deleted from the end (truncated), or the database was replaced "
            "by an older copy", seq=(last or 0) + 1))
    sealed = 0 if report.last_checkpoint is None else report.last_checkpoint.seq
    if last is not None and beyond is None:
        report.unsealed = min(report.events, max(0, last - sealed))


async def _newest_checkpoint_id(store: AuditStore) -> int | None:
    from broker.audit.pg_store import PgAuditLog

    if not isinstance(store, PgAuditLog):
        return None  # an SQLite file's checkpoints: `broker.audit.verify.verify_log`
    from broker.audit.pg_checkpoints import newest_checkpoint_id

    return await newest_checkpoint_id(store)


async def verify_store(store: AuditStore, *, public_key: nacl.signing.VerifyKey | None,
                       witnesses: Sequence[Path] = ()) -> VerifyReport:
    """Walk the whole chain of `store`, and hold its checkpoints (on
    PostgreSQL) and the `witnesses` files against it; tampering is
    reported, never raised (AuditError only if the store or a witness
    cannot be read, or there are checkpoints but no `public_key`)."""
    report = VerifyReport()
    if witnesses and public_key is None:
        raise AuditError("witness files hold signed checkpoints: pass --pubkey FILE (the "
                         "output of `audit pubkey`) to check them")
    witnessed = [line for path in witnesses
                 for line in witness_lines(path, public_key, report)] if public_key else []
    wanted = {cp.seq for _, cp in witnessed}
    hashes: dict[int, str] = {}
    # Before the events: checkpoints written while they are read are not held.
    through_id = await _newest_checkpoint_id(store)
    walk: ChainWalk | None = None
    first_prev = GENESIS_HASH
    purges: list[AuditEvent] = []
    after = 0
    while page := await store.scan(after_seq=after, limit=_PAGE):
        rows = [_stored(event) for event in page]
        hashes.update((event.seq, event.hash) for event in page if event.seq in wanted)
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
    if through_id is None:
        report.unsealed = report.events
        report.notes.append("no checkpoints: events deleted from the end of the log cannot "
                            "be detected until checkpoints are written")
    else:
        await _check_checkpoints(store, report, first_prev, public_key, through_id)
    hold_witness(witnessed, report, first_prev, hashes.get)
    report.close()
    return report
