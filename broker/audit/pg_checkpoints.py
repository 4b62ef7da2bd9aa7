"""Signed checkpoints of the PostgreSQL audit log (`PgAuditLog`): the
`CheckpointStorage` the `Checkpointer` uses there.

The ``checkpoints`` table of the shared database (`broker.audit.pg_schema`:
append-only, its triggers refuse UPDATE, DELETE and TRUNCATE) is the chain
of checkpoints, the same records as on SQLite (`checkpoint_record`). One
is written under the chain head's row lock, the lock every append takes
first: the newest event cannot change while it is read and signed, and two
writers (a new leader and the last one's final checkpoint) queue there and
each chains on the other's.

Only the cluster's leader writes (`Checkpointer.lead`); after the commit it
appends the line to its own checkpoint file too. So each node's file holds
the checkpoints it wrote while it led, not a chain: it is a witness of the
table, held against the log at start like any `--witness`.

The audit key (data dir ``audit.key``) must be the same on every node, as
``master.key`` is: a node whose key does not verify the table's newest
checkpoint refuses to start, and says which file to copy.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import nacl.signing

from broker.audit.checkpoint_record import (
    GENESIS_CHECKPOINT,
    Checkpoint,
    make_checkpoint,
    parse_checkpoint,
)
from broker.audit.checkpoints import _append_line, log, tail_problem
from broker.audit.pg_schema import LOCK_HEAD, Connection
from broker.audit.pg_store import PgAuditLog
from broker.errors import AuditError

__all__ = ["HEAD_POLL_SECONDS", "PgCheckpoints", "checkpoint_rows", "event_hashes",
           "newest_checkpoint_id"]

# How often the leader looks at the chain head for events other nodes
# appended (one indexed one-row read): how late, at worst, the short
# sealing clock (`MAX_UNSEALED_SECONDS`) starts for them.
HEAD_POLL_SECONDS = 0.5
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
_NEWEST = "SELECT id, record FROM checkpoints ORDER BY id DESC LIMIT 1"


class PgCheckpoints:
    """The checkpoints of one `PgAuditLog`, signed with `key`; `path` is
    this node's own checkpoint file."""

    file_is_witness = True
    head_poll: float | None = HEAD_POLL_SECONDS

    def __init__(self, audit: PgAuditLog, path: Path, key: nacl.signing.SigningKey,
                 key_path: Path) -> None:
        self.audit = audit
        self.path = path
        self.source = f"the checkpoints table of {audit.url}"
        self._key = key
        self._key_path = key_path

    def _checked(self, row: asyncpg.Record | None) -> Checkpoint | None:
        if row is None:
            return None
        try:
            checkpoint = parse_checkpoint(str(row["record"]))
        except AuditError as exc:
            raise AuditError(
                f"checkpoint #{row['id']} in {self.source} is not a checkpoint record "
                f"({exc}): run `consentry-broker audit verify --database-url ...`") from None
        try:
            checkpoint.verify_signature(self._key.verify_key)
        except AuditError:
            raise AuditError(
                f"the newest checkpoint in {self.source} (#{row['id']}, {checkpoint.time}) "
                f"is not signed by this node's audit key {self._key_path}: every node of a "
                "cluster must have the same audit key, as it has the same master.key — copy "
                "audit.key from a node that wrote the checkpoints (or your backup)") from None
        return checkpoint

    async def newest(self) -> Checkpoint | None:
        try:
            row = await self.audit.pool.fetchrow(_NEWEST)
        except _DB_ERRORS as exc:
            raise AuditError(f"cannot read the audit checkpoints: {exc}") from exc
        return self._checked(row)

    async def head_seq(self) -> int:
        try:
            return int(await self.audit.pool.fetchval("SELECT seq FROM chain_head"))
        except (*_DB_ERRORS, TypeError) as exc:
            raise AuditError(f"cannot read the audit log's head: {exc}") from exc

    async def tail_problem(self, claim: Checkpoint, source: str | Path) -> str | None:
        try:
            async with self.audit.pool.acquire() as conn:
                return await _tail_problem(conn, claim, source)
        except _DB_ERRORS as exc:
            raise AuditError(f"cannot read the audit log: {exc}") from exc

    async def write(self, time: str) -> Checkpoint:
        try:
            async with self.audit.pool.acquire() as conn, conn.transaction():
                head = await conn.fetchrow(LOCK_HEAD)
                if head is None:
                    raise AuditError("the audit database has no chain head")
                newest = self._checked(await conn.fetchrow(_NEWEST))
                if newest is not None:
                    problem = await _tail_problem(conn, newest, self.source)
                    if problem is not None:
                        raise AuditError(f"no checkpoint written: {problem}")
                checkpoint = make_checkpoint(
                    self._key, seq=int(head["seq"]), hash=str(head["hash"]), time=time,
                    prev=GENESIS_CHECKPOINT if newest is None else newest.digest)
                await conn.execute("INSERT INTO checkpoints (seq, record) VALUES ($1, $2)",
                                   checkpoint.seq, checkpoint.text())
        except _DB_ERRORS as exc:
            raise AuditError(f"cannot write an audit checkpoint to {self.audit.url}: "
                             f"{exc}") from exc
        # After the commit, outside the head's lock (appends wait on it): the
        # file is this node's copy, a witness, not the chain.
        try:
            await asyncio.to_thread(_append_line, self.path, checkpoint.line())
        except AuditError as exc:
            log.error("audit checkpoint of seq %d written to the database but not to this "
                      "node's file: %s", checkpoint.seq, exc)
        return checkpoint


async def _tail_problem(conn: Connection, claim: Checkpoint,
                        source: str | Path) -> str | None:
    if claim.seq == 0:
        return None
    row = await conn.fetchrow(
        "SELECT (SELECT min(seq) FROM events), (SELECT max(seq) FROM events), "
        "(SELECT hash FROM events WHERE seq = $1)", claim.seq)
    first, last, stored = (None, None, None) if row is None else (row[0], row[1], row[2])
    return tail_problem(claim, source, first=first, last=last,
                        stored_hash=None if stored is None else str(stored))


# -- read by `audit verify` (`broker.audit.verify_store`) ---------------------


async def newest_checkpoint_id(audit: PgAuditLog) -> int | None:
    """The id of the newest row of the checkpoints table (None: none yet)."""
    try:
        value = await audit.pool.fetchval("SELECT max(id) FROM checkpoints")
    except _DB_ERRORS as exc:
        raise AuditError(f"cannot read the audit checkpoints: {exc}") from exc
    return None if value is None else int(value)


async def checkpoint_rows(audit: PgAuditLog, *, after_id: int, through_id: int,
                          limit: int) -> list[tuple[int, str]]:
    """Up to `limit` rows (id, record) of the checkpoints table, in id order."""
    try:
        rows = await audit.pool.fetch(
            "SELECT id, record FROM checkpoints WHERE id > $1 AND id <= $2 "
            "ORDER BY id LIMIT $3", after_id, through_id, limit)
    except _DB_ERRORS as exc:
        raise AuditError(f"cannot read the audit checkpoints: {exc}") from exc
    return [(int(row[0]), str(row[1])) for row in rows]


async def event_hashes(audit: PgAuditLog, seqs: list[int]) -> dict[int, str]:
    """The stored hash of each of `seqs` that is in the log."""
    try:
        rows = await audit.pool.fetch(
            "SELECT seq, hash FROM events WHERE seq = ANY($1::bigint[])", seqs)
    except _DB_ERRORS as exc:
        raise AuditError(f"cannot read the audit log: {exc}") from exc
    return {int(row[0]): str(row[1]) for row in rows}
