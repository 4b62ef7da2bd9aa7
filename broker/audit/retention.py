"""Retention: how long the audit log keeps what, and the purge that enforces it.

Two retention classes (DESIGN.md, "The audit log"):

- **Personal data** (device alias, IP address, hostname, OS user, the signed
  consent receipt): kept `pii_days` (default 14) from the event that recorded
  it. Older personal rows are deleted; a data subject left with none has its
  key destroyed (crypto-shredding), and its pseudonym row stays, marked with
  the time. The events themselves, and so the hash chain, are untouched: the
  chain never covered personal data.
- **The event skeleton**: kept `event_days` (default 365), removed in whole
  UTC days and only as a prefix of the chain (every seq up to N), so what is
  left is still one unbroken chain. The removal is recorded by an
  ``events_purged`` event whose body carries a record signed with the audit
  key (its one format, for writer and verifier: `broker.audit.purge_record`);
  a verifier accepts a log that starts at N + 1 only if that record names N
  and the hash of event N::

      {"through_seq": N, "last_hash": H, "before": "YYYY-MM-DD", "count": k,
       "record": {"payload": {"kind": "events_purged", "through_seq": N,
                              "last_hash": H, "before": "YYYY-MM-DD", "count": k},
                  "signature": "<base64 Ed25519>"}}

  ``before`` is the first UTC day kept: every removed event was dated before
  it. ``count`` is how many events this purge removed (fewer than N after an
  earlier purge).

Every run appends a ``retention_run`` event with its counts (never personal
data), then truncates the WAL so the deleted bytes, zeroed in the database by
``secure_delete``, leave no older copy in the files. No VACUUM: with
secure_delete, freed pages and cells are overwritten with zeros, so a
rewrite of the whole file would buy nothing but time (the tests read the
files' bytes to prove it).

The cut-offs are pure functions of `now`, so tests use a fake clock; the
broker runs `retention_loop` at start-up and then every hour.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

import nacl.signing

from broker.audit.chain import format_time
from broker.audit.interface import RetentionStore, RetentionTransaction
from broker.audit.purge_record import PURGE_EVENT, purge_body
from broker.audit.rotation import rotate_wrapping, rotation_due, wrapping_since
from broker.errors import AuditError, ConfigError

__all__ = [
    "DEFAULT_EVENT_DAYS",
    "DEFAULT_INTERVAL",
    "DEFAULT_PII_DAYS",
    "PurgeReport",
    "check_retention",
    "describe",
    "event_cutoff",
    "pii_cutoff",
    "purge",
    "purge_through",
    "retention_loop",
]

log = logging.getLogger("consentry.retention")

DEFAULT_PII_DAYS = 14
DEFAULT_EVENT_DAYS = 365
DEFAULT_INTERVAL = 60 * 60.0
# A century: anything longer is a typo, and would overflow the date arithmetic.
_MAX_DAYS = 36_500


@dataclass(frozen=True)
class PurgeReport:
    """What one purge removed; no personal data."""

    time: str
    pii_cutoff: str  # personal data recorded before this was removed
    events_before: str  # YYYY-MM-DD: events dated before this UTC day were removed
    personal_rows: int  # personal rows past their retention
    subjects_shredded: int  # subject keys destroyed (no personal data left)
    subjects_removed: int  # shredded subjects with no event left: pseudonym row dropped
    events_purged: int
    through_seq: int | None  # last seq removed, if any
    purged_personal_rows: int  # personal rows that went with the removed events
    purge_record_seq: int | None  # the signed `events_purged` event, if any
    run_seq: int  # the `retention_run` event
    wal_truncated: bool  # False: another reader kept the WAL; the next run retries


def check_retention(pii_days: int, event_days: int) -> None:
    """Refuse retention periods that are not a whole number of days, 1 to 36500."""
    for flag, days in (("--pii-retention-days", pii_days),
                       ("--event-retention-days", event_days)):
        if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= _MAX_DAYS:
            raise ConfigError(f"{flag} must be a whole number of days from 1 to {_MAX_DAYS}, "
                              f"got {days!r}")


def _utc(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise AuditError("retention times must be timezone-aware")
    return now.astimezone(dt.UTC)


def pii_cutoff(now: dt.datetime, pii_days: int = DEFAULT_PII_DAYS) -> dt.datetime:
    """Personal data recorded before this instant is past its retention."""
    return _utc(now) - dt.timedelta(days=pii_days)


def event_cutoff(now: dt.datetime, event_days: int = DEFAULT_EVENT_DAYS) -> dt.datetime:
    """Midnight UTC starting the oldest day kept: events are removed in whole
    days, so a day is either all there or all gone."""
    day = (_utc(now) - dt.timedelta(days=event_days)).date()
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def purge_through(first_seq: int | None, last_seq: int | None,
                  first_kept: int | None) -> int | None:
    """The last seq to remove, or None: the prefix before `first_kept`.

    `first_seq`/`last_seq` bound the events present; `first_kept` is the
    lowest seq dated at or after the cut-off (None if all are older). Only a
    prefix goes, so an event dated out of order (a clock stepped back) ends
    the prefix early rather than leave a hole in the chain.
    """
    if first_seq is None or last_seq is None:
        return None
    through = last_seq if first_kept is None else first_kept - 1
    return through if through >= first_seq else None


async def purge(
    audit: RetentionStore,
    *,
    now: dt.datetime,
    pii_days: int = DEFAULT_PII_DAYS,
    event_days: int = DEFAULT_EVENT_DAYS,
    signing_key: nacl.signing.SigningKey,
    actor: str = "retention",
) -> PurgeReport:
    """Apply both retention periods once, as of `now`; see the module doc.

    All of it is one transaction with its `events_purged` and `retention_run`
    records: it happens whole, recorded, or not at all (AuditWriteError).
    """
    check_retention(pii_days, event_days)
    time = format_time(now)
    pii_before = format_time(pii_cutoff(now, pii_days))
    events_from = event_cutoff(now, event_days)
    async with audit.maintenance() as work:
        await work.require_secure_delete()
        personal_rows = await work.delete_personal_before(pii_before)
        through, count, purged_personal, record_seq = await _purge_events(
            work, now=now, before=events_from, signing_key=signing_key, actor=actor
        )
        shredded = await work.shred_subjects_without_personal(time)
        # Once a shredded subject has no event left either, even its pseudonym
        # says nothing the log still needs: that this device was once seen.
        removed = await work.remove_forgotten_subjects()
        run_seq = await work.append("retention_run", now=now, actor=actor, body={
            "pii_retention_days": pii_days, "pii_cutoff": pii_before,
            "personal_rows": personal_rows, "subjects_shredded": shredded,
            "subjects_removed": removed, "event_retention_days": event_days,
            "events_before": events_from.date().isoformat(), "events_purged": count,
            "through_seq": through, "purged_personal_rows": purged_personal,
        })
    truncated = await audit.truncate_wal()
    return PurgeReport(
        time=time, pii_cutoff=pii_before, events_before=events_from.date().isoformat(),
        personal_rows=personal_rows, subjects_shredded=shredded, subjects_removed=removed,
        events_purged=count, through_seq=through, purged_personal_rows=purged_personal,
        purge_record_seq=record_seq, run_seq=run_seq, wal_truncated=truncated,
    )


async def _purge_events(
    work: RetentionTransaction,
    *,
    now: dt.datetime,
    before: dt.datetime,
    signing_key: nacl.signing.SigningKey,
    actor: str,
) -> tuple[int | None, int, int, int | None]:
    """Remove the prefix of events dated before `before`; return the last seq
    removed, how many events, how many personal rows went with them, and the
    seq of the signed record."""
    through = purge_through(*await work.event_span(format_time(before)))
    if through is None:
        return None, 0, 0, None
    point = await work.purge_point(through)
    if point is None:
        raise AuditError(f"audit event {through} vanished during the purge")
    last_hash, count = point
    day = before.date().isoformat()
    # Appended before the rows go, so it chains onto the newest event even
    # when every older event is removed; all in one transaction anyway.
    record_seq = await work.append(PURGE_EVENT, now=now, actor=actor, body=purge_body(
        signing_key, through_seq=through, last_hash=last_hash, before=day, count=count))
    purged_personal, deleted = await work.purge_events(through)
    if deleted != count:
        raise AuditError(f"the purge removed {deleted} events, expected {count}; rolled back")
    return through, count, purged_personal, record_seq


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def describe(report: PurgeReport) -> str:
    """One line for the operator's log: counts only."""
    text = (f"retention: {report.personal_rows} personal record(s) older than "
            f"{report.pii_cutoff} removed, {report.subjects_shredded} device key(s) destroyed; "
            f"{report.events_purged} event(s) dated before {report.events_before} removed")
    if not report.wal_truncated:
        text += "; the WAL is still in use by a reader, so old copies remain until the next run"
    return text


