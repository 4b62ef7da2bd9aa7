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
recycled, and in every base backup and WAL archive taken before, wrapped by
the master key. The master key cannot be rotated yet: until it can, such
copies hold personal data for as long as they are kept (README, "The audit
log in PostgreSQL").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import asyncpg

from broker.audit.chain import ChainWalk, StoredRow, format_time, stored_row_hash
from broker.audit.interface import AuditEvent
from broker.audit.keyring import KEYRING_NAME, WrapRing
from broker.audit.keys import AuditKeys, check_personal, load_or_create_master_key
from broker.audit.listeners import AppendListeners
from broker.audit.pg_schema import LOCK_HEAD, Connection, install
from broker.audit.store import check_event
from broker.errors import AuditError, AuditWriteError

__all__ = ["PgAuditLog", "PgMaintenance", "redacted_url"]


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

    def __init__(self, pool: asyncpg.Pool, keys: AuditKeys, data_dir: Path, url: str) -> None:
        self._pool: asyncpg.Pool | None = pool
        self._keys = keys
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
                   master_key: Path | None = None) -> PgAuditLog:
        """Connect to `database_url`, install or check the schema, and load the
        master key from `master_key` (default ``data_dir/master.key``).
        AuditError if the database cannot be reached or is not usable."""
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
                # The key ring, where the data directory has one (a log moved
                # here from SQLite, `audit migrate`): its subject keys are
                # wrapped under the ring's generations.
                ring_path = key_path.with_name(KEYRING_NAME)
                ring = WrapRing.load_or_create(ring_path) if ring_path.exists() else None
                keys = AuditKeys(load_or_create_master_key(key_path), ring)
                ours = keys.pseudonym(_KEY_CHECK_SUBJECT)
                if await conn.fetchval("SELECT consentry_claim_key($1)", ours) != ours:
                    # Its pseudonyms would not match the others', nor could it
                    # open their personal data: a split log, silently.
                    raise AuditError(
                        f"the master key {key_path} is not the one the audit database "
                        f"{where} is written with: copy master.key from another node")
        except _DB_ERRORS as exc:
            await pool.close()
            raise AuditError(f"cannot open the audit database {where}: {exc}") from exc
        except BaseException:
            await pool.close()
            raise
        return cls(pool, keys, data_dir, database_url)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            async with self._commit_lock:
                await pool.close()

    def pseudonym(self, device_id: str) -> str:
        return self._keys.pseudonym(device_id)

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
        return self._decrypted(await self._fetch(sql, *params))

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
                    keys[wrapped] = self._keys.unwrap(wrapped)
                personal = self._keys.open_personal(keys[wrapped], seq, bytes(ciphertext))
            result.append(AuditEvent(seq, time, type_, session, actor, subject,
                                     json.loads(body), personal, prev_hash, digest))
        return result


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
