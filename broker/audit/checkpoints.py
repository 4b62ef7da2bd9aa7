"""Signed checkpoints of the audit log, kept in two places.

The hash chain alone shows that rows were edited, inserted, reordered or
removed from the middle; it cannot show that the newest rows were cut off, or
that the whole file was swapped for an older copy. A checkpoint can: the
broker's audit key (``broker.audit.signing``, outside the database) signs

    payload = {"kind": "checkpoint", "seq": N, "hash": hash of event N,
               "time": UTC ISO 8601, "prev": SHA-256 hex of the canonical bytes
               of the previous signed checkpoint record ("0" * 64 for the first)}

as a signed record ``{"payload": ..., "signature": ...}`` and keeps it

* as one canonical JSON line, fsynced, appended to a file outside the database
  (default ``data_dir/checkpoints.jsonl``; put it on another disk or ship it
  elsewhere for a stronger anchor), and
* as a row of the ``checkpoints`` table of ``audit.db`` (id, seq, record).

`verify` (``broker.audit.verify``) checks every line's signature and ``prev``
link, compares each (seq, hash) with the events, and the file with the table.
An empty log is checkpointed as seq 0 with the chain's genesis hash.

The file line is written and fsynced *before* the table row commits, inside
the same write transaction, so the file is never behind the database. A crash
between the two leaves the file one line ahead; the next checkpoint repairs
the table from it. Anything else that makes the two disagree is refused, and
left for `verify` to explain.

The `Checkpointer` is what the broker runs: a checkpoint every N events (a
listener on `AuditLog.append` counts them) or every T seconds even when idle
(then it re-signs the same seq and hash with a newer time, proving the log was
not cut short meanwhile), one at start-up and one at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import json.encoder
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing

from broker.audit.chain import GENESIS_HASH, canonical_json, format_time
from broker.audit.signing import load_or_create_signing_key, sign_record, verify_record
from broker.audit.store import AuditLog
from broker.errors import AuditError

__all__ = [
    "CHECKPOINT_FILE",
    "DEFAULT_EVERY_EVENTS",
    "DEFAULT_EVERY_SECONDS",
    "GENESIS_CHECKPOINT",
    "Checkpoint",
    "Checkpointer",
    "ensure_checkpoint_table",
    "parse_checkpoint",
    "record_digest",
]

CHECKPOINT_FILE = "checkpoints.jsonl"
DEFAULT_EVERY_EVENTS = 100
DEFAULT_EVERY_SECONDS = 60.0
# "prev" of the first checkpoint: there is no record before it.
GENESIS_CHECKPOINT = "0" * 64
# How long a checkpoint waits for the database's write lock (a long admin
# command, say) before it gives up and tries again at the next turn.
_BUSY_TIMEOUT = 10.0
# A checkpoint line is ~300 bytes; the tail read looks at this much of the file.
_TAIL_BYTES = 64 * 1024
_HEX64 = re.compile(r"[0-9a-f]{64}")

log = logging.getLogger("consentry.audit.checkpoints")

_TABLE = """
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


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint: what it says, and the record that says it."""

    seq: int
    hash: str
    time: str
    prev: str
    record: dict[str, Any]
    digest: str  # `record_digest(record)`: what the next checkpoint's ``prev`` must be

    def line(self) -> bytes:
        """The record as one line of the checkpoint file."""
        return canonical_json(self.record) + b"\n"


def _canonical_encoder() -> Callable[[Any], bytes]:
    """`chain.canonical_json`'s encoding, with the C encoder made once:
    json.dumps builds a new one per call, and a verifier digests every line
    of a checkpoint file that grows by some 500,000 lines a year."""
    make = json.encoder.c_make_encoder

    def refuse(value: object) -> object:
        raise TypeError(f"{type(value).__name__} is not plain JSON")

    if make is None:  # pragma: no cover - CPython has it
        return canonical_json
    encode = make(None, refuse, json.encoder.encode_basestring, None, ":", ",",
                  True, False, False)
    return lambda value: "".join(encode(value, 0)).encode("utf-8")


_canonical = _canonical_encoder()


def record_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical bytes of a signed checkpoint record."""
    try:
        return hashlib.sha256(_canonical(dict(record))).hexdigest()
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit data is not plain JSON: {exc}") from exc


