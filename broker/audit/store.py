"""The audit store: an append-only, hash-chained event log in SQLite.

Files in the data directory:

    audit.db     events (hash chain), subjects (wrapped keys), personal (ciphertext)
    master.key   32 random bytes, mode 0600, never inside the database

Every `append` is committed durably (WAL, synchronous=FULL) before it returns,
and any failure to write raises `AuditWriteError`: callers must treat that as
"do not proceed" — no session starts without its audit trail.

Events cannot be changed in place: triggers abort any UPDATE or DELETE on the
events table, except the retention purge's removal of the oldest whole days
(`broker.audit.schema`, which holds all the DDL and its migrations).
Personal fields live in a separate table, encrypted with a key per data
subject, so they can be destroyed without touching the chain;
`maintenance()` is the transaction retention and erasure work in.

A personal row that holds an alias also holds its blind-index tag
(`AuditKeys.alias_tag`), so admins can find a device by alias without the
alias being stored in clear. Erasing a subject must clear those tags along
with its key (a tag confirms a guessed alias); `query` ignores the tags of
erased subjects, and a subject re-keyed after erasure has its old tags cleared.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import aiosqlite

from broker.audit.chain import GENESIS_HASH, ChainWalk, check_body, format_time, stored_row_hash
from broker.audit.interface import AuditEvent
from broker.audit.keyring import KEYRING_NAME, WrapRing
from broker.audit.keys import AuditKeys, check_personal, load_or_create_master_key
from broker.audit.listeners import AppendListeners
from broker.audit.schema import initialise, rollback_quietly
from broker.errors import AuditError, AuditWriteError

__all__ = ["AuditEvent", "AuditLog", "Maintenance", "check_event"]


# How long an append waits for another process (the admin CLI, say) holding
# the write lock before it gives up and fails closed.
DEFAULT_BUSY_TIMEOUT = 10.0
_TYPE_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
_MAX_FIELD_CHARS = 256
_VERIFY_BATCH = 1000

_SELECT_EVENTS = """
SELECT e.seq, e.time, e.type, e.session, e.actor, e.subject, e.body, e.prev_hash, e.hash,
       p.ciphertext, s.wrapped_key
FROM (
    SELECT * FROM events
    WHERE (:session IS NULL OR session = :session) AND (:type IS NULL OR type = :type)
    ORDER BY seq DESC LIMIT :limit
) AS e
LEFT JOIN personal AS p ON p.seq = e.seq
LEFT JOIN subjects AS s ON s.pseudonym = p.pseudonym
ORDER BY e.seq ASC
"""

# The admin query: newest first, keyset-paged on seq. `{where}` is joined from
# the constant fragments in `_QUERY_CLAUSES` only, never from caller text.
_SELECT_PAGE = """
SELECT e.seq, e.time, e.type, e.session, e.actor, e.subject, e.body, e.prev_hash, e.hash,
       p.ciphertext, s.wrapped_key
FROM (
    SELECT * FROM events WHERE {where} ORDER BY seq DESC LIMIT :limit
) AS e
LEFT JOIN personal AS p ON p.seq = e.seq
LEFT JOIN subjects AS s ON s.pseudonym = p.pseudonym
ORDER BY e.seq DESC
"""

_QUERY_CLAUSES = {
    "since": "time >= :since",
    "until": "time < :until",
    "actor": "actor = :actor",
    "type": "type = :type",
    "session": "session = :session",
    "before_seq": "seq < :before_seq",
    "after_seq": "seq > :after_seq",
    "not_read_by": "NOT (type = 'audit_read' AND actor IS :not_read_by)",
    "subject": "subject = :subject",  # a pseudonym
    # Every event of a device that used the alias, in data still held: the
    # subject's key must not be erased.
    "alias": (
        "subject IN (SELECT p.pseudonym FROM personal AS p "
        "JOIN subjects AS s ON s.pseudonym = p.pseudonym "
        "WHERE p.alias_tag = :alias AND s.wrapped_key IS NOT NULL)"
    ),
}

# `AuditLog.scan` (oldest first, for exports). The unary `+` keeps SQLite off
# the time index, which would make it sort the whole time range for every
# page; walking the primary key from `after_seq` keeps each page bounded.
_SCAN_CLAUSES = {
    "after_seq": "seq > :after_seq",
    "through_seq": "seq <= :through_seq",
    "since": "+time >= :since",
    "until": "+time < :until",
    "actor": "actor = :actor",
    "type": "type = :type",
    "session": "session = :session",
}
# Personal data is not read: the two NULLs stand for its columns.
_SELECT_SCAN = """
SELECT seq, time, type, session, actor, subject, body, prev_hash, hash, NULL, NULL
FROM events WHERE {where} ORDER BY seq ASC LIMIT :limit
"""

_SELECT_SESSION = """
SELECT e.seq, e.time, e.type, e.session, e.actor, e.subject, e.body, e.prev_hash, e.hash,
       p.ciphertext, s.wrapped_key
