"""The audit store on PostgreSQL (asyncpg), for several broker nodes writing
one log: the same events, hashes and sealing as the SQLite `AuditLog`.

What stays the same as on SQLite: every row is hashed by
`chain.stored_row_hash` and walked by `chain.ChainWalk`; personal fields are
sealed per subject (`broker.audit.keys`) under the master key in the data
directory, which every node of a cluster must share (a node with another
key would write other pseudonyms and could not open the others' data);
appends are group committed (those waiting while a commit runs go in
together in the next transaction); an append returns only once committed
and raises `AuditWriteError` otherwise, so callers fail closed.

What is PostgreSQL's (`broker.audit.pg_schema`): a writer takes the row lock
of the one-row chain head before hashing its batch, so writers on all nodes
queue there and seq has no gaps; triggers refuse UPDATE, DELETE and TRUNCATE.

Retention (`broker.audit.retention`) and a data subject's export and
erasure (`broker.audit.subjects`) run here too, through the schema's
SECURITY DEFINER functions (`PgMaintenance`). Not supported on this backend
yet: crash recovery still runs SQLite statements on `Maintenance.db`.
Checkpoints are written into the ``checkpoints`` table by the cluster's
leader (`broker.audit.pg_checkpoints`).

Erasure on PostgreSQL: a shredded subject key stays in old row versions
until VACUUM reclaims them (`truncate_wal`), in the WAL until it is
recycled, and in every base backup and WAL archive taken before. So subject
keys are wrapped not by the master key, which never changes, but by a key
generation that moves on: a hash ratchet in each node's
``audit-ratchet.key`` (`broker.audit.ratchet`; the database holds only the
generation's number and a check value). The leader rotates it at least once
per personal-data retention period (`broker.audit.rotation`), and every
node steps its file forward as soon as the database says the next
generation is current (on meeting a newer key, and every `FOLLOW_EVERY`
seconds), forgetting the older key. From then on a key shredded before the
rotation opens from no copy of the database, however old (README, "The
audit log in PostgreSQL").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from broker.audit.chain import ChainWalk, StoredRow, format_time, stored_row_hash
from broker.audit.interface import AuditEvent
from broker.audit.keys import (
    AuditKeys,
    SubjectKeyDestroyed,
    check_personal,
    load_or_create_master_key,
)
from broker.audit.listeners import AppendListeners
from broker.audit.pg_schema import LOCK_HEAD, Connection, install
from broker.audit.ratchet import RATCHET_NAME, DatabaseRestored, Ratchet
from broker.audit.store import check_event
from broker.errors import AuditError, AuditWriteError

__all__ = ["FOLLOW_EVERY", "RESTORED_EVENT", "PgAuditLog", "PgMaintenance", "redacted_url"]

log = logging.getLogger("consentry.audit")


# What a broken or unreachable database raises through asyncpg.
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_CONNECT_TIMEOUT = 10.0
# A statement that has not finished by then fails (and the append fails
# closed) instead of holding a session's start forever.
_COMMAND_TIMEOUT = 30.0
# Our transactions never wait on anything but the database between two
# statements; one idle this long belongs to a node that stopped.
_IDLE_IN_TRANSACTION_MS = 10_000
_VERIFY_BATCH = 1000
# No device id looks like this: its pseudonym is the log's master-key check.
_KEY_CHECK_SUBJECT = "\x00consentry master key check"
# How often a node asks whether the leader rotated the wrapping key: it
# forgets the old generation within this long of the rotation.
FOLLOW_EVERY = 60.0
_WRAP_ROW = "SELECT generation, check_value, since FROM audit_wrap"
# Recorded when a node starts on a database restored from before a rotation.
RESTORED_EVENT = "wrapping_restored"

# `{where}`, `{limit}`, `{inner}`, `{outer}`: filled from constants only.
_WITH_PERSONAL = """
SELECT e.seq, e.time, e.type, e.session, e.actor, e.subject, e.body, e.prev_hash, e.hash,
       p.ciphertext, s.wrapped_key