def parse_checkpoint(
    text: str | bytes, public_key: nacl.signing.VerifyKey | None = None
) -> Checkpoint:
    """Read one checkpoint record (a file line or a table row).

    Raises AuditError saying what is wrong with its shape; with `public_key`,
    also if the signature does not verify (the message then begins
    "signature does not verify").
    """
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AuditError(f"not JSON ({exc})") from None
    if not isinstance(record, dict) or set(record) != {"payload", "signature"}:
        raise AuditError("not a signed record (expected payload and signature)")
    payload = record["payload"]
    if not isinstance(payload, dict) or payload.get("kind") != "checkpoint":
        raise AuditError("its payload is not a checkpoint")
    seq, digest, time, prev = (payload.get(k) for k in ("seq", "hash", "time", "prev"))
    if set(payload) != {"kind", "seq", "hash", "time", "prev"}:
        raise AuditError("its payload has missing or unexpected fields")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise AuditError("its seq is not a non-negative integer")
    if not _is_hex64(digest) or not _is_hex64(prev):
        raise AuditError("its hash or prev is not a SHA-256 hex digest")
    if not isinstance(time, str) or not isinstance(record["signature"], str):
        raise AuditError("its time or signature is not a string")
    if public_key is not None:
        verify_record(public_key, record)
    return Checkpoint(seq, str(digest), time, str(prev), record, record_digest(record))


def ensure_checkpoint_table(conn: sqlite3.Connection) -> None:
    """Create the checkpoints table (and its append-only guard) if missing."""
    conn.executescript(f"BEGIN IMMEDIATE;{_TABLE}COMMIT;")


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