FROM (
    SELECT * FROM events WHERE session = :session ORDER BY seq ASC LIMIT :limit
) AS e
LEFT JOIN personal AS p ON p.seq = e.seq
LEFT JOIN subjects AS s ON s.pseudonym = p.pseudonym
ORDER BY e.seq ASC
"""


def check_event(type: str, session: str | None, actor: str | None, subject: str | None,
                 body: Mapping[str, Any] | None) -> bytes:
    """Validate an event's fields; return the body's canonical bytes (what is
    stored, and what `chain.stored_row_hash` hashes)."""
    if not isinstance(type, str) or not _TYPE_RE.fullmatch(type):
        raise AuditError(f"invalid audit event type {type!r}")
    _check_field("session", session)
    _check_field("actor", actor)
    _check_field("subject", subject)
    return check_body(body)[1]


def _check_field(name: str, value: str | None) -> None:
    if value is None:
        return
    if not isinstance(value, str) or len(value) > _MAX_FIELD_CHARS:
        raise AuditError(f"audit {name} must be a string of at most "
                         f"{_MAX_FIELD_CHARS} characters")


def _prepare_file(path: Path) -> None:
    # sqlite would create the file with the umask's mode; its -wal and -shm
    # files copy the database file's mode, so 0600 here covers all three.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)


async def _cap_size(db: aiosqlite.Connection, db_path: Path, max_bytes: int) -> None:
    """The operator's quota (`serve --audit-max-mb`), as SQLite's own limit.

    ``max_page_count`` makes a write that needs a page past the cap fail with
    SQLITE_FULL — the same error as a full disk, taking the same fail-closed
    path, so the quota is also how that path is tested for real. SQLite never
    lowers the limit below the current size: a file already past the cap can
    still fill the free space of its pages, and grows no further. The limit
    is this connection's (other tools may still write, e.g. the admin CLI
    recording its reads) and covers the database file, not its WAL (which
    SQLite checkpoints back at about 4 MB).
    """
    if not isinstance(max_bytes, int) or max_bytes < 1:
        raise AuditError("the audit log size limit must be a positive number of bytes")
    try:
        async with db.execute("PRAGMA page_size") as cursor:
            row = await cursor.fetchone()
        pages = max(1, max_bytes // int(row[0] if row else 4096))
        # Read to the end and closed: a pragma statement left open would hold
        # a read snapshot, and the next append would fail as "locked" once
        # another connection (the checkpointer) had written.
        async with db.execute(f"PRAGMA max_page_count = {pages}") as cursor:
            await cursor.fetchall()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot set the size limit of {db_path}: {exc}") from exc


class Maintenance:
    """One transaction on the audit log, held by `AuditLog.maintenance()`.

    For the privacy lifecycle (`broker.audit.retention`, `broker.audit.subjects`):
    `db` runs statements inside the transaction, `keys` opens personal data,
    and `append` chains events into the same transaction, so a change and the
    record of it are committed together or not at all.
    """

    def __init__(self, log: AuditLog, db: aiosqlite.Connection, write: bool) -> None:
        self.db = db
        self.keys = log._keys
        self._log = log
        self._write = write
        self.appended: list[tuple[int, str]] = []

    async def append(
        self,
        type: str,
        *,
        now: dt.datetime,
        session: str | None = None,
        actor: str | None = None,
        pseudonym: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> int:
        """Append an event without personal data; `pseudonym` is stored as is
        (the subject is already pseudonymous here, unlike `AuditLog.append`)."""
        if not self._write:
            raise AuditError("cannot append in a read-only audit transaction")
        body_bytes = check_event(type, session, actor, pseudonym, body)
        seq, digest = await self._log._insert_event(
            self.db, type, format_time(now), session, actor, pseudonym, body_bytes.decode(), None,
        )
        self.appended.append((seq, digest))
        return seq

    # -- retention (`broker.audit.retention`), the same calls as `PgMaintenance`'s

    async def delete_personal_before(self, cutoff: str) -> int:
        """Remove personal rows created before `cutoff` (a `format_time` text)."""
        cursor = await self.db.execute("DELETE FROM personal WHERE created < ?", (cutoff,))
        return cursor.rowcount

    async def event_span(self, kept_from: str) -> tuple[int | None, int | None, int | None]:
        """The first and last seq held, and the first dated at or after `kept_from`."""
        row = await (await self.db.execute("SELECT MIN(seq), MAX(seq) FROM events")).fetchone()
        first, last = (None, None) if row is None else row
        row = await (await self.db.execute(
            "SELECT MIN(seq) FROM events WHERE time >= ?", (kept_from,))).fetchone()
        return first, last, None if row is None else row[0]

    async def purge_point(self, through: int) -> tuple[str, int] | None:
        """The hash of event `through` and how many events are at or before it."""
        row = await (await self.db.execute(
            "SELECT hash, (SELECT COUNT(*) FROM events WHERE seq <= :n) FROM events "
            "WHERE seq = :n", {"n": through})).fetchone()
        return None if row is None else (str(row[0]), int(row[1]))

    async def purge_events(self, through: int) -> tuple[int, int]:
        """Remove events through `through` and their personal rows (after the
        signed purge record is appended); how many personal rows and events."""
        cursor = await self.db.execute("DELETE FROM personal WHERE seq <= ?", (through,))
        personal = cursor.rowcount
        # The gate is visible to this transaction only, and closed before commit.
        await self.db.execute("INSERT INTO purge_gate (through_seq) VALUES (?)", (through,))
        cursor = await self.db.execute("DELETE FROM events WHERE seq <= ?", (through,))
        deleted = cursor.rowcount
        await self.db.execute("DELETE FROM purge_gate")
        return personal, deleted

    async def shred_subjects_without_personal(self, time: str) -> int:
        """Destroy the key of every subject that has no personal row left."""
        cursor = await self.db.execute(
            "UPDATE subjects SET wrapped_key = NULL, erased = ? WHERE wrapped_key IS NOT NULL "
            "AND NOT EXISTS (SELECT 1 FROM personal AS p WHERE p.pseudonym = subjects.pseudonym)",
            (time,))
        return cursor.rowcount

    async def remove_forgotten_subjects(self) -> int:
        """Remove shredded subjects that no event or personal row names."""
        cursor = await self.db.execute(
            "DELETE FROM subjects WHERE wrapped_key IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM personal AS p WHERE p.pseudonym = subjects.pseudonym) "
            "AND NOT EXISTS (SELECT 1 FROM events AS e WHERE e.subject = subjects.pseudonym)")
        return cursor.rowcount

    # -- a data subject's export and erasure (`broker.audit.subjects`)

    async def select(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of one read-only query (``?`` placeholders)."""
        rows = await (await self.db.execute(sql, params)).fetchall()
        return [tuple(row) for row in rows]

    async def shred_subject(self, pseudonym: str, time: str) -> int:
        """Delete the subject's personal rows (zeroed on disk: secure_delete)
        and destroy its key; how many personal rows went."""
        if not self._write:
            raise AuditError("cannot change the audit log in a read-only transaction")
        # Deleting the rows takes their alias tags with them: a tag left
        # behind would still confirm a guessed alias.
        cursor = await self.db.execute("DELETE FROM personal WHERE pseudonym = ?", (pseudonym,))
        await self.db.execute("UPDATE subjects SET wrapped_key = NULL, erased = ? "
                              "WHERE pseudonym = ?", (time, pseudonym))
        return cursor.rowcount

    async def require_secure_delete(self) -> None:
        """Refuse to shred on a connection that would leave deleted bytes in
        free pages (the pragma is per connection; `AuditLog.open` sets it)."""
        row = await (await self.db.execute("PRAGMA secure_delete")).fetchone()
        if row is None or int(row[0]) != 1:
            raise AuditError("the audit log connection does not have secure_delete on; "
                             "deleted personal data could stay readable in the file")