async def retention_loop(
    audit: RetentionStore,
    *,
    signing_key: nacl.signing.SigningKey,
    pii_days: int = DEFAULT_PII_DAYS,
    event_days: int = DEFAULT_EVENT_DAYS,
    interval: float = DEFAULT_INTERVAL,
    clock: Callable[[], dt.datetime] = _utcnow,
) -> None:
    """Purge now, then every `interval` seconds, until cancelled.

    A failed run is logged and tried again at the next tick: retention must
    not take the broker down, but the operator has to hear that personal data
    is being kept longer than promised.
    """
    check_retention(pii_days, event_days)
    if interval <= 0:
        raise ConfigError("the retention interval must be positive")
    while True:
        run = asyncio.ensure_future(purge(
            audit, now=clock(), pii_days=pii_days, event_days=event_days,
            signing_key=signing_key, actor="broker",
        ))
        try:
            # Shielded: a shutdown lets a started purge finish (and truncate
            # the WAL) before the log is closed, instead of cutting it in half.
            report = await asyncio.shield(run)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await run
            raise
        except AuditError as exc:
            log.error("retention run failed, personal data may be kept past its "
                      "retention until the next run: %s", exc)
        except Exception:
            log.exception("retention run failed unexpectedly; retrying at the next run")
        else:
            log.info("%s", describe(report))
            await _rotate_if_due(audit, clock(), pii_days)
        await asyncio.sleep(interval)


async def _rotate_if_due(audit: RetentionStore, now: dt.datetime, pii_days: int) -> None:
    """Rotate the subject-key wrapping at least once per personal-data
    retention period (`broker.audit.rotation`), so a key shredded today is
    unrecoverable from any copy of the log older than one period. On a
    cluster this runs on the leader only (the retention loop is its job)."""
    try:
        since = await wrapping_since(audit)
        if since is None or not rotation_due(since, now, pii_days):
            return
        report = await rotate_wrapping(audit, now=now, actor="broker")
    except AuditError as exc:
        log.error("rotating the subject-key wrapping failed; old copies of the log keep "
                  "shredded keys openable until the next run: %s", exc)
        return
    log.info("key rotation: generation %d wraps %d subject key(s); generation(s) %s "
             "destroyed", report.generation, report.subjects,
             ", ".join(map(str, report.destroyed)) or "none")
