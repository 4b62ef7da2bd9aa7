"""Moving a single node's SQLite audit log into PostgreSQL (`audit migrate`).

The copy is exact: every event keeps its seq, prev_hash and hash, every
personal row its ciphertext and alias tag, every checkpoint its signed
record. So the chain, the signed purge records and the checkpoints hold on
PostgreSQL exactly as they held on SQLite, and `audit verify
--database-url` checks the same log.

Subject keys alone change their wrapping, not their value: on SQLite they
are wrapped under the data directory's key ring (`audit-wrap.keys`), on
PostgreSQL under the cluster's ratchet (`audit-ratchet.key`, made here by
the first open of the empty target), which is what every node shares. Each
live key is unwrapped with the one and wrapped under the other's current
generation; a key the ring cannot open (a ring that does not belong to
this audit.db) stops the copy, as erasing it silently would lose data.
Erased subjects stay erased.

The rules, in order:

* The SQLite log is checked first (`verify_log`, the full check with its
  checkpoints); a log that is not intact is not copied.
* The target must hold no audit data (no event, subject, personal row or
  checkpoint); otherwise nothing is written. Its schema is installed if
  absent, so the URL must be the database owner's (the broker role may not
  move the chain head nor write subjects' keys).
* Everything goes in one PostgreSQL transaction: a failure anywhere (a
  dropped connection, a row PostgreSQL refuses, the SQLite file changing
  under the copy) rolls all of it back and the target stays empty.
  (Opening the target, before that transaction, installs the schema if it
  was absent and claims the log for this data directory's master key, as
  the first node to open it would: both stay, and are what a retry needs.)
* Rows are read from one SQLite read snapshot and written in batches
  (`COPY`), so memory stays bounded whatever the size of the log.
* The chain head's trigger (`events_follow_head`: each event must follow
  the head, which it moves on) is off for the copy, inside the transaction
  and so for no one else: through it, one transaction's copy slows with the
  square of the log's size. Instead every copied event is walked with
  `chain.ChainWalk` (seq follows, prev_hash is the last hash, and the hash
  is recomputed from the row), the head is set once where the copied chain
  ends (a log whose oldest events were purged simply starts later, as it
  did), and the trigger is back on before the migration's own record.
* The copy is refused if the broker appended to audit.db meanwhile (stop it
  first): what lands in PostgreSQL is the whole log that was checked.
* The registry comes along, in the same transaction: the engineers of
  `registry.db` and the devices' key bindings (their pseudonyms are the
  master key's, the same here). An engineer or a device the cluster already
  has is kept as the cluster has it (counted, not copied), so a name added
  to the cluster before the move is not replaced by a file's.
* The migration is itself recorded, after the copied rows and through the
  trigger, as `audit_migrated` (counts only, no personal data).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import nacl.signing

from broker.audit.chain import GENESIS_HASH, ChainWalk, StoredRow
from broker.audit.keyring import KEYRING_NAME, WrapRing
from broker.audit.keys import AuditKeys, SubjectKeyDestroyed, load_or_create_master_key
from broker.audit.pg_schema import LOCK_HEAD, Connection
from broker.audit.pg_store import PgAuditLog
from broker.audit.schema import SCHEMA_VERSION, has_checkpoint_table
from broker.audit.verify import verify_log
from broker.errors import AuditError, ConfigError
from broker.registry import REGISTRY_FILE

__all__ = ["MIGRATED_EVENT", "MigrationReport", "TargetNotEmpty", "migrate_to_postgres"]

MIGRATED_EVENT = "audit_migrated"
# The trigger that keeps the chain head (`broker.audit.pg_schema`).
_HEAD_TRIGGER = "events_follow_head"
# Rows per COPY: big enough to be quick, small enough to hold in memory.
BATCH = 2000

_EVENT_COLUMNS = ("seq", "time", "type", "session", "actor", "subject", "body", "prev_hash",
                  "hash")
_PERSONAL_COLUMNS = ("seq", "pseudonym", "created", "ciphertext", "alias_tag")
_SUBJECT_COLUMNS = ("pseudonym", "wrapped_key", "created", "erased")
# The same columns, in the same order, read from SQLite.
_SELECT_SUBJECTS = "SELECT pseudonym, wrapped_key, created, erased FROM subjects ORDER BY pseudonym"
_SELECT_EVENTS = ("SELECT seq, time, type, session, actor, subject, body, prev_hash, hash "
                  "FROM events WHERE seq > ? ORDER BY seq LIMIT ?")
_SELECT_PERSONAL = ("SELECT seq, pseudonym, created, ciphertext, alias_tag FROM personal "
                    "WHERE seq > ? AND seq <= ? ORDER BY seq")

Progress = Callable[[int, int], None]


class TargetNotEmpty(AuditError):
    """The PostgreSQL log already holds audit data: nothing was written."""


@dataclass(frozen=True)
class MigrationReport:
    events: int
    first_seq: int | None
    through_seq: int | None
    subjects: int
    personal_rows: int
    checkpoints: int
    record_seq: int  # the `audit_migrated` event
    engineers: int = 0  # copied from registry.db
    devices: int = 0
    kept: int = 0  # engineers and devices the cluster already had


def _open_snapshot(db_path: Path) -> sqlite3.Connection:
    """audit.db read-only, inside one read transaction: every SELECT sees
    the same log, whatever a writer does meanwhile."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(db_path.absolute()))}?mode=ro", uri=True,
                               isolation_level=None)
        conn.execute("BEGIN")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit log {db_path}: {exc}") from exc
    if version != SCHEMA_VERSION:
        conn.close()
        raise AuditError(f"{db_path} is at schema version {version}, not {SCHEMA_VERSION}: "
                         "open it once with this consentry first (run `consentry-broker "
                         "audit list --limit 1` on it), then migrate")
    return conn