class AuditLog(AppendListeners):
    """One open audit store. Use `await AuditLog.open(data_dir)`, then `close()`."""

    def __init__(self, db: aiosqlite.Connection, keys: AuditKeys, path: Path) -> None:
        self._db: aiosqlite.Connection | None = db
        self._keys = keys
        self.path = path
        # One lock for every statement on the shared connection: appends must
        # chain (seq, prev_hash read and insert as one unit), and a read must
        # never run inside another call's open transaction.
        self._lock = asyncio.Lock()
        # Appends waiting for the next group commit (see `_append_locked`).
        self._pending: list[tuple[tuple[Any, ...], asyncio.Future[int]]] = []
        # Told (seq, hash) of each event once it is durable; the checkpointer
        # counts events with this instead of polling the database.
        self._init_listeners()

    @classmethod
    async def open(
        cls,
        data_dir: Path,
        *,
        master_key: Path | None = None,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
        max_bytes: int | None = None,
    ) -> AuditLog:
        """Open (creating if needed) the audit store in `data_dir`.

        `master_key` defaults to ``data_dir/master.key``; a deployment may keep
        it elsewhere (another disk, a secrets mount). `max_bytes` caps the
        database file this connection may grow (`_cap_size`): past it, every
        append fails with `AuditWriteError`, so the broker refuses sessions.
        """
        data_dir = Path(data_dir)
        db_path = data_dir / "audit.db"
        key_path = master_key if master_key is not None else data_dir / "master.key"
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create the data directory {data_dir}: {exc}") from exc
        if not key_path.exists() and db_path.exists() and db_path.stat().st_size > 0:
            # A new key would silently orphan every pseudonym and personal field.
            raise AuditError(
                f"{db_path} exists but its master key {key_path} is missing; "
                "restore master.key from your backup"
            )
        keys = AuditKeys(load_or_create_master_key(key_path),
                         WrapRing.load_or_create(key_path.with_name(KEYRING_NAME)))
        try:
            _prepare_file(db_path)
            db = await aiosqlite.connect(db_path, timeout=busy_timeout, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise AuditError(f"cannot open the audit log {db_path}: {exc}") from exc
        try:
            await initialise(db, db_path, keys)
            if max_bytes is not None:
                await _cap_size(db, db_path, max_bytes)
        except BaseException:
            await db.close()
            raise
        return cls(db, keys, db_path)

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            async with self._lock:
                await db.close()

    @property
    def key_ring(self) -> WrapRing | None:
        """The wrapping-key generations (`broker.audit.rotation` rotates them)."""
        ring = self._keys.ring
        return ring if isinstance(ring, WrapRing) else None

    def pseudonym(self, device_id: str) -> str:
        """The stable pseudonym under which `device_id` appears in the log."""
        return self._keys.pseudonym(device_id)

    @contextlib.asynccontextmanager
    async def maintenance(self, *, write: bool = True) -> AsyncIterator[Maintenance]:
        """Hold the log for one transaction: IMMEDIATE (the write lock, taken
        at once) with `write`, else a consistent read. Committed when the block
        ends, rolled back if it raises; SQLite errors become AuditWriteError
        (AuditError for a read)."""
        async with self._lock:
            db = self._db
            if db is None:
                raise AuditWriteError("audit log could not be written: it is closed")
            work = Maintenance(self, db, write)
            try:
                await db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield work
                await db.commit()
            except sqlite3.Error as exc:
                await rollback_quietly(db)
                if write:
                    raise AuditWriteError(f"audit log could not be written: {exc}") from exc
                raise AuditError(f"cannot read the audit log: {exc}") from exc
            except BaseException:
                await rollback_quietly(db)
                raise
            self._tell_listeners(work.appended)

    async def truncate_wal(self) -> bool:
        """Copy the WAL into the database and cut it to zero bytes.

        After a purge or erasure the database pages hold zeros where the data
        was (secure_delete), but older copies of those pages stay in the WAL
        until it is truncated. False if another connection's open read kept
        part of the WAL in use: run it again later.
        """
        async with self._lock:
            if self._db is None:
                raise AuditError("the audit log is closed")
            try:
                row = await (await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")).fetchone()
            except sqlite3.Error as exc:
                raise AuditError(f"cannot truncate the audit log's WAL: {exc}") from exc
        return row is not None and int(row[0]) == 0

    async def append(
        self,
        type: str,
        *,
        now: dt.datetime,
        session: str | None = None,
        actor: str | None = None,
        subject: str | None = None,
        body: Mapping[str, Any] | None = None,
        personal: Mapping[str, str] | None = None,
    ) -> int:
        """Record one event durably and return its seq.

        `subject` is the raw identifier of the data subject (the agent's device
        id); only its pseudonym is stored. `personal` (alias, ip, hostname,
        os_user, ...) is stored encrypted under that subject's key and needs a
        subject, so it can be erased with it. Raises AuditError for invalid
        input and AuditWriteError if the event could not be made durable.
        """
        body_bytes = check_event(type, session, actor, subject, body)
        fields = check_personal(personal)
        if fields is not None and subject is None:
            raise AuditError("personal fields need a subject, so they can be erased with it")
        time = format_time(now)
        pseudonym = None if subject is None else self._keys.pseudonym(subject)
        # Shielded: once started, the transaction runs to COMMIT or ROLLBACK even
        # if the caller is cancelled, so the connection is never left mid-way.
        return await asyncio.shield(
            self._append_locked(
                type, time, session, actor, pseudonym, body_bytes.decode(), fields
            )
        )

    async def _append_locked(
        self,
        type: str,
        time: str,
        session: str | None,
        actor: str | None,
        pseudonym: str | None,
        body_text: str,
        personal: dict[str, str] | None,
    ) -> int:
        """Group commit: appends that arrive while a commit is running wait
        for it, then go in together in the next transaction - one fsync for
        the batch instead of one per event. Every caller still returns only
        once its own event is committed."""
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(
            ((type, time, session, actor, pseudonym, body_text, personal), waiter))
        async with self._lock:
            if not waiter.done():
                batch, self._pending = self._pending, []
                await self._commit_batch(batch)
        return await waiter

    async def _commit_batch(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[int]]],
                            ) -> None:
        db = self._db
        try:
            if db is None:
                raise AuditError("it is closed")
            # IMMEDIATE takes the write lock now, so the last row read below is
            # still the last row when ours is inserted, even with another
            # process (the admin CLI) appending to the same file.
            await db.execute("BEGIN IMMEDIATE")
            written = [await self._insert_event(db, *args) for args, _ in batch]
            await db.commit()
        except Exception as exc:
            if db is not None:
                await rollback_quietly(db)
            failure = AuditWriteError(f"audit log could not be written: {exc}")
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(failure)
            return
        self._tell_listeners(written)
        for (_, waiter), (seq, _digest) in zip(batch, written, strict=True):
            if not waiter.done():
                waiter.set_result(seq)

    async def _insert_event(
        self,
        db: aiosqlite.Connection,
        type: str,
        time: str,
        session: str | None,
        actor: str | None,
        pseudonym: str | None,
        body_text: str,
        personal: dict[str, str] | None,
    ) -> tuple[int, str]:
        """Chain one event onto the last one, inside the caller's IMMEDIATE
        transaction; return its seq and hash."""
        row = await (
            await db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1")
        ).fetchone()
        seq, prev_hash = (1, GENESIS_HASH) if row is None else (row[0] + 1, row[1])
        digest = stored_row_hash(prev_hash, seq, time, type, session, actor, pseudonym,
                                 body_text)
        await db.execute(
            "INSERT INTO events (seq, time, type, session, actor, subject, body, "
            "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, time, type, session, actor, pseudonym, body_text, prev_hash, digest),
        )
        # A key only when there is something to encrypt: an event that merely
        # names a subject (its erasure record, say) must not re-key it.
        if pseudonym is not None and personal is not None:
            subject_key = await self._subject_key(db, pseudonym, time)
            alias = personal.get("alias")
            await db.execute(
                "INSERT INTO personal (seq, pseudonym, created, ciphertext, "
                "alias_tag) VALUES (?, ?, ?, ?, ?)",
                (seq, pseudonym, time,
                 self._keys.seal_personal(subject_key, seq, personal),
                 self._keys.alias_tag(alias) if alias else None),
            )
        return seq, digest

    async def _subject_key(self, db: aiosqlite.Connection, pseudonym: str, time: str) -> bytes:
        """The subject's key, creating it; a new one if the old was erased.

        A device that comes back after erasure gets a fresh key: its new
        personal data is readable, the shredded data stays shredded.
        """
        row = await (
            await db.execute("SELECT wrapped_key FROM subjects WHERE pseudonym = ?", (pseudonym,))
        ).fetchone()
        if row is not None and row[0] is not None:
            key = self._keys.opened(row[0])
            if key is not None:
                return key
            # (A key wrapped under a destroyed generation: an old copy of the
            # log restored after a rotation; as erased, it gets a fresh key.)
        if row is not None:
            # Erased before: its old rows stay shredded, and their alias tags
            # must not make the old aliases findable again under the new key.
            await db.execute("UPDATE personal SET alias_tag = NULL WHERE pseudonym = ?",
                             (pseudonym,))
        wrapped = self._keys.new_wrapped_subject_key()
        await db.execute(
            "INSERT INTO subjects (pseudonym, wrapped_key, created) VALUES (?, ?, ?) "
            "ON CONFLICT(pseudonym) DO UPDATE SET wrapped_key = excluded.wrapped_key",
            (pseudonym, wrapped, time),
        )
        return self._keys.unwrap(wrapped)

    async def events(
        self,
        *,
        session: str | None = None,
        type: str | None = None,
        limit: int | None = None,
    ) -> list[AuditEvent]:
        """Events matching the filters, oldest first; personal fields decrypted.

        With `limit`, the *most recent* `limit` matching events (still oldest
        first) — what an admin looking at a log wants to see.
        """
        if limit is not None and limit < 0:
            raise AuditError("limit must not be negative")
        params = {"session": session, "type": type, "limit": -1 if limit is None else limit}
        return self._decrypted(await self._fetch(_SELECT_EVENTS, params))

    async def query(
        self,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        actor: str | None = None,
        alias: str | None = None,
        type: str | None = None,
        session: str | None = None,
        before_seq: int | None = None,
        after_seq: int | None = None,
        not_read_by: str | None = None,
        limit: int = 50,
        subject: str | None = None,
    ) -> tuple[list[AuditEvent], bool]:
        """One page of events matching every given filter, newest first, and
        whether older matching events remain.

        `since` is inclusive and `until` exclusive. `alias` matches every event
        of a device that reported that alias (exactly, ignoring case) in
        personal data still held; it is looked up by its blind index, never
        compared in clear. Page on with ``before_seq`` = the last (smallest)
        seq of the previous page: keyset paging, as fast deep in the log as
        at its head; follow the head with ``after_seq`` = the newest seq seen,
        and ``not_read_by`` = the reader, to leave out their own `audit_read`
        events. `subject` is a pseudonym as stored (``AuditEvent.subject``).
        """
        if not isinstance(limit, int) or limit < 1:
            raise AuditError("limit must be a positive integer")
        params: dict[str, Any] = {
            "since": None if since is None else format_time(since),
            "until": None if until is None else format_time(until),
            "actor": actor, "type": type, "session": session, "before_seq": before_seq,
            "after_seq": after_seq, "not_read_by": not_read_by,
            "alias": None if alias is None else self._keys.alias_tag(alias),
            "subject": subject,
        }
        params = {k: v for k, v in params.items() if v is not None}
        where = " AND ".join(_QUERY_CLAUSES[name] for name in params) or "1"
        # One more than asked, to learn whether there is a next page.
        params["limit"] = limit + 1
        sql = _SELECT_PAGE.format(where=where)  # `where`: constant fragments only
        events = self._decrypted(await self._fetch(sql, params))
        return events[:limit], len(events) > limit

    async def session_events(self, session: str, *, limit: int | None = None) -> list[AuditEvent]:
        """Every event of one session, oldest first (the first `limit`, if given)."""
        if limit is not None and limit < 0:
            raise AuditError("limit must not be negative")
        params = {"session": session, "limit": -1 if limit is None else limit}
        return self._decrypted(await self._fetch(_SELECT_SESSION, params))

    async def sessions_starting(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Up to `limit` distinct session ids that start with `prefix`, sorted.

        A range over the session index (``prefix <= session < prefix'``,
        where prefix' has its last character incremented), so it reads only
        the matching ids however long the log is.
        """
        if not prefix or limit < 1:
            return []
        upper = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
        rows = await self._fetch(
            "SELECT DISTINCT session FROM events WHERE session >= ? AND session < ? "
            "ORDER BY session LIMIT ?", (prefix, upper, limit))
        return [row[0] for row in rows]

    async def scan(
        self,
        *,
        after_seq: int = 0,
        through_seq: int | None = None,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        actor: str | None = None,
        type: str | None = None,
        session: str | None = None,
        limit: int = 1000,
    ) -> list[AuditEvent]:
        """Up to `limit` events with ``after_seq < seq <= through_seq`` that
        match every filter, *oldest* first, without personal fields
        (``personal`` is None: nothing is decrypted).

        For exports that stream a whole log: page on with ``after_seq`` = the
        last seq returned until a page comes back empty. Each page is one
        bounded read that starts where the previous one stopped, so an export
        costs one pass over the log however long it is.
        """
        if not isinstance(limit, int) or limit < 1:
            raise AuditError("limit must be a positive integer")
        params: dict[str, Any] = {
            "after_seq": after_seq, "through_seq": through_seq,
            "since": None if since is None else format_time(since),
            "until": None if until is None else format_time(until),
            "actor": actor, "type": type, "session": session,
        }
        params = {k: v for k, v in params.items() if v is not None}
        where = " AND ".join(_SCAN_CLAUSES[name] for name in params)
        params["limit"] = limit
        sql = _SELECT_SCAN.format(where=where)  # `where`: constant fragments only
        return self._decrypted(await self._fetch(sql, params))

    def _decrypted(self, rows: list[Any]) -> list[AuditEvent]:
        """Rows of the event + personal + subject join as events, personal
        fields opened (None where erased or not openable)."""
        keys: dict[bytes, bytes | None] = {}
        result = []
        for (seq, time, type_, session_, actor, subject, body, prev_hash, digest,
             ciphertext, wrapped) in rows:
            personal = None
            if ciphertext is not None and wrapped is not None:
                if wrapped not in keys:
                    keys[wrapped] = self._keys.opened(wrapped)
                key = keys[wrapped]
                if key is not None:
                    personal = self._keys.open_personal(key, seq, ciphertext)
            result.append(AuditEvent(seq, time, type_, session_, actor, subject,
                                     json.loads(body), personal, prev_hash, digest))
        return result

    async def _fetch(self, sql: str, params: Mapping[str, Any] | tuple[Any, ...] = ()) -> list[Any]:
        async with self._lock:
            if self._db is None:
                raise AuditError("the audit log is closed")
            try:
                async with self._db.execute(sql, params) as cursor:
                    return list(await cursor.fetchall())
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read the audit log: {exc}") from exc

    async def verify_chain(self) -> int | None:
        """Recompute the hash chain; return the first seq that fails, or None.

        Detects edited, inserted, reordered and deleted rows (the row after a
        deleted one no longer chains). Truncation of the newest rows needs the
        signed checkpoints kept outside the database. The walk is
        `chain.ChainWalk`, the one `broker.audit.verify` makes too; a log that
        retention purged fails at its first seq (`audit verify` checks the
        signed purge record that explains it).
        """
        walk = ChainWalk()
        while True:
            # In batches, taking the lock per batch: verifying a long log must
            # not hold up the appends of live sessions.
            rows = await self._fetch(
                "SELECT seq, time, type, session, actor, subject, body, prev_hash, hash "
                "FROM events WHERE seq >= ? ORDER BY seq ASC LIMIT ?",
                (walk.expected_seq, _VERIFY_BATCH),
            )
            if not rows:
                return None
            broken = walk.first_break(rows)
            if broken is not None:
                return int(rows[broken][0])