class Checkpointer:
    """Writes signed checkpoints of one audit log; see the module docstring.

    `clock` gives the checkpoint times and drives the T-second schedule (a
    fake one in tests); `poll` caps how long the background task sleeps
    between looks at that clock.
    """

    def __init__(
        self,
        audit: AuditLog,
        data_dir: Path,
        *,
        checkpoint_file: Path | None = None,
        every_events: int = DEFAULT_EVERY_EVENTS,
        every_seconds: float = DEFAULT_EVERY_SECONDS,
        clock: Callable[[], dt.datetime] = _utcnow,
        poll: float = 5.0,
    ) -> None:
        if every_events < 1 or every_seconds <= 0 or poll <= 0:
            raise AuditError("checkpoints need a positive event count, interval and poll time")
        self.audit = audit
        self.data_dir = Path(data_dir)
        self.path = (Path(checkpoint_file) if checkpoint_file is not None
                     else self.data_dir / CHECKPOINT_FILE)
        self.every_events = every_events
        self.every_seconds = every_seconds
        self._clock = clock
        self._poll = poll
        try:
            self._key = load_or_create_signing_key(self.data_dir)
        except OSError as exc:
            raise AuditError(f"cannot read or create the audit signing key in "
                             f"{self.data_dir}: {exc}") from exc
        self._table_ready = False
        # One checkpoint at a time, across threads: each chains on the last.
        self._write_lock = threading.Lock()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._latest_seq = 0  # newest seq this process appended
        self._last: Checkpoint | None = None  # newest checkpoint written here
        self._last_at: dt.datetime | None = None

    @property
    def last(self) -> Checkpoint | None:
        """The newest checkpoint this checkpointer wrote."""
        return self._last

    # -- scheduling -------------------------------------------------------

    def due(self) -> bool:
        """N events appended, or T seconds passed, since the last checkpoint."""
        if self._last is None or self._last_at is None:
            return True
        if self._latest_seq - self._last.seq >= self.every_events:
            return True
        return (self._clock() - self._last_at).total_seconds() >= self.every_seconds

    def _on_append(self, seq: int, _hash: str) -> None:
        # Runs inside every append: only count and, when due, wake the task.
        self._latest_seq = max(self._latest_seq, seq)
        if self._last is not None and seq - self._last.seq >= self.every_events:
            self._wake.set()

    async def start(self) -> None:
        """Check the log against the newest checkpoint, write one, then run.

        Refuses (AuditError) if the log no longer holds what the newest
        checkpoint signed — cut short, or replaced by an older copy: carrying
        on would bury the evidence under new checkpoints.
        """
        await asyncio.to_thread(self._check_tail)
        await self.checkpoint()
        self.audit.add_append_listener(self._on_append)
        self._task = asyncio.create_task(self._run(), name="audit-checkpointer")

    async def stop(self) -> None:
        """Stop the schedule and write a last checkpoint (failures are logged)."""
        self.audit.remove_append_listener(self._on_append)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.checkpoint()
        except AuditError as exc:
            log.error("could not write the final audit checkpoint: %s", exc)

    async def checkpoint(self) -> Checkpoint:
        """Sign and store a checkpoint of the newest event, now."""
        # In a thread, with its own connection: signing and two fsyncs must
        # not stall the event loop; the thread finishes even if we are cancelled.
        return await asyncio.to_thread(self._write, self._clock())

    async def _run(self) -> None:
        while True:
            timeout = self._poll
            if self._last_at is not None:
                elapsed = (self._clock() - self._last_at).total_seconds()
                timeout = min(self._poll, max(0.0, self.every_seconds - elapsed))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            if not self.due():
                continue
            try:
                await self.checkpoint()
            except Exception as exc:
                # Logged and retried at the next turn: the schedule must
                # outlive a full disk or a locked database.
                if isinstance(exc, AuditError):
                    log.error("could not write an audit checkpoint: %s", exc)
                else:
                    log.exception("could not write an audit checkpoint")
                await asyncio.sleep(self._poll)  # not a busy loop while it stays broken

    # -- the work, in a thread ----------------------------------------------

    def _newest_in_file(self) -> Checkpoint | None:
        line = _last_line(self.path)
        if line is None:
            return None
        try:
            return parse_checkpoint(line, self._key.verify_key)
        except AuditError as exc:
            raise AuditError(
                f"the last line of the checkpoint file {self.path} is not a checkpoint signed "
                f"by this broker's audit key {self.data_dir / 'audit.key'} ({exc}); the file "
                "or the key was replaced — run `consentry-broker audit verify`"
            ) from None

    def _check_tail(self) -> None:
        newest = self._newest_in_file()
        if newest is None or newest.seq == 0:
            return
        conn = _connect(self.audit.path)
        try:
            first, last = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
            row = conn.execute("SELECT hash FROM events WHERE seq = ?",
                               (newest.seq,)).fetchone()
        except sqlite3.Error as exc:
            raise AuditError(f"cannot read the audit log {self.audit.path}: {exc}") from exc
        finally:
            conn.close()
        if row is None and first is not None and newest.seq < first:
            return  # purged by retention; verify checks the signed purge record
        if row is None:
            raise AuditError(
                f"the audit log ends at seq {last or 0} but the checkpoint of {newest.time} "
                f"in {self.path} covers seq {newest.seq}: events were deleted from the end, "
                "or audit.db was replaced by an older copy. Run `consentry-broker audit "
                "verify`. Only if you are deliberately starting a new log, move the "
                "checkpoint file aside."
            )
        if row[0] != newest.hash:
            raise AuditError(
                f"event {newest.seq} of the audit log is not the one the checkpoint of "
                f"{newest.time} in {self.path} signed: the log was changed. Run "
                "`consentry-broker audit verify`."
            )

    def _write(self, now: dt.datetime) -> Checkpoint:
        time = format_time(now)
        with self._write_lock:
            conn = _connect(self.audit.path)
            try:
                if not self._table_ready:
                    ensure_checkpoint_table(conn)
                    self._table_ready = True
                # The write lock, so the newest event cannot change under us and
                # no other writer slips a checkpoint in between.
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                seq, digest = (0, GENESIS_HASH) if row is None else (int(row[0]), str(row[1]))
                prev = self._reconcile(conn)
                payload = {"kind": "checkpoint", "seq": seq, "hash": digest, "time": time,
                           "prev": prev}
                record = sign_record(self._key, payload)
                checkpoint = Checkpoint(seq, digest, time, prev, record, record_digest(record))
                conn.execute("INSERT INTO checkpoints (seq, record) VALUES (?, ?)",
                             (seq, canonical_json(record).decode()))
                _append_line(self.path, checkpoint.line())
                # The file has it now, so the next one chains on it even if the
                # commit below fails (the table is then repaired from the file).
                self._last, self._last_at = checkpoint, now
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise AuditError(f"cannot write an audit checkpoint to {self.audit.path}: "
                                 f"{exc}") from exc
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            finally:
                conn.close()
        self._latest_seq = max(self._latest_seq, seq)
        return checkpoint

    def _reconcile(self, conn: sqlite3.Connection) -> str:
        """The ``prev`` for the next checkpoint, once file and table agree.

        Only one disagreement is expected — the file one line ahead after a
        crash or failed commit — and that is repaired here. Any other means
        one of them was tampered with; writing on would hide that.
        """
        in_file = self._newest_in_file()
        row = conn.execute("SELECT record FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        file_digest = GENESIS_CHECKPOINT if in_file is None else in_file.digest
        table_digest = GENESIS_CHECKPOINT
        if row is not None:
            try:
                table_digest = record_digest(json.loads(row[0]))
            except (ValueError, AuditError):
                table_digest = "damaged"
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
            f"{self.audit.path} disagree about the newest checkpoint, so no new one is "
            "written: run `consentry-broker audit verify` to see which was changed"
        )