def _batches(cursor: sqlite3.Cursor) -> Iterator[list[Any]]:
    while rows := cursor.fetchmany(BATCH):
        yield rows


def check_source(data_dir: Path, *, public_key: nacl.signing.VerifyKey | None,
                 checkpoint_file: Path | None) -> None:
    """AuditError unless ``data_dir/audit.db`` is there, has its master key,
    and passes the full `audit verify`."""
    db_path = data_dir / "audit.db"
    if not db_path.is_file():
        raise ConfigError(f"no audit log at {db_path} to migrate (give --data-dir the "
                          "broker's data directory)")
    if not (data_dir / "master.key").is_file():
        raise ConfigError(f"{db_path} has no master.key beside it: its pseudonyms and "
                          "personal data are made with that key; restore it first")
    report = verify_log(db_path, public_key=public_key, checkpoint_file=checkpoint_file)
    if not report.ok:
        first = report.ordered_problems()[0].message if report.problems else report.summary()
        raise AuditError(f"{db_path} is not intact, so it is not copied (first problem: "
                         f"{first}); run `consentry-broker audit verify` for the full report")


async def migrate_to_postgres(data_dir: Path, database_url: str, *, now: dt.datetime,
                              actor: str, progress: Progress | None = None) -> MigrationReport:
    """Copy the checked SQLite log in `data_dir` into the empty PostgreSQL log
    at `database_url` (see the module docstring); `progress(copied, total)`
    after each batch of events. Call `check_source` first."""
    db_path = data_dir / "audit.db"
    source = _open_snapshot(db_path)
    try:
        source_keys = _sqlite_keys(data_dir)
        target = await PgAuditLog.open(database_url, data_dir)
        try:
            return await _copy(source, db_path, target, source_keys, now=now, actor=actor,
                               progress=progress)
        finally:
            await target.close()
    finally:
        source.close()


def _sqlite_keys(data_dir: Path) -> AuditKeys:
    """The keys the SQLite log's subject keys are wrapped with: the master
    key's generation, and the ring's where the data directory has one."""
    ring_path = data_dir / KEYRING_NAME
    ring = WrapRing.load_or_create(ring_path) if ring_path.exists() else None
    return AuditKeys(load_or_create_master_key(data_dir / "master.key"), ring)


