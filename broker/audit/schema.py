"""The audit log's SQLite schema: every table, index and trigger, and the
migrations that bring an older file up to date.

All the DDL of ``audit.db`` is here, the checkpoints table too, so a second
backend has one place to read what it must hold, and the SQLite files keep
exactly the statements they were made with (SQLite stores each CREATE's text;
an existing data directory opens unchanged).

* `initialise` (run by `AuditLog.open`): the pragmas, `SCHEMA` and the
  version-2 migration (`_migrate`), recorded in ``PRAGMA user_version``.
* `ensure_checkpoint_table` (run by the checkpointer before its first
  checkpoint): the ``checkpoints`` table and its append-only guards. Made
  lazily, as before: a log never checkpointed has no such table, and
  `has_checkpoint_table` is how a reader tells.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite

from broker.audit.keys import AuditKeys
from broker.errors import AuditError

__all__ = [
    "CHECKPOINTS_SCHEMA",
    "NO_DELETE_TRIGGER",
    "SCHEMA",
    "SCHEMA_VERSION",
    "V2_STATEMENTS",
    "ensure_checkpoint_table",
    "has_checkpoint_table",
    "initialise",
    "rollback_quietly",
]

# 1: events, subjects, personal. 2: personal.alias_tag (blind index) and
# indexes for the admin queries (`V2_STATEMENTS`).
SCHEMA_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq       INTEGER PRIMARY KEY,
    time      TEXT NOT NULL,
    type      TEXT NOT NULL,
    session   TEXT,
    actor     TEXT,
    subject   TEXT,
    body      TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events(session);
CREATE INDEX IF NOT EXISTS events_type ON events(type);
CREATE INDEX IF NOT EXISTS events_subject ON events(subject);
CREATE TRIGGER IF NOT EXISTS events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
-- The delete guard (`NO_DELETE_TRIGGER`) is made by `_migrate`, which also
-- replaces the unconditional one of older files.
CREATE TABLE IF NOT EXISTS purge_gate (through_seq INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS subjects (
    pseudonym   TEXT PRIMARY KEY,
    wrapped_key BLOB,
    created     TEXT NOT NULL,
    erased      TEXT
);

CREATE TABLE IF NOT EXISTS personal (
    seq        INTEGER PRIMARY KEY REFERENCES events(seq),
    pseudonym  TEXT NOT NULL REFERENCES subjects(pseudonym),
    created    TEXT NOT NULL,
    ciphertext BLOB NOT NULL,
    alias_tag  BLOB
);
CREATE INDEX IF NOT EXISTS personal_pseudonym ON personal(pseudonym);
CREATE INDEX IF NOT EXISTS personal_created ON personal(created);
"""

# Run one by one inside the migration's transaction, after `alias_tag` exists
# (a version-1 database gets it from ALTER TABLE first).
V2_STATEMENTS = (
    "CREATE INDEX IF NOT EXISTS events_actor ON events(actor)",
    "CREATE INDEX IF NOT EXISTS events_time ON events(time)",
    "CREATE INDEX IF NOT EXISTS personal_alias_tag ON personal(alias_tag)",
)

# Events are deleted only by the retention purge (`broker.audit.retention`),
# which inserts a `purge_gate` row naming the last seq it may remove and
# deletes it again in the same transaction, so no other connection ever sees
# the gate open. This guards against mistakes (a stray DELETE, a buggy tool),
# not against someone with write access to the file, who can drop triggers:
# the hash chain, the signed checkpoints and the signed `events_purged`
# record are what make such a deletion detectable.
NO_DELETE_TRIGGER = """
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM purge_gate WHERE OLD.seq <= purge_gate.through_seq)
BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END
"""


# Kept by `broker.audit.checkpoints`: one row per signed checkpoint, the
# record as its canonical JSON text (the same text as the checkpoint file's line).
CHECKPOINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    id     INTEGER PRIMARY KEY,
    seq    INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE TRIGGER IF NOT EXISTS checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