FROM (
    SELECT * FROM events WHERE {where} ORDER BY seq {inner} LIMIT {limit}
) AS e
LEFT JOIN personal AS p ON p.seq = e.seq
LEFT JOIN subjects AS s ON s.pseudonym = p.pseudonym
ORDER BY e.seq {outer}
"""
# Personal data is not read: the two NULLs stand for its columns.
_SCAN = """
SELECT seq, time, type, session, actor, subject, body, prev_hash, hash, NULL::bytea, NULL::bytea
FROM events WHERE {where} ORDER BY seq ASC LIMIT {limit}
"""

# Each filter's fragment with `{}` for its parameter's number; joined from
# these constants only, never from caller text.
_QUERY_CLAUSES = {
    "since": "time >= {}",
    "until": "time < {}",
    "actor": "actor = {}",
    "type": "type = {}",
    "session": "session = {}",
    "before_seq": "seq < {}",
    "after_seq": "seq > {}",
    "through_seq": "seq <= {}",
    "not_read_by": "NOT (type = 'audit_read' AND actor IS NOT DISTINCT FROM {})",
    "subject": "subject = {}",
    "alias": (
        "subject IN (SELECT p.pseudonym FROM personal AS p "
        "JOIN subjects AS s ON s.pseudonym = p.pseudonym "
        "WHERE p.alias_tag = {} AND s.wrapped_key IS NOT NULL)"
    ),
}


_PLACEHOLDER = re.compile(r"\?")


def _where(filters: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """The WHERE text of the given (non-None) filters and their parameters."""
    given = {name: value for name, value in filters.items() if value is not None}
    clauses = [_QUERY_CLAUSES[name].format(f"${n}") for n, name in enumerate(given, 1)]
    return " AND ".join(clauses) or "true", list(given.values())


def redacted_url(url: str) -> str:
    """`url` with its password replaced, for messages and logs."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in credentials else url


def _stored_row(r: asyncpg.Record) -> StoredRow:
    return (r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8])


def _check_text(name: str, value: str | None) -> None:
    # PostgreSQL's text cannot hold NUL; refused here, before the event joins
    # a batch, so one caller's bad field cannot fail the others' events.
    if value is not None and "\x00" in value:
        raise AuditError(f"audit {name} must not contain NUL characters")