def _rewrapped(row: Any, source: AuditKeys, target: AuditKeys) -> tuple[Any, ...]:
    """A subjects row with its live key wrapped for the PostgreSQL log."""
    pseudonym, wrapped, created, erased = row
    if wrapped is None or erased is not None:
        return (pseudonym, None, created, erased)
    try:
        subject_key = source.unwrap(bytes(wrapped))
    except SubjectKeyDestroyed as exc:
        raise AuditError(f"the key of subject {pseudonym[:12]}… cannot be opened with this "
                         f"data directory's keys ({exc}), though audit.db says it is not "
                         f"erased: are {KEYRING_NAME} and master.key the ones that go with "
                         "this audit.db?") from exc
    return (pseudonym, target.wrap(subject_key), created, erased)


async def _copy(source: sqlite3.Connection, db_path: Path, target: PgAuditLog,
                source_keys: AuditKeys, *, now: dt.datetime, actor: str,
                progress: Progress | None) -> MigrationReport:
    where = target.url
    try:
        total, first_seq, last_seq = source.execute(
            "SELECT COUNT(*), MIN(seq), MAX(seq) FROM events").fetchone()
        first_prev = GENESIS_HASH
        if first_seq is not None:
            first_prev = source.execute("SELECT prev_hash FROM events WHERE seq = ?",
                                        (first_seq,)).fetchone()[0]
        async with target.maintenance() as work:
            conn = work.conn
            await _require_empty(conn, where)
            # The head's trigger moves the one-row head on for each event:
            # inside one transaction every such update leaves a row version
            # the next lookup walks past, so a copy through it slows with
            # the square of the log (40,000 events: 50 s). Off for the copy,
            # in this transaction only (a failure rolls the DDL back too);
            # `_copy_events` holds every row to the same rule and more.
            try:
                await conn.execute(f"ALTER TABLE events DISABLE TRIGGER {_HEAD_TRIGGER}")
            except asyncpg.InsufficientPrivilegeError as exc:
                # The first write: a role that may not make it may not copy.
                raise AuditError(f"this role may not write the audit log's tables "
                                 f"directly ({exc}): run migrate with the database owner's "
                                 "URL (the broker role can only append)") from exc
            subjects = 0
            for rows in _batches(source.execute(_SELECT_SUBJECTS)):
                await conn.copy_records_to_table(
                    "subjects", records=[_rewrapped(row, source_keys, work.keys) for row in rows],
                    columns=_SUBJECT_COLUMNS)
                subjects += len(rows)
            events, personal, last_hash = await _copy_events(source, conn, first_seq,
                                                             first_prev, total, progress)
            if last_seq is not None:
                # The head where the copied chain ends: the next event (ours,
                # below) follows it, through the trigger again.
                await conn.execute("UPDATE chain_head SET seq = $1, hash = $2 WHERE one",
                                   last_seq, last_hash)
            await conn.execute(f"ALTER TABLE events ENABLE TRIGGER {_HEAD_TRIGGER}")
            checkpoints = 0
            if has_checkpoint_table(source):
                for rows in _batches(source.execute(
                        "SELECT seq, record FROM checkpoints ORDER BY id")):
                    await conn.copy_records_to_table("checkpoints", records=rows,
                                                     columns=("seq", "record"))
                    checkpoints += len(rows)
            _require_unchanged(db_path, last_seq)
            engineers, devices, kept = await _copy_registry(db_path.with_name(REGISTRY_FILE),
                                                            conn)
            record_seq = await work.append(MIGRATED_EVENT, now=now, actor=actor, body={
                "from": "sqlite", "events": events, "first_seq": first_seq,
                "through_seq": last_seq, "subjects": subjects, "personal_rows": personal,
                "checkpoints": checkpoints, "engineers": engineers, "devices": devices})
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log {db_path}: {exc}; nothing was "
                         f"written to {where}") from exc
    except TargetNotEmpty:
        raise
    except AuditError as exc:
        raise AuditError(f"{exc}; nothing was written to {where}") from exc
    return MigrationReport(events, first_seq, last_seq, subjects, personal, checkpoints,
                           record_seq, engineers, devices, kept)


def _registry_rows(path: Path) -> tuple[list[Any], list[Any]]:
    """The engineers and device bindings of `path` (registry.db), or none."""
    if not path.is_file():
        return [], []
    try:
        source = sqlite3.connect(f"file:{quote(str(path.absolute()))}?mode=ro", uri=True)
        try:
            return (source.execute("SELECT name, display, role, public_key, added "
                                   "FROM engineers ORDER BY name").fetchall(),
                    source.execute("SELECT pseudonym, key_sha256, first_seen FROM devices "
                                   "ORDER BY pseudonym").fetchall())
        finally:
            source.close()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the registry {path}: {exc}") from exc