"""


async def initialise(db: aiosqlite.Connection, db_path: Path, keys: AuditKeys) -> None:
    """Set the connection's pragmas and bring the file to `SCHEMA_VERSION`
    (creating it if empty); AuditError if it cannot, or is from a newer
    consentry."""
    try:
        row = await (await db.execute("PRAGMA user_version")).fetchone()
        if row is not None and row[0] > SCHEMA_VERSION:
            raise AuditError(f"{db_path} was made by a newer consentry; upgrade to use it")
        row = await (await db.execute("PRAGMA journal_mode=WAL")).fetchone()
        if row is None or str(row[0]).lower() != "wal":
            raise AuditError(f"{db_path}: cannot switch the audit log to WAL mode")
        # FULL: every commit is fsynced — an event acknowledged is an event kept.
        await db.execute("PRAGMA synchronous=FULL")
        # Deleted personal data is overwritten with zeros, not left in free pages.
        await db.execute("PRAGMA secure_delete=ON")
        await db.execute("PRAGMA foreign_keys=ON")
        # One transaction inside the script (executescript would commit any
        # transaction opened outside it): the schema appears whole or not at all.
        await db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}COMMIT;")
        await _migrate(db, keys)
    except sqlite3.Error as exc:
        await rollback_quietly(db)
        raise AuditError(f"cannot initialise the audit log {db_path}: {exc}") from exc

async def _migrate(db: aiosqlite.Connection, keys: AuditKeys) -> None:
    """Bring a version-1 database to version 2, in one transaction.

    Statement by statement, not a script, so the column check runs under
    the same write lock as the ALTER: two processes opening an old file at
    once cannot both add the column. Aliases already stored get their tag,
    so the alias search also finds devices recorded before the upgrade.
    """
    await db.execute("BEGIN IMMEDIATE")
    rows = await (await db.execute("PRAGMA table_info(personal)")).fetchall()
    if "alias_tag" not in {row[1] for row in rows}:
        await db.execute("ALTER TABLE personal ADD COLUMN alias_tag BLOB")
        await _backfill_alias_tags(db, keys)
    for statement in V2_STATEMENTS:
        await db.execute(statement)
    # Checked, not versioned: the gated trigger works with older readers,
    # and rewriting the schema on every open would disturb other connections.
    row = await (await db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'events_no_delete'"
    )).fetchone()
    if row is None or "purge_gate" not in str(row[0]):
        await db.execute("DROP TRIGGER IF EXISTS events_no_delete")
        await db.execute(NO_DELETE_TRIGGER)
    await db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    await db.commit()

async def _backfill_alias_tags(db: aiosqlite.Connection, keys: AuditKeys) -> None:
    rows = await (await db.execute(
        "SELECT p.seq, p.ciphertext, s.wrapped_key FROM personal AS p "
        "JOIN subjects AS s ON s.pseudonym = p.pseudonym WHERE s.wrapped_key IS NOT NULL"
    )).fetchall()
    subject_keys: dict[bytes, bytes] = {}
    for seq, ciphertext, wrapped in rows:
        if wrapped not in subject_keys:
            subject_keys[wrapped] = keys.unwrap(wrapped)
        fields = keys.open_personal(subject_keys[wrapped], seq, ciphertext)
        if fields and fields.get("alias"):
            await db.execute("UPDATE personal SET alias_tag = ? WHERE seq = ?",
                             (keys.alias_tag(fields["alias"]), seq))


async def rollback_quietly(db: aiosqlite.Connection) -> None:
    """Roll back whatever transaction `db` has open, if it still can."""
    try:
        if db.in_transaction:
            await db.rollback()
    except (sqlite3.Error, ValueError):
        pass  # the connection is unusable; the caller already fails closed


def ensure_checkpoint_table(conn: sqlite3.Connection) -> None:
    """Create the checkpoints table (and its append-only guard) if missing."""
    conn.executescript(f"BEGIN IMMEDIATE;{CHECKPOINTS_SCHEMA}COMMIT;")


def has_checkpoint_table(conn: sqlite3.Connection) -> bool:
    """Whether the file has a checkpoints table (a log never checkpointed has none)."""
    return conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'checkpoints'"
    ).fetchone() is not None