class PgMaintenance:
    """One transaction on the PostgreSQL log (`PgAuditLog.maintenance`):
    the `RetentionTransaction` calls (appends and retention), and `conn`."""

    def __init__(self, log: PgAuditLog, conn: Connection, write: bool) -> None:
        self.conn = conn
        self._log = log
        self._write = write
        self.appended: list[tuple[int, str]] = []

    @property
    def keys(self) -> AuditKeys:
        return self._log._keys

    @property
    def ratchet(self) -> Ratchet:
        return self._log.ratchet

    # -- rotation of the wrapping key (`broker.audit.rotation`)

    async def lock_wrapping(self) -> tuple[int, str, dt.datetime]:
        """The current wrapping generation (number, check value, since),
        locked until the transaction ends; the chain head's lock first, as
        every writer takes it, so no new subject key is made meanwhile."""
        self._writing()
        await self.conn.fetchrow(LOCK_HEAD)
        row = await self.conn.fetchrow(
            "SELECT generation, check_value, since FROM consentry_lock_wrap()")
        if row is None:
            raise AuditError("the audit database has no wrapping-key generation "
                             "(was it set up by hand?)")
        return int(row[0]), str(row[1]), _parse_since(row[2])

    async def live_subject_keys(self) -> list[tuple[str, bytes]]:
        """Every subject key not erased: (pseudonym, wrapped key)."""
        rows = await self.conn.fetch(
            "SELECT pseudonym, wrapped_key FROM subjects WHERE wrapped_key IS NOT NULL")
        return [(str(row[0]), bytes(row[1])) for row in rows]

    async def commit_wrapping(self, from_generation: int, check: str, since: str,
                              rewrapped: Sequence[tuple[str, bytes | None]]) -> int:
        """Store the re-wrapped keys (None: erased) and make generation
        `from_generation` + 1 current, recognised by `check`; the database
        refuses if a live key would be left under another generation."""
        self._writing()
        return int(await self.conn.fetchval(
            "SELECT consentry_rotate_wrap($1, $2, $3, $4, $5)", from_generation, check, since,
            [pseudonym for pseudonym, _ in rewrapped], [key for _, key in rewrapped]))

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
        """Append an event without personal data; `pseudonym` is stored as is."""
        if not self._write:
            raise AuditError("cannot append in a read-only audit transaction")
        body_bytes = check_event(type, session, actor, pseudonym, body)
        _check_text("session", session)
        _check_text("actor", actor)
        (written,) = await self._log._insert_events(
            self.conn, [(type, format_time(now), session, actor, pseudonym,
                         body_bytes.decode(), None)])
        self.appended.append(written)
        return written[0]

    # -- retention (`broker.audit.retention`), through the schema's functions

    def _writing(self) -> None:
        if not self._write:
            raise AuditError("cannot change the audit log in a read-only transaction")

    async def require_secure_delete(self) -> None:
        """Nothing to switch on: PostgreSQL keeps deleted rows' old versions
        until VACUUM (`PgAuditLog.truncate_wal`), the WAL and backups longer;
        the module docstring says what bounds that."""

    async def delete_personal_before(self, cutoff: str) -> int:
        self._writing()
        return int(await self.conn.fetchval("SELECT consentry_delete_personal_before($1)",
                                            cutoff))

    async def event_span(self, kept_from: str) -> tuple[int | None, int | None, int | None]:
        # The head's lock first: retention on two nodes at once runs one
        # after the other, each purging from what the other left.
        await self.conn.fetchrow(LOCK_HEAD)
        row = await self.conn.fetchrow(
            "SELECT (SELECT MIN(seq) FROM events), (SELECT MAX(seq) FROM events), "
            "(SELECT MIN(seq) FROM events WHERE time >= $1)", kept_from)
        return (None, None, None) if row is None else (row[0], row[1], row[2])

    async def purge_point(self, through: int) -> tuple[str, int] | None:
        row = await self.conn.fetchrow(
            "SELECT hash, (SELECT COUNT(*) FROM events WHERE seq <= $1) FROM events "
            "WHERE seq = $1", through)
        return None if row is None else (str(row[0]), int(row[1]))

    async def purge_events(self, through: int) -> tuple[int, int]:
        """Remove events through `through` and their personal rows; only
        right after the signed purge record appended in this transaction
        (the function refuses otherwise). How many personal rows and events."""
        self._writing()
        row = await self.conn.fetchrow(
            "SELECT removed_personal, removed_events FROM consentry_purge_events($1)", through)
        if row is None:
            raise AuditError("the purge function returned nothing")
        return int(row[0]), int(row[1])

    async def shred_subjects_without_personal(self, time: str) -> int:
        self._writing()
        return int(await self.conn.fetchval(
            "SELECT consentry_shred_subjects_without_personal($1)", time))

    async def remove_forgotten_subjects(self) -> int:
        self._writing()
        return int(await self.conn.fetchval("SELECT consentry_remove_forgotten_subjects()"))

    # -- a data subject's export and erasure (`broker.audit.subjects`)

    async def select(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """The rows of one read-only query, written with SQLite's ``?``
        placeholders (numbered here, in order: the queries hold no ``?`` of
        their own)."""
        numbered = iter(range(1, len(params) + 1))
        text = _PLACEHOLDER.sub(lambda _: f"${next(numbered)}", sql)
        return [tuple(row) for row in await self.conn.fetch(text, *params)]

    async def shred_subject(self, pseudonym: str, time: str) -> int:
        """Through ``consentry_erase_subject``, which refuses unless this
        transaction's newest event is that subject's ``subject_erased``."""
        self._writing()
        return int(await self.conn.fetchval("SELECT consentry_erase_subject($1, $2)",
                                            pseudonym, time))


_Pending = tuple[tuple[Any, ...], "asyncio.Future[int]"]


class PgAuditLog(AppendListeners):
    """One open PostgreSQL audit store: `await PgAuditLog.open(url, data_dir)`,
    then `close()`."""

    def __init__(self, pool: asyncpg.Pool, keys: AuditKeys, ratchet: Ratchet, data_dir: Path,
                 url: str) -> None:
        self._pool: asyncpg.Pool | None = pool
        self._keys = keys
        self.ratchet = ratchet
        self._following: asyncio.Task[None] | None = None
        # The data directory (master.key, audit.key): the log itself is in the database.
        self.path = data_dir
        self.url = redacted_url(url)
        # Held while a batch commits: appends arriving meanwhile wait in
        # `_pending` and go in together (group commit).
        self._commit_lock = asyncio.Lock()
        self._pending: list[_Pending] = []
        self._init_listeners()

    @classmethod
    async def open(cls, database_url: str, data_dir: Path, *,
                   master_key: Path | None = None,
                   follow_every: float = FOLLOW_EVERY) -> PgAuditLog:
        """Connect to `database_url`, install or check the schema, and load the
        master key from `master_key` (default ``data_dir/master.key``) and
        the wrapping key beside it (``audit-ratchet.key``; made by the first
        node of a cluster, copied to the others). AuditError if the database
        cannot be reached or is not usable, or a key is not the log's."""
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise AuditError(f"cannot create the data directory {data_dir}: {exc}") from exc
        key_path = master_key if master_key is not None else data_dir / "master.key"
        where = redacted_url(database_url)
        try:
            pool = await _durable_pool(database_url)
        except (*_DB_ERRORS, ValueError) as exc:
            raise AuditError(f"cannot connect to the audit database {where}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await install(conn)
                has_events = await conn.fetchval("SELECT seq FROM chain_head") != 0
                if not key_path.exists() and has_events:
                    raise AuditError(
                        f"the audit database {where} holds events but the master key "
                        f"{key_path} is missing; copy master.key from another node or your "
                        "backup")
                master = load_or_create_master_key(key_path)
                ours = AuditKeys(master).pseudonym(_KEY_CHECK_SUBJECT)
                if await conn.fetchval("SELECT consentry_claim_key($1)", ours) != ours:
                    # Its pseudonyms would not match the others', nor could it
                    # open their personal data: a split log, silently.
                    raise AuditError(
                        f"the master key {key_path} is not the one the audit database "
                        f"{where} is written with: copy master.key from another node")
                ratchet, restored = await _join_ratchet(conn, key_path.with_name(RATCHET_NAME))
        except _DB_ERRORS as exc:
            await pool.close()
            raise AuditError(f"cannot open the audit database {where}: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        audit = cls(pool, AuditKeys(master, ratchet), ratchet, data_dir, database_url)
        if restored is not None:
            try:
                await audit._start_on_restored(restored)
            except BaseException:
                await audit.close()
                raise
        audit._following = asyncio.create_task(audit._follow_rotations(follow_every))
        return audit

    async def close(self) -> None:
        following, self._following = self._following, None
        if following is not None:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
        pool, self._pool = self._pool, None
        if pool is not None:
            async with self._commit_lock:
                await pool.close()

    def pseudonym(self, device_id: str) -> str:
        return self._keys.pseudonym(device_id)

    # -- the wrapping key's generation (`broker.audit.ratchet`) ----------------

    async def wrapping_since(self) -> dt.datetime:
        """Since when the database's current wrapping generation is current
        (what `broker.audit.rotation.rotation_due` is asked about)."""
        row = await self._wrap_row()
        return _parse_since(row[2])

    async def follow_rotation(self) -> bool:
        """Step this node's wrapping key to the database's current
        generation (after the leader rotated), forgetting the older one;
        whether it stepped. AuditError if this node's key does not lead
        there (another cluster's file, or a database older than it)."""
        row = await self._wrap_row()
        return self._follow(row)

    async def _wrap_row(self) -> asyncpg.Record:
        rows = await self._fetch(_WRAP_ROW)
        if not rows:
            raise AuditError("the audit database has no wrapping-key generation "
                             "(was it set up by hand?)")
        return rows[0]

    def _follow(self, row: asyncpg.Record) -> bool:
        stepped = self.ratchet.advance(int(row[0]), str(row[1]), _parse_since(row[2]))
        if stepped:
            log.info("audit wrapping key: now generation %d (the older one is forgotten)",
                     self.ratchet.current.number)
        return stepped

    async def _start_on_restored(self, generation: int) -> None:
        """The database was restored from a copy taken at `generation`, before
        rotations this node's key has followed: its subject keys open with no
        node's key, which is what erasure promised. Record them as erased and
        make the nodes' generation current, so the log is usable again (the
        events and their chain are intact)."""
        now = dt.datetime.now(dt.UTC)
        current = self.ratchet.current
        async with self.maintenance() as work:
            number, _check, _since = await work.lock_wrapping()
            if number != generation:
                erased = None  # another node did it while we waited for the lock
            else:
                erased = int(await work.conn.fetchval(
                    "SELECT consentry_rebase_wrap($1, $2, $3, $4)", number, current.number,
                    self.ratchet.check, format_time(now)))
                await work.append(RESTORED_EVENT, now=now, actor="broker", body={
                    "database_generation": number, "generation": current.number,
                    "subjects_erased": erased})
        await self.follow_rotation()  # the database now agrees, or this raises
        if erased is not None:
            log.warning("the audit database was restored from a copy older than a key "
                        "rotation (generation %d, the nodes are at %d): %d device key(s) "
                        "could not be opened any more and are recorded as erased",
                        generation, current.number, erased)

    async def _follow_rotations(self, every: float) -> None:
        """Until closed: follow the leader's rotations, so this node forgets
        an old generation even if it reads and writes no personal data."""
        while True:
            await asyncio.sleep(every)
            try:
                try:
                    await self.follow_rotation()
                except DatabaseRestored as restored:  # under a running node
                    await self._start_on_restored(restored.generation)
            except AuditError as exc:
                # The next append that needs a key fails closed on the same
                # check; here the operator hears of it.
                log.error("cannot follow the audit wrapping key's rotation: %s", exc)

    def _require_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise AuditError("the audit log is closed")
        return self._pool

    @property
    def pool(self) -> asyncpg.Pool:
        """The open pool (AuditError once closed), for the checkpoints
        (`broker.audit.pg_checkpoints`), which share the store's database."""
        return self._require_pool()

    # -- writing ---------------------------------------------------------------

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
        """Record one event durably and return its seq (`AuditLog.append`'s rules)."""
        body_bytes = check_event(type, session, actor, subject, body)
        _check_text("session", session)
        _check_text("actor", actor)
        fields = check_personal(personal)
        if fields is not None and subject is None:
            raise AuditError("personal fields need a subject, so they can be erased with it")
        pseudonym = None if subject is None else self._keys.pseudonym(subject)
        row = (type, format_time(now), session, actor, pseudonym, body_bytes.decode(), fields)
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((row, waiter))
        # Shielded: a cancelled caller does not abandon a batch half-way
        # (other callers' events are in it too).
        await asyncio.shield(self._commit_pending(waiter))
        return await waiter

    async def _commit_pending(self, waiter: asyncio.Future[int]) -> None:
        async with self._commit_lock:
            if waiter.done():
                return  # committed (or failed) in the batch before
            batch, self._pending = self._pending, []
            try:
                pool = self._pool
                if pool is None:
                    raise AuditError("it is closed")
                async with pool.acquire() as conn, conn.transaction():
                    written = await self._insert_events(conn, [args for args, _ in batch])
            except Exception as exc:
                failure = AuditWriteError(f"audit log could not be written: {exc}")
                for _, pending in batch:
                    if not pending.done():
                        pending.set_exception(failure)
                return
            self._tell_listeners(written)
            for (_, pending), (seq, _digest) in zip(batch, written, strict=True):
                if not pending.done():
                    pending.set_result(seq)

    async def _insert_events(self, conn: Connection,
                             rows: Sequence[tuple[Any, ...]]) -> list[tuple[int, str]]:
        """Chain `rows` (type, time, session, actor, pseudonym, body text,
        personal) onto the head, inside the caller's transaction. The head's
        row lock, taken first, is held until that transaction ends: writers
        on other nodes wait for it, so no one else chains in between."""
        head = await conn.fetchrow(LOCK_HEAD)
        if head is None:
            raise AuditError("the audit database has no chain head (was it set up by hand?)")
        seq, prev_hash = int(head["seq"]), str(head["hash"])
        events, personal_rows, written = [], [], []
        for type_, time, session, actor, pseudonym, body_text, personal in rows:
            seq += 1
            digest = stored_row_hash(prev_hash, seq, time, type_, session, actor, pseudonym,
                                     body_text)
            events.append((seq, time, type_, session, actor, pseudonym, body_text,
                           prev_hash, digest))
            if pseudonym is not None and personal is not None:
                personal_rows.append((seq, pseudonym, time, personal))
            written.append((seq, digest))
            prev_hash = digest
        await conn.executemany(
            "INSERT INTO events (seq, time, type, session, actor, subject, body, prev_hash, hash)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", events)
        if personal_rows:
            # New keys are wrapped under the current generation: if the
            # leader rotated since, step first. (A rotation holds the head's
            # lock too, so none commits between this and our keys.)
            wrap = await conn.fetchrow(_WRAP_ROW)
            if wrap is None:
                raise AuditError("the audit database has no wrapping-key generation")
            self._follow(wrap)
        # A key only when there is something to encrypt: an event that merely
        # names a subject (its erasure record, say) must not re-key it.
        subject_keys: dict[str, bytes] = {}
        sealed = []
        for event_seq, pseudonym, time, personal in personal_rows:
            if pseudonym not in subject_keys:
                wrapped = await conn.fetchval(
                    "SELECT consentry_subject_key($1, $2, $3)",
                    pseudonym, self._keys.new_wrapped_subject_key(), time)
                subject_keys[pseudonym] = self._keys.unwrap(bytes(wrapped))
            alias = personal.get("alias")
            sealed.append((event_seq, pseudonym, time,
                           self._keys.seal_personal(subject_keys[pseudonym], event_seq, personal),
                           self._keys.alias_tag(alias) if alias else None))
        if sealed:
            await conn.executemany(
                "INSERT INTO personal (seq, pseudonym, created, ciphertext, alias_tag) "
                "VALUES ($1, $2, $3, $4, $5)", sealed)
        return written

    @contextlib.asynccontextmanager
    async def maintenance(self, *, write: bool = True) -> AsyncIterator[PgMaintenance]:
        """One transaction: committed when the block ends, rolled back if it
        raises. A read-only one sees one snapshot (REPEATABLE READ). Database
        errors become AuditWriteError (AuditError for a read)."""
        pool = self._pool
        if pool is None:
            raise AuditWriteError("audit log could not be written: it is closed")
        try:
            async with pool.acquire() as conn:
                work = PgMaintenance(self, conn, write)
                transaction = (conn.transaction() if write else
                               conn.transaction(isolation="repeatable_read", readonly=True))
                async with transaction:
                    yield work
        except _DB_ERRORS as exc:
            if write:
                raise AuditWriteError(f"audit log could not be written: {exc}") from exc
            raise AuditError(f"cannot read the audit log: {exc}") from exc
        self._tell_listeners(work.appended)

    async def truncate_wal(self) -> bool:
        """VACUUM the personal tables, so deleted rows' old versions go from
        the table files where this role may (VACUUM skips, with a warning,
        tables it does not own). The WAL and backups keep them until they
        are recycled: see the module docstring."""
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                await conn.execute("VACUUM personal, subjects")
        except _DB_ERRORS as exc:
            raise AuditError(f"cannot vacuum the audit database: {exc}") from exc
        return True

    # -- reading ---------------------------------------------------------------

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        pool = self._require_pool()
        try:
            async with pool.acquire() as conn:
                return list(await conn.fetch(sql, *args))
        except _DB_ERRORS as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc

    async def _page(self, filters: Mapping[str, Any], *, limit: int | None, newest_first: bool,
                    oldest_first_result: bool) -> list[AuditEvent]:
        where, params = _where(filters)
        limit_text = "ALL" if limit is None else f"${len(params) + 1}"
        if limit is not None:
            params.append(limit)
        sql = _WITH_PERSONAL.format(where=where, limit=limit_text,
                                    inner="DESC" if newest_first else "ASC",
                                    outer="ASC" if oldest_first_result else "DESC")
        rows = await self._fetch(sql, *params)
        current = self.ratchet.current.number
        if any(row[10] is not None and AuditKeys.generation_of(bytes(row[10])) > current
               for row in rows):
            await self.follow_rotation()  # the leader rotated since we last looked
        return self._decrypted(rows)

    async def events(self, *, session: str | None = None, type: str | None = None,
                     limit: int | None = None) -> list[AuditEvent]:
        """Matching events, oldest first; with `limit` the newest `limit` of them."""
        if limit is not None and limit < 0:
            raise AuditError("limit must not be negative")
        return await self._page({"session": session, "type": type}, limit=limit,
                                newest_first=True, oldest_first_result=True)

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
        """One keyset-paged page, newest first, and whether more remain
        (`AuditLog.query`'s filters)."""
        if not isinstance(limit, int) or limit < 1:
            raise AuditError("limit must be a positive integer")
        filters = {
            "since": None if since is None else format_time(since),
            "until": None if until is None else format_time(until),
            "actor": actor, "type": type, "session": session, "before_seq": before_seq,
            "after_seq": after_seq, "not_read_by": not_read_by,
            "alias": None if alias is None else self._keys.alias_tag(alias),
            "subject": subject,
        }
        events = await self._page(filters, limit=limit + 1, newest_first=True,
                                  oldest_first_result=False)
        return events[:limit], len(events) > limit

    async def session_events(self, session: str, *,
                             limit: int | None = None) -> list[AuditEvent]:
        if limit is not None and limit < 0:
            raise AuditError("limit must not be negative")
        return await self._page({"session": session}, limit=limit, newest_first=False,
                                oldest_first_result=True)

    async def sessions_starting(self, prefix: str, *, limit: int = 10) -> list[str]:
        """Up to `limit` distinct session ids starting with `prefix`, sorted
        (the columns are COLLATE "C": a range over the index, as on SQLite)."""
        if not prefix or limit < 1:
            return []
        upper = prefix[:-1] + chr(min(ord(prefix[-1]) + 1, 0x10FFFF))
        rows = await self._fetch(
            "SELECT DISTINCT session FROM events WHERE session >= $1 AND session < $2 "
            "ORDER BY session LIMIT $3", prefix, upper, limit)
        return [str(row[0]) for row in rows]

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
        """A page of events after `after_seq`, oldest first, no personal data."""
        if not isinstance(limit, int) or limit < 1:
            raise AuditError("limit must be a positive integer")
        where, params = _where({
            "after_seq": after_seq, "through_seq": through_seq,
            "since": None if since is None else format_time(since),
            "until": None if until is None else format_time(until),
            "actor": actor, "type": type, "session": session,
        })
        params.append(limit)
        sql = _SCAN.format(where=where, limit=f"${len(params)}")  # constant fragments only
        rows = await self._fetch(sql, *params)
        return self._decrypted(rows)

    async def verify_chain(self) -> int | None:
        """The first seq whose hash chain fails (`chain.ChainWalk`), or None.
        A log that retention purged fails at its first seq, as on SQLite."""
        walk = ChainWalk()
        while True:
            rows = await self._fetch(
                "SELECT seq, time, type, session, actor, subject, body, prev_hash, hash "
                "FROM events WHERE seq >= $1 ORDER BY seq ASC LIMIT $2",
                walk.expected_seq, _VERIFY_BATCH)
            if not rows:
                return None
            stored = [_stored_row(row) for row in rows]
            broken = walk.first_break(stored)
            if broken is not None:
                return int(stored[broken][0])

    def _decrypted(self, rows: list[asyncpg.Record]) -> list[AuditEvent]:
        keys: dict[bytes, bytes] = {}
        result = []
        for (seq, time, type_, session, actor, subject, body, prev_hash, digest,
             ciphertext, wrapped) in rows:
            personal = None
            if ciphertext is not None and wrapped is not None:
                wrapped = bytes(wrapped)
                if wrapped not in keys:
                    try:
                        keys[wrapped] = self._keys.unwrap(wrapped)
                    except SubjectKeyDestroyed:
                        # Read in a snapshot from before a rotation that this
                        # node has already followed: as erased, for this read.
                        keys[wrapped] = b""
                if keys[wrapped]:
                    personal = self._keys.open_personal(keys[wrapped], seq,
                                                        bytes(ciphertext))
            result.append(AuditEvent(seq, time, type_, session, actor, subject,
                                     json.loads(body), personal, prev_hash, digest))
        return result


async def _join_ratchet(conn: Connection, path: Path) -> tuple[Ratchet, int | None]:
    """This node's wrapping key, checked against (and stepped to) the
    database's generation, and the database's generation if it is an older
    one of the same ratchet (restored from before a rotation), else None.
    The first node of a cluster makes the key (a random first generation,
    never derived from the master key); every other node must have a copy,
    else it refuses to start (`Ratchet.load` says what to copy)."""
    row = await conn.fetchrow(_WRAP_ROW)
    if row is None:
        ratchet = Ratchet.load_or_create(path, now=dt.datetime.now(dt.UTC))
        row = await conn.fetchrow(
            "SELECT generation, check_value, since FROM consentry_claim_wrap($1, $2, $3)",
            ratchet.current.number, ratchet.check, format_time(ratchet.current.created))
        if row is None:
            raise AuditError("the audit database did not record a wrapping-key generation")
    else:
        ratchet = Ratchet.load(path)
    # Another node's first key won the claim, this file is another
    # cluster's, or the node missed rotations (then it steps forward).
    try:
        ratchet.advance(int(row[0]), str(row[1]), _parse_since(row[2]))
    except DatabaseRestored as restored:
        return ratchet, restored.generation
    return ratchet, None


def _parse_since(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(text).astimezone(dt.UTC)
    except ValueError as exc:
        raise AuditError(f"the audit database's wrapping-key time {text!r} is not a "
                         "time") from exc


async def _durable_pool(database_url: str) -> asyncpg.Pool:
    """A pool whose sessions commit only once the WAL is flushed (an
    acknowledged event is a kept one), even where the server's default is
    off; a stricter default (remote_write, remote_apply) is kept. A node that
    stalls inside a transaction (a frozen process, a cut network) holds the
    chain head's lock and so every node's appends: the server ends such a
    transaction after `_IDLE_IN_TRANSACTION_MS`, and the lock with it.

    Startup settings, not SET: the pool resets each connection it takes
    back (RESET ALL) to what it started with."""
    settings = {"idle_in_transaction_session_timeout": str(_IDLE_IN_TRANSACTION_MS)}
    probe = await asyncpg.connect(database_url, timeout=_CONNECT_TIMEOUT,
                                  server_settings=settings)
    try:
        if await probe.fetchval("SHOW synchronous_commit") == "off":
            settings["synchronous_commit"] = "on"
    finally:
        await probe.close()
    return await asyncpg.create_pool(
        database_url, min_size=1, max_size=4, timeout=_CONNECT_TIMEOUT,
        command_timeout=_COMMAND_TIMEOUT, server_settings=settings)
