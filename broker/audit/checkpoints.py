"""Signed checkpoints of the audit log, kept in two places (and witnesses).

The hash chain alone shows that rows were edited, inserted, reordered or
removed from the middle; it cannot show that the newest rows were cut off, or
that the whole file was swapped for an older copy. A checkpoint can: the
broker's audit key (``broker.audit.signing``, outside the database) signs the
newest event's (seq, hash), the time and a link to the previous checkpoint
(the record's format: ``broker.audit.checkpoint_record``) and keeps it

* as one canonical JSON line, fsynced, appended to a file outside the database
  (default ``data_dir/checkpoints.jsonl``; put it on another disk or ship it
  elsewhere for a stronger anchor), and
* as a row of the ``checkpoints`` table of ``audit.db`` (id, seq, record).

`verify` (``broker.audit.verify``) checks every line's signature and ``prev``
link, compares each (seq, hash) with the events, and the file with the table.
An empty log is checkpointed as seq 0 with the chain's genesis hash.

The file line is written and fsynced *before* the table row commits, inside
the same write transaction (SQLite's write lock, which every process that
appends takes too), so the file is never behind the database and two
processes never interleave: the broker and an admin command may checkpoint
the same log at once, each chaining on whatever the other wrote last. A crash
between the two leaves the file one line ahead; the next checkpoint repairs
the table from it. Anything else that makes the two disagree is refused, and
left for `verify` to explain. A checkpoint is also refused when the log no
longer holds what the newest one in the file signed (cut short, or changed):
sealing on would bury the evidence.

Every process that appends seals what it appended before it reports success:
the admin commands through `broker.audit_cli.common.open_log`, the broker
with the `Checkpointer` — one at start-up (after checking the log against the
checkpoint file and every witness file, `witnesses`), one at shutdown, one
every N events, one at most `MAX_UNSEALED_SECONDS` after an event that no
checkpoint covers yet, and one every T seconds even when idle (then it
re-signs the same seq and hash with a newer time, proving the log was not cut
short meanwhile). `covering(seq)` gives a caller (the consent handler) the
checkpoint that covers its event, sealing one at once if needed.

On PostgreSQL (`broker.audit.pg_checkpoints`) the ``checkpoints`` table of
the shared database is the chain of checkpoints, written by one node at a
time: the cluster's leader (`Checkpointer.lead`), under the chain head's
lock. Each node's checkpoint file (default
``data_dir/checkpoints-postgresql.jsonl``, so that it never mixes with the
SQLite file of the data directory's own ``audit.db``) then holds the
checkpoints it wrote while it led — a witness of the table, checked as one
at start — and every node holds the log against the table's newest
checkpoint before it serves.

Where the checkpoint file lives is recorded in the data directory
(`CHECKPOINT_LOCATION`) when the broker is told another place, so the admin
commands seal into the same file (`checkpoint_path`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import nacl.signing

from broker.audit.chain import GENESIS_HASH, canonical_json, format_time
from broker.audit.checkpoint_record import (
    GENESIS_CHECKPOINT,
    Checkpoint,
    make_checkpoint,
    parse_checkpoint,
    record_digest,
    row_digest,
)
from broker.audit.interface import AuditStore
from broker.audit.schema import ensure_checkpoint_table
from broker.audit.signing import AUDIT_KEY_FILE, load_or_create_signing_key
from broker.errors import AuditError

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_LOCATION",
    "COVER_WAIT",
    "DEFAULT_EVERY_EVENTS",
    "DEFAULT_EVERY_SECONDS",
    "GENESIS_CHECKPOINT",
    "MAX_UNSEALED_SECONDS",
    "PG_CHECKPOINT_FILE",
    "Checkpoint",
    "CheckpointStorage",
    "Checkpointer",
    "SqliteCheckpoints",
    "checkpoint_path",
    "ensure_checkpoint_table",
    "newest_in_file",
    "newest_in_witness",
    "parse_checkpoint",
    "record_digest",
    "tail_problem",
]

CHECKPOINT_FILE = "checkpoints.jsonl"
# A node's own copy of the checkpoints it wrote into a PostgreSQL log.
PG_CHECKPOINT_FILE = "checkpoints-postgresql.jsonl"
# Written by the broker when its checkpoint file is not the default: one
# line, the file's absolute path. Read by the admin commands.
CHECKPOINT_LOCATION = "checkpoints.location"
DEFAULT_EVERY_EVENTS = 100
DEFAULT_EVERY_SECONDS = 60.0
# While the broker runs, an acknowledged event stays outside every signed
# checkpoint for at most about this long: the window in which rows cut from
# the end of the log would go unnoticed. Short enough that a session's events
# are sealed before anyone could act on them; long enough that a burst of
# appends shares one checkpoint (two fsyncs and a signature) instead of
# paying for one per group commit.
MAX_UNSEALED_SECONDS = 2.0
# How long `covering` waits for a checkpoint of a given event before the
# caller goes on without one (the agent works without it).
COVER_WAIT = 5.0
# How often `covering` looks at the table for the checkpoint another node
# (the cluster's leader) writes.
_COVER_POLL = 0.2
# How long a checkpoint waits for the database's write lock (a long admin
# command, say) before it gives up and tries again at the next turn.
_BUSY_TIMEOUT = 10.0
# A checkpoint line is ~300 bytes; the tail read looks at this much of the file.
_TAIL_BYTES = 64 * 1024

log = logging.getLogger("consentry.audit.checkpoints")

def checkpoint_path(data_dir: Path, explicit: Path | None = None) -> Path:
    """Where the checkpoints of the log in `data_dir` go: `explicit` if
    given, else where the broker last said (`CHECKPOINT_LOCATION`), else
    ``data_dir/checkpoints.jsonl``."""
    if explicit is not None:
        return Path(explicit)
    try:
        text = (Path(data_dir) / CHECKPOINT_LOCATION).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return Path(data_dir) / CHECKPOINT_FILE
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot read {Path(data_dir) / CHECKPOINT_LOCATION}: {exc}") from exc
    return Path(text) if text else Path(data_dir) / CHECKPOINT_FILE


def _record_location(data_dir: Path, path: Path) -> None:
    """Tell later admin commands where the checkpoints go (see `checkpoint_path`)."""
    pointer = data_dir / CHECKPOINT_LOCATION
    try:
        if path == data_dir / CHECKPOINT_FILE:
            pointer.unlink(missing_ok=True)
            return
        text = str(path.absolute()) + "\n"
        if pointer.exists() and pointer.read_text(encoding="utf-8") == text:
            return
        tmp = pointer.with_name(f".{pointer.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, pointer)
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditError(f"cannot record the checkpoint file's location in {pointer}: "
                         f"{exc}") from exc


def _connect(db_path: Path) -> sqlite3.Connection:
    if not db_path.exists():
        raise AuditError(f"no audit log at {db_path}")
    try:
        conn = sqlite3.connect(db_path, timeout=_BUSY_TIMEOUT, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous=FULL")
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit log {db_path}: {exc}") from exc
    return conn


def _last_line(path: Path) -> bytes | None:
    """The last complete line of the checkpoint file, None if it is empty.

    A partial last line (power lost mid-write; it never reached the table,
    which commits only after the line is fsynced) is cut off, with a warning.
    """
    try:
        with open(path, "r+b") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return None
            start = max(0, size - _TAIL_BYTES)
            handle.seek(start)
            data = handle.read()
            if not data.endswith(b"\n"):
                cut = data.rfind(b"\n")
                if cut < 0 and start > 0:
                    raise AuditError(f"the end of the checkpoint file {path} is not a "
                                     "checkpoint (a line longer than 64 KiB)")
                keep = start + cut + 1
                log.warning("checkpoint file %s ends in a partial line (%d bytes, from an "
                            "interrupted write); removing it", path, size - keep)
                handle.truncate(keep)
                os.fsync(handle.fileno())
                data = data[: cut + 1]
                if not data:
                    return None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AuditError(f"cannot read the checkpoint file {path}: {exc}") from exc
    lines = data[:-1].rsplit(b"\n", 1)
    if len(lines) == 1 and start > 0:
        raise AuditError(f"the end of the checkpoint file {path} is not a checkpoint "
                         "(a line longer than 64 KiB)")
    return lines[-1]


def _append_line(path: Path, line: bytes) -> None:
    """Append one line durably; on any failure leave the file as it was."""
    created = not path.exists()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise AuditError(f"cannot open the checkpoint file {path}: {exc}") from exc
    try:
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):
                raise OSError("short write (disk full?)")
            os.fsync(fd)
        except OSError as exc:
            # A half line would read as a damaged checkpoint for ever after.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise AuditError(f"cannot write the checkpoint file {path}: {exc}") from exc
    finally:
        os.close(fd)
    if created:
        # The new name must survive a crash too, or the first line is lost.
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def newest_in_witness(path: Path, key: nacl.signing.VerifyKey) -> Checkpoint | None:
    """The checkpoint of the highest seq in a witness file (None if it holds
    none), its signature checked: the claim a log must not fall short of.

    A witness is any file of checkpoint lines kept elsewhere (a copy shipped
    by `--checkpoint-command`, an agent's ``checkpoints.jsonl``); its lines
    need not be consecutive or chained. Lines that are not checkpoint
    records are skipped here (`audit verify --witness` names them).
    """
    best: Checkpoint | None = None
    try:
        with open(path, "rb") as handle:
            for raw in handle:
                try:
                    found = parse_checkpoint(raw)
                except AuditError:
                    continue
                if best is None or found.seq > best.seq:
                    best = found
    except OSError as exc:
        raise AuditError(f"cannot read the witness file {path}: {exc}") from exc
    if best is None:
        return None
    try:
        parse_checkpoint(best.text(), key)
    except AuditError as exc:
        raise AuditError(
            f"the checkpoint of seq {best.seq} in the witness file {path} is not signed by "
            f"this broker's audit key ({exc}); run `consentry-broker audit verify "
            f"--witness {path}`") from None
    return best


def tail_problem(newest: Checkpoint, source: str | Path, *, first: int | None,
                 last: int | None, stored_hash: str | None) -> str | None:
    """Why a log whose events span `first`-`last` (None: none), and whose
    event at `newest.seq` has `stored_hash` (None: no such event), does not
    hold what `newest` (from `source`) signed; None if it does. The same
    words for every backend."""
    if newest.seq == 0:
        return None
    if stored_hash is None and first is not None and newest.seq < first:
        return None  # purged by retention; verify checks the signed purge record
    if stored_hash is None:
        return (
            f"the audit log ends at seq {last or 0} but the checkpoint of {newest.time} "
            f"in {source} covers seq {newest.seq}: events were deleted from the end, "
            "or the log was replaced by an older copy. Run `consentry-broker audit "
            "verify`. Only if you are deliberately starting a new log, move the "
            "checkpoint file aside."
        )
    if stored_hash != newest.hash:
        return (
            f"event {newest.seq} of the audit log is not the one the checkpoint of "
            f"{newest.time} in {source} signed: the log was changed. Run "
            "`consentry-broker audit verify`."
        )
    return None


def _tail_problem(conn: sqlite3.Connection, newest: Checkpoint, source: Path,
                  db_path: Path) -> str | None:
    """Why the log does not hold what `newest` (from `source`) signed, or None."""
    if newest.seq == 0:
        return None
    try:
        first, last = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
        row = conn.execute("SELECT hash FROM events WHERE seq = ?", (newest.seq,)).fetchone()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log {db_path}: {exc}") from exc
    return tail_problem(newest, source, first=first, last=last,
                        stored_hash=None if row is None else str(row[0]))


def newest_in_file(path: Path, key: nacl.signing.SigningKey, key_path: Path) -> Checkpoint | None:
    """The last checkpoint of a checkpoint file, its signature checked."""
    line = _last_line(path)
    if line is None:
        return None
    try:
        return parse_checkpoint(line, key.verify_key)
    except AuditError as exc:
        raise AuditError(
            f"the last line of the checkpoint file {path} is not a checkpoint signed "
            f"by this broker's audit key {key_path} ({exc}); the file "
            "or the key was replaced — run `consentry-broker audit verify`"
        ) from None


class CheckpointStorage(Protocol):
    """Where one log's checkpoints are kept and how its tail is read: all
    the `Checkpointer` needs of a backend (`SqliteCheckpoints` here,
    `broker.audit.pg_checkpoints.PgCheckpoints` for PostgreSQL)."""

    # Where the newest checkpoint comes from, for messages.
    source: str
    # The checkpoint file this process appends to.
    path: Path
    # Whether the checkpoint file is only this process's copy (checked at
    # start like a witness) rather than the chain the store is held against.
    file_is_witness: bool
    # Seconds between looks at the log's head (`head_seq`), or None when
    # every append goes through this process's append listeners.
    head_poll: float | None

    async def newest(self) -> Checkpoint | None:
        """The newest checkpoint kept, its signature checked (AuditError if not)."""
        ...

    async def tail_problem(self, claim: Checkpoint, source: str | Path) -> str | None:
        """Why the log does not hold what `claim` signed, or None."""
        ...

    async def write(self, time: str) -> Checkpoint:
        """Sign and keep a checkpoint of the newest event, chained on the newest kept."""
        ...

    async def head_seq(self) -> int:
        """The seq of the newest event of the log (0 when empty)."""
        ...


class SqliteCheckpoints:
    """Checkpoints of an SQLite `AuditLog`: the file line and the table row
    written in one write transaction (module docstring)."""

    file_is_witness = False
    head_poll: float | None = None

    def __init__(self, db_path: Path, path: Path, key: nacl.signing.SigningKey,
                 key_path: Path) -> None:
        self.db_path = db_path
        self.path = path
        self.source = str(path)
        self._key = key
        self._key_path = key_path
        self._table_ready = False
        # One checkpoint at a time, across threads: each chains on the last.
        self._write_lock = threading.Lock()

    async def newest(self) -> Checkpoint | None:
        return await asyncio.to_thread(newest_in_file, self.path, self._key, self._key_path)

    async def tail_problem(self, claim: Checkpoint, source: str | Path) -> str | None:
        def check() -> str | None:
            conn = _connect(self.db_path)
            try:
                return _tail_problem(conn, claim, Path(source), self.db_path)
            finally:
                conn.close()

        return await asyncio.to_thread(check)

    async def head_seq(self) -> int:
        def read() -> int:
            conn = _connect(self.db_path)
            try:
                return int(conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0])
            except sqlite3.Error as exc:
                raise AuditError(f"cannot read the audit log {self.db_path}: {exc}") from exc
            finally:
                conn.close()

        return await asyncio.to_thread(read)

    async def write(self, time: str) -> Checkpoint:
        # In a thread, with its own connection: signing and two fsyncs must
        # not stall the event loop; the thread finishes even if we are cancelled.
        return await asyncio.to_thread(self._write, time)

    def _write(self, time: str) -> Checkpoint:
        with self._write_lock:
            conn = _connect(self.db_path)
            try:
                if not self._table_ready:
                    ensure_checkpoint_table(conn)
                    self._table_ready = True
                # The write lock, so the newest event cannot change under us and
                # no other writer (this process or another) slips a checkpoint in.
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                seq, digest = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
                in_file = newest_in_file(self.path, self._key, self._key_path)
                if in_file is not None:
                    problem = _tail_problem(conn, in_file, self.path, self.db_path)
                    if problem is not None:
                        raise AuditError(f"no checkpoint written: {problem}")
                prev = self._reconcile(conn, in_file)
                checkpoint = make_checkpoint(self._key, seq=seq, hash=digest, time=time,
                                             prev=prev)
                conn.execute("INSERT INTO checkpoints (seq, record) VALUES (?, ?)",
                             (seq, checkpoint.text()))
                # The file first: if the commit below fails, the next checkpoint
                # chains on the file's line and repairs the table from it.
                _append_line(self.path, checkpoint.line())
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise AuditError(f"cannot write an audit checkpoint to {self.db_path}: "
                                 f"{exc}") from exc
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                conn.close()
        return checkpoint

    def _reconcile(self, conn: sqlite3.Connection, in_file: Checkpoint | None) -> str:
        """The ``prev`` for the next checkpoint, once file and table agree.

        Only one disagreement is expected — the file one line ahead after a
        crash or failed commit — and that is repaired here. Any other means
        one of them was tampered with; writing on would hide that.
        """
        row = conn.execute("SELECT record FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        file_digest = GENESIS_CHECKPOINT if in_file is None else in_file.digest
        table_digest = GENESIS_CHECKPOINT if row is None else row_digest(row[0]) or "damaged"
        if file_digest == table_digest:
            return file_digest
        if in_file is not None and in_file.prev == table_digest:
            log.warning("checkpoint of %s is in %s but not in the database (interrupted "
                        "write); adding it", in_file.time, self.path)
            conn.execute("INSERT INTO checkpoints (seq, record) VALUES (?, ?)",
                         (in_file.seq, canonical_json(in_file.record).decode()))
            return file_digest
        raise AuditError(
            f"the checkpoint file {self.path} and the checkpoints table of "
            f"{self.db_path} disagree about the newest checkpoint, so no new one is "
            "written: run `consentry-broker audit verify` to see which was changed"
        )


def _storage_for(audit: AuditStore, data_dir: Path, explicit: Path | None,
                 key: nacl.signing.SigningKey) -> CheckpointStorage:
    # Imported here: the SQLite broker (and the agent's imports) need no asyncpg.
    from broker.audit.pg_store import PgAuditLog

    key_path = data_dir / AUDIT_KEY_FILE
    if isinstance(audit, PgAuditLog):
        from broker.audit.pg_checkpoints import PgCheckpoints

        # Not the SQLite log's file: the data directory's own audit.db (the
        # admin commands') is sealed into that one.
        path = explicit if explicit is not None else data_dir / PG_CHECKPOINT_FILE
        return PgCheckpoints(audit, path, key, key_path)
    path = explicit if explicit is not None else data_dir / CHECKPOINT_FILE
    return SqliteCheckpoints(audit.path, path, key, key_path)


class Checkpointer:
    """Writes signed checkpoints of one audit log; see the module docstring.

    `clock` gives the checkpoint times and drives the schedule (a fake one
    in tests); `poll` caps how long the background task sleeps between looks
    at that clock. `witnesses` are files of checkpoints kept elsewhere that
    `start` holds the log against as it does the checkpoint file.

    Where the checkpoints are kept is the `storage`'s business (chosen by
    the store's backend); the schedule, the witnesses and `covering` are
    the same for both. On PostgreSQL only the cluster's leader writes
    (`lead`); every node checks the log at start (`check`) and finds the
    checkpoint covering an event in the table (`covering`).
    """

    def __init__(
        self,
        audit: AuditStore,
        data_dir: Path,
        *,
        checkpoint_file: Path | None = None,
        every_events: int = DEFAULT_EVERY_EVENTS,
        every_seconds: float = DEFAULT_EVERY_SECONDS,
        seal_after: float = MAX_UNSEALED_SECONDS,
        witnesses: Sequence[Path] = (),
        clock: Callable[[], dt.datetime] = _utcnow,
        poll: float = 5.0,
    ) -> None:
        if every_events < 1 or every_seconds <= 0 or poll <= 0 or seal_after <= 0:
            raise AuditError("checkpoints need a positive event count, interval and poll time")
        self.audit = audit
        self.data_dir = Path(data_dir)
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.seal_after = seal_after
        self.witnesses = tuple(Path(w) for w in witnesses)
        self._clock = clock
        self._poll = poll
        try:
            self._key = load_or_create_signing_key(self.data_dir)
        except OSError as exc:
            raise AuditError(f"cannot read or create the audit signing key in "
                             f"{self.data_dir}: {exc}") from exc
        self.storage = _storage_for(
            audit, self.data_dir, None if checkpoint_file is None else Path(checkpoint_file),
            self._key)
        self.path = self.storage.path
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._inflight: asyncio.Future[Checkpoint] | None = None
        self._latest_seq = 0  # newest seq appended (here, or seen at the head)
        self._uncovered_at: dt.datetime | None = None  # first event no checkpoint covers
        self._last: Checkpoint | None = None  # newest checkpoint written here
        self._last_at: dt.datetime | None = None
        self._listeners: list[Callable[[Checkpoint], None]] = []
        self._stopping = False

    @property
    def last(self) -> Checkpoint | None:
        """The newest checkpoint this checkpointer wrote."""
        return self._last

    @property
    def running(self) -> bool:
        """Whether this checkpointer writes on its schedule now (`start`)."""
        return self._task is not None

    def add_listener(self, listener: Callable[[Checkpoint], None]) -> None:
        """Call `listener(checkpoint)` after each checkpoint written here (in
        the event loop; it must be quick, e.g. queue the line to ship it)."""
        self._listeners.append(listener)

    # -- scheduling -------------------------------------------------------

    def due(self) -> bool:
        """N events appended, an event uncovered for `seal_after` seconds, or
        T seconds passed, since the last checkpoint."""
        if self._last is None or self._last_at is None:
            return True
        if self._latest_seq - self._last.seq >= self.every_events:
            return True
        now = self._clock()
        if (self._uncovered_at is not None
                and (now - self._uncovered_at).total_seconds() >= self.seal_after):
            return True
        return (now - self._last_at).total_seconds() >= self.every_seconds

    def _next_look(self) -> float:
        """Seconds until `due` may next turn true (at most `poll`, and at
        most the storage's `head_poll`: appends elsewhere are seen only then)."""
        timeout = self._poll
        if self.storage.head_poll is not None:
            timeout = min(timeout, self.storage.head_poll)
        now = self._clock()
        if self._last_at is not None:
            elapsed = (now - self._last_at).total_seconds()
            timeout = min(timeout, self.every_seconds - elapsed)
        if self._uncovered_at is not None:
            waited = (now - self._uncovered_at).total_seconds()
            timeout = min(timeout, self.seal_after - waited)
        return max(0.0, timeout)

    def _on_append(self, seq: int, _hash: str) -> None:
        # Runs inside every append: only count and, when due, wake the task.
        self._latest_seq = max(self._latest_seq, seq)
        if self._last is None or seq <= self._last.seq:
            return
        if self._uncovered_at is None:
            # The first event outside a checkpoint starts the short clock.
            self._uncovered_at = self._clock()
            self._wake.set()
        elif seq - self._last.seq >= self.every_events:
            self._wake.set()

    async def check(self) -> None:
        """Refuse (AuditError) a log that no longer holds what the newest
        checkpoint kept, the checkpoint file's or a witness's signed — cut
        short, or replaced by an older copy: carrying on would bury the
        evidence under new checkpoints."""
        claims: list[tuple[Checkpoint, str | Path]] = []
        newest = await self.storage.newest()
        if newest is not None:
            claims.append((newest, self.storage.source))
        witnesses = list(self.witnesses)
        if self.storage.file_is_witness and self.path.exists():
            witnesses.insert(0, self.path)
        for witness in witnesses:
            if not witness.exists():
                raise AuditError(f"the witness file {witness} does not exist (check "
                                 "--witness; an empty file is a witness of nothing)")
            found = await asyncio.to_thread(newest_in_witness, witness, self._key.verify_key)
            if found is not None:
                claims.append((found, witness))
        for checkpoint, source in claims:
            problem = await self.storage.tail_problem(checkpoint, source)
            if problem is not None:
                raise AuditError(problem)

    async def start(self) -> None:
        """`check` the log, write a checkpoint, then run the schedule."""
        await self.check()
        if not self.storage.file_is_witness:
            # For the admin commands, which seal the SQLite log in the data dir.
            await asyncio.to_thread(_record_location, self.data_dir, self.path)
        self._stopping = False
        await self.checkpoint()
        self.audit.add_append_listener(self._on_append)
        self._task = asyncio.create_task(self._run(), name="audit-checkpointer")

    async def stop(self) -> None:
        """Stop the schedule and write a last checkpoint (failures are logged).
        Nothing to do if the schedule is not running."""
        task, self._task = self._task, None
        if task is None:
            return
        self.audit.remove_append_listener(self._on_append)
        # The flag as well as the cancel: asyncio.wait_for (3.11) swallows a
        # cancellation that arrives just as the wake-up event is set.
        self._stopping = True
        self._wake.set()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        try:
            await self.checkpoint()
        except AuditError as exc:
            log.error("could not write the final audit checkpoint: %s", exc)

    async def lead(self) -> None:
        """The cluster leader's job (`broker.cluster.leader`): write
        checkpoints for as long as this runs, a last one when it ends.

        A log this node must not seal (cut short, or its checkpoints signed
        with another audit key) is logged and tried again later, never
        sealed over; the other jobs of the leader go on meanwhile.
        """
        while True:
            try:
                await self.start()
                break
            except AuditError as exc:
                log.error("this node leads the cluster but writes no audit checkpoints: %s",
                          exc)
            await asyncio.sleep(self.every_seconds)
        try:
            await asyncio.Event().wait()  # until leadership ends (cancelled)
        finally:
            await self.stop()

    async def checkpoint(self) -> Checkpoint:
        """Sign and store a checkpoint of the newest event, now."""
        now = self._clock()
        checkpoint = await self.storage.write(format_time(now))
        self._last, self._last_at = checkpoint, now
        self._latest_seq = max(self._latest_seq, checkpoint.seq)
        if self._latest_seq <= checkpoint.seq:
            self._uncovered_at = None
        elif self._uncovered_at is None:
            # Appended while this one was being written (an earlier start
            # time, if set, only makes the next checkpoint come sooner).
            self._uncovered_at = self._clock()
        for listener in list(self._listeners):
            try:
                listener(checkpoint)
            except Exception:
                log.exception("audit checkpoint listener failed")
        return checkpoint

    async def seal(self) -> Checkpoint:
        """A checkpoint written from now on, shared with any caller already
        waiting for one (so a burst of callers costs one or two checkpoints)."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.ensure_future(self.checkpoint())
        return await asyncio.shield(self._inflight)

    async def covering(self, seq: int, timeout: float = COVER_WAIT) -> Checkpoint | None:
        """A checkpoint that covers event `seq`: the last one if it does, else
        one sealed now — or, where another node writes the checkpoints (the
        cluster's leader), the first of its that does. None (logged) if none
        could be had within `timeout`."""

        async def sealed() -> Checkpoint:
            while self._last is None or self._last.seq < seq:
                if self.running:
                    await self.seal()
                    continue
                newest = await self.storage.newest()
                if newest is not None and newest.seq >= seq:
                    return newest
                await asyncio.sleep(_COVER_POLL)
            return self._last

        try:
            return await asyncio.wait_for(sealed(), timeout)
        except TimeoutError:
            log.error("no audit checkpoint covered event %d within %.0f s", seq, timeout)
        except AuditError as exc:
            log.error("could not write an audit checkpoint: %s", exc)
        return None

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._next_look())
            self._wake.clear()
            try:
                if self.storage.head_poll is not None:
                    # Other nodes' appends reach no listener here.
                    self._on_append(await self.storage.head_seq(), "")
                if not self.due():
                    continue
                await self.seal()
            except Exception as exc:
                # Logged and retried at the next turn: the schedule must
                # outlive a full disk or a locked database.
                if isinstance(exc, AuditError):
                    log.error("could not write an audit checkpoint: %s", exc)
                else:
                    log.exception("could not write an audit checkpoint")
                await asyncio.sleep(self._poll)  # not a busy loop while it stays broken