async def _copy_registry(path: Path, conn: Connection) -> tuple[int, int, int]:
    """The engineers and device bindings of `path` into the cluster's
    tables, where the cluster has no such name or device yet: (engineers
    copied, devices copied, rows the cluster already had)."""
    engineers, devices = _registry_rows(path)
    copied_engineers = copied_devices = 0
    for row in engineers:
        status = await conn.execute(
            "INSERT INTO engineers (name, display, role, public_key, added) "
            "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING", *row)
        copied_engineers += status == "INSERT 0 1"
    for row in devices:
        status = await conn.execute(
            "INSERT INTO devices (pseudonym, key_sha256, first_seen) VALUES ($1, $2, $3) "
            "ON CONFLICT (pseudonym) DO NOTHING", *row)
        copied_devices += status == "INSERT 0 1"
    kept = len(engineers) + len(devices) - copied_engineers - copied_devices
    return copied_engineers, copied_devices, kept


async def _require_empty(conn: Connection, where: str) -> None:
    """TargetNotEmpty if the PostgreSQL log holds anything (with the head's
    lock held, so no node can start writing while we copy)."""
    head = await conn.fetchrow(LOCK_HEAD)
    row = await conn.fetchrow(
        "SELECT (SELECT COUNT(*) FROM events), (SELECT COUNT(*) FROM subjects), "
        "(SELECT COUNT(*) FROM personal), (SELECT COUNT(*) FROM checkpoints)")
    if head is None or row is None:
        raise AuditError(f"the audit database {where} has no chain head (was it set up "
                         "by hand?)")
    events, subjects, personal, checkpoints = (int(v) for v in row)
    if events or subjects or personal or checkpoints or int(head["seq"]) != 0:
        raise TargetNotEmpty(
            f"the audit database {where} already holds an audit log ({events} events, "
            f"head at seq {head['seq']}, {subjects} subject(s), {checkpoints} checkpoint(s)): "
            "migrate copies into an empty one only; nothing was written")


async def _copy_events(source: sqlite3.Connection, conn: Connection, first_seq: int | None,
                       first_prev: str, total: int,
                       progress: Progress | None) -> tuple[int, int, str]:
    """Events in seq order, each batch followed by its personal rows (which
    reference them). Each is walked on the way (`ChainWalk`: its seq follows
    the last, its prev_hash is that one's hash, its own hash is its
    contents'), which is what the head's trigger would check, and more.
    How many events and personal rows, and the last event's hash."""
    walk = ChainWalk(first_seq or 1, first_prev)
    events = personal = 0
    after = (first_seq or 1) - 1
    while True:
        rows: list[StoredRow] = source.execute(
            _SELECT_EVENTS, (after, BATCH)).fetchall()
        if not rows:
            return events, personal, walk.expected_prev
        broken = walk.first_break(rows)
        if broken is not None:
            raise AuditError(f"seq {rows[broken][0]} of audit.db does not follow the chain "
                             "(it changed after the check?)")
        await conn.copy_records_to_table("events", records=rows, columns=_EVENT_COLUMNS)
        through = rows[-1][0]
        personal_rows = source.execute(
            _SELECT_PERSONAL, (after, through)).fetchall()
        if personal_rows:
            await conn.copy_records_to_table("personal", records=personal_rows,
                                             columns=_PERSONAL_COLUMNS)
        events += len(rows)
        personal += len(personal_rows)
        after = through
        if progress is not None:
            progress(events, total)


def _require_unchanged(db_path: Path, last_seq: int | None) -> None:
    """AuditError if audit.db gained events since the snapshot was taken."""
    try:
        conn = sqlite3.connect(f"file:{quote(str(db_path.absolute()))}?mode=ro", uri=True)
        try:
            now_last = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log {db_path}: {exc}") from exc
    if now_last != last_seq:
        raise AuditError(f"{db_path} gained events while it was being copied (is the broker "
                         "still running on it?): stop it, then migrate again")

