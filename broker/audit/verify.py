"""Verify the audit log: the hash chain, the signed checkpoints, purge records.

`verify_log` reads ``audit.db`` (read-only) and the checkpoint file and
reports every problem it finds in words an auditor can act on, the first bad
``seq`` foremost:

* each event's hash recomputed, its ``prev_hash`` link and its ``seq``
  following the one before — an edited, inserted, reordered or deleted row is
  named (the first one; what follows a break is not checked link by link);
* each checkpoint line parsed, its signature checked with the audit public
  key, and its ``prev`` link to the line before — a forged, re-signed,
  removed or reordered checkpoint is named by line;
* each checkpoint's (seq, hash) against the event with that seq, and the
  newest checkpoint against the end of the log — truncation, or a database
  rolled back to an older copy, is caught;
* the checkpoint file against the ``checkpoints`` table of the database;
* each line of every witness file (`witnesses`: checkpoints kept elsewhere —
  a copy shipped by ``serve --checkpoint-command``, an agent's
  ``checkpoints.jsonl``; lines need not be consecutive or chained): its
  signature, that its seq is not past the end of the log (the log was cut),
  that the event at its seq has the hash it signed (the log was altered),
  and for a seq no longer in the log, that a signed purge record covers it;
* how many events lie after the newest checkpoint (`VerifyReport.unsealed`):
  those are what a cut of the log's end could still remove unseen;
* a log whose first event is not seq 1 is accepted only if a later, intact
  ``events_purged`` event carries a validly signed purge record for exactly
  the events before it (`broker.audit.purge_record`: `check_purge_body`,
  `purge_covers`; `purge_body` makes one). Checkpoints of purged seqs are
  then checked only for their signature and chain.

Memory stays bounded however long the log: the events are one streaming
query read in batches, the checkpoint file is read line by line alongside
them (both are in seq order), and the file is matched against the table as
a merge, remembering only lines and rows that do not pair up.

Speed: the chain is walked by `chain.ChainWalk`, the same walk as the
store's `verify_chain`. A row's hash is first computed over its stored body
text as it is (`chain.stored_row_hash`) — which is exactly
`chain.event_hash` for every row the store wrote, since it stores the
canonical text — and only a row that does not match that way is decided by
`chain.event_hash` itself. A row passes the fast path only if its stored
hash covers its exact stored bytes, so no change can slip through it.

Nothing here writes; the caller records that the log was verified.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import nacl.signing

from broker.audit.chain import GENESIS_HASH, ChainWalk, StoredRow, row_hash
from broker.audit.checkpoint_record import (
    GENESIS_CHECKPOINT,
    Checkpoint,
    parse_checkpoint,
    row_digest,
)

# Re-exported: the purge record's format lived here before it had a module.
from broker.audit.purge_record import (
    PURGE_EVENT,
    PurgeRecord,
    check_purge_body,
    purge_body,
    purge_covers,
)
from broker.audit.schema import has_checkpoint_table
from broker.errors import AuditError

__all__ = [
    "PURGE_EVENT",
    "Problem",
    "PurgeRecord",
    "VerifyReport",
    "check_purge_body",
    "purge_body",
    "purge_covers",
    "verify_log",
]

_BATCH = 5000
# Rows either side of a bad row searched for the seq its contents belong to.
_REORDER_WINDOW = 64
# Problems of one kind listed before the rest are only counted: a file
# re-signed with another key would otherwise print every one of its lines.
_LIST_LIMIT = 20
# How long a checkpoint line missing from the table is given to arrive: the
# broker fsyncs the line, then commits the row, so one may be in flight.
_TABLE_CATCH_UP = (0.05, 0.25)


# -- the report -----------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong, in words; `seq` and `line` say where, when known."""

    message: str
    seq: int | None = None  # the first event this makes suspect
    line: int | None = None  # the checkpoint file line it is about

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class VerifyReport:
    """What `verify_log` found. `ok` is true only if `problems` is empty."""

    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    checkpoints: int = 0  # checkpoint lines whose signature verifies
    last_checkpoint: Checkpoint | None = None  # the file's last valid line
    purged_through: int | None = None
    # Events after the newest checkpoint (file or table): not yet sealed.
    unsealed: int = 0
    witness_checkpoints: int = 0  # witness lines that agree with the log
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def add(self, kind: str, problem: Problem) -> None:
        """Record a problem; past `_LIST_LIMIT` of one kind, only count it."""
        self._counts[kind] = self._counts.get(kind, 0) + 1
        if self._counts[kind] <= _LIST_LIMIT:
            self.problems.append(problem)

    def close(self) -> None:
        for kind, count in self._counts.items():
            if count > _LIST_LIMIT:
                self.problems.append(Problem(
                    f"... and {count - _LIST_LIMIT} more problems like the above ({kind})"))
        self._counts.clear()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    def ordered_problems(self) -> list[Problem]:
        """Event problems by seq first, then checkpoint-file problems by line."""
        return sorted(self.problems, key=lambda p: (
            p.seq is None, p.seq or 0, p.line is None, p.line or 0))

    def summary(self) -> str:
        span = ("no events" if self.first_seq is None
                else f"{self.events} events (seq {self.first_seq}-{self.last_seq})")
        if self.purged_through is not None:
            span += f", seq 1-{self.purged_through} purged by retention"
        cps = f"{self.checkpoints} checkpoint{'' if self.checkpoints == 1 else 's'}"
        if self.last_checkpoint is not None:
            cps += f", last at {self.last_checkpoint.time} (seq {self.last_checkpoint.seq})"
        cps += (f", {self.unsealed} event{'' if self.unsealed == 1 else 's'} after the "
                "newest checkpoint")
        if self.witness_checkpoints:
            cps += (f", {self.witness_checkpoints} witness checkpoint"
                    f"{'' if self.witness_checkpoints == 1 else 's'} agree")
        if self.ok:
            return f"audit log intact: {span}, {cps}"
        count = len(self.problems)
        first = ("" if self.first_bad_seq is None
                 else f", first bad seq {self.first_bad_seq}")
        return (f"audit log NOT intact: {count} problem{'' if count == 1 else 's'}{first} "
                f"({span}, {cps})")

    def as_dict(self) -> dict[str, Any]:
        last = self.last_checkpoint
        return {
            "ok": self.ok, "first_bad_seq": self.first_bad_seq, "events": self.events,
            "first_seq": self.first_seq, "last_seq": self.last_seq,
            "purged_through": self.purged_through, "checkpoints": self.checkpoints,
            "unsealed": self.unsealed, "witness_checkpoints": self.witness_checkpoints,
            "last_checkpoint": None if last is None else {
                "seq": last.seq, "hash": last.hash, "time": last.time},
            "problems": [p.as_dict() for p in self.ordered_problems()],
            "notes": list(self.notes),
        }


def _short(digest: str) -> str:
    return digest[:16] + "…" if len(digest) > 16 else digest


# -- the checkpoints ------------------------------------------------------------


@dataclass(frozen=True)
class _Anchor:
    """What a validly signed checkpoint says, to hold the events against."""

    seq: int
    hash: str
    time: str
    where: str  # "checkpoint line 4" or "database checkpoint #4"
    line: int | None


@dataclass
class _Segment:
    """Consecutive lines each linking to the one before: the signature of the
    last vouches for all (each record's ``prev`` is the digest of the one
    before it), so one check covers the run, unless it fails."""

    offset: int  # where its first line starts in the file
    first: int  # its first line number
    last: Checkpoint
    last_line: int
    pending: dict[int, list[Problem]] = field(default_factory=dict)  # kept if authentic


class _CheckpointScan:
    """The checkpoint file and its match with the table, in two streaming passes.

    `check()` reads every line: shape, ``prev`` links, signatures (one per
    run of linked lines; line by line only in a run that fails), and pairs
    lines with table rows as a merge. `anchors()` reads the file again and
    yields the authentic lines, to hold against the events. `finish()`
    reports what the file and the table do not share.
    """

    def __init__(self, path: Path | None, conn: sqlite3.Connection,
                 key: nacl.signing.VerifyKey, report: VerifyReport) -> None:
        self.path = path
        self.conn = conn
        self.key = key
        self.report = report
        self.lines = 0
        self.offset = 0  # bytes of the file read
        self.forged: set[int] = set()  # line numbers whose signature fails
        self.last_row_id = 0
        # Digests of lines not (yet) found in the table, and rows not in the file.
        self.unmatched_lines: dict[str, int] = {}
        self.unmatched_rows: dict[str, tuple[int, str]] = {}
        self.has_table = has_checkpoint_table(conn)
        self._rows: Iterator[tuple[int, str]] = iter(
            conn.execute("SELECT id, record FROM checkpoints ORDER BY id")
            if self.has_table else ())

    def _open(self) -> BinaryIO | None:
        if self.path is None:
            return None
        try:
            return open(self.path, "rb")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise AuditError(f"cannot read the checkpoint file {self.path}: {exc}") from exc

    def _pair(self, text: bytes, line_digest: str) -> None:
        """Match the next line with the next row, or remember either."""
        row = next(self._rows, None)
        if row is not None:
            self.last_row_id = row[0]
            if row[1].encode() == text:
                return  # the usual case: the very same canonical text
            digest = row_digest(row[1]) or f"bad row {row[0]}"
            if digest == line_digest:
                return
            if self.unmatched_lines.pop(digest, None) is None:
                self.unmatched_rows[digest] = (row[0], row[1])
        if self.unmatched_rows.pop(line_digest, None) is None:
            self.unmatched_lines[line_digest] = self.lines

    def check(self) -> None:
        handle = self._open()
        if handle is None:
            return
        segment: _Segment | None = None
        # The line before, whether it is authentic (known once its segment
        # is closed), and its seq.
        prev_line, prev_ok, prev_seq = 0, True, 0
        with handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    # An interrupted write never reached the table (the row
                    # commits after the line is fsynced) and says nothing.
                    self.report.notes.append(
                        f"the checkpoint file {self.path} ends in an incomplete line (an "
                        "interrupted write; the broker removes it when it next checkpoints)")
                    break
                start = self.offset
                self.offset += len(raw)
                self.lines += 1
                number = self.lines
                try:
                    checkpoint = parse_checkpoint(raw)
                except AuditError as exc:
                    self._pair(raw[:-1], f"bad line {number}")
                    if segment is not None:
                        self._close(handle, segment)
                        segment = None
                    self.report.add("damaged checkpoint lines", Problem(
                        f"checkpoint line {number}: not a checkpoint record ({exc}): edited "
                        "or damaged", line=number))
                    prev_line, prev_ok = number, False
                    continue
                self._pair(raw[:-1], checkpoint.digest)
                if segment is not None and checkpoint.prev == segment.last.digest:
                    if checkpoint.seq < segment.last.seq:
                        self._backwards(segment, number, checkpoint.seq, segment.last_line,
                                        segment.last.seq)
                    segment.last, segment.last_line = checkpoint, number
                    continue
                if segment is not None:
                    prev_ok = self._close(handle, segment)
                    prev_seq = segment.last.seq if prev_ok else prev_seq
                segment = _Segment(start, number, checkpoint, number)
                # The break is this line's doing unless the one before is bad.
                if prev_ok and (prev_line or checkpoint.prev != GENESIS_CHECKPOINT):
                    after = "the start of the file" if prev_line == 0 else f"line {prev_line}"
                    segment.pending.setdefault(number, []).append(Problem(
                        f"checkpoint line {number}: does not follow {after} (checkpoints "
                        "removed or reordered)", line=number))
                if checkpoint.seq < prev_seq:
                    self._backwards(segment, number, checkpoint.seq, prev_line, prev_seq)
                prev_line = number
            if segment is not None:
                self._close(handle, segment)

    @staticmethod
    def _backwards(segment: _Segment, number: int, seq: int, before: int,
                   before_seq: int) -> None:
        segment.pending.setdefault(number, []).append(Problem(
            f"checkpoint line {number}: covers seq {seq}, behind seq {before_seq} of line "
            f"{before}: the log went backwards (restored from an older copy?)",
            seq=seq + 1, line=number))

    def _close(self, handle: BinaryIO, segment: _Segment) -> bool:
        """Verify a segment; True if its last line is authentic."""
        try:
            segment.last.verify_signature(self.key)
        except AuditError:
            self._name_forged(handle, segment)
            return False
        self.report.checkpoints += segment.last_line - segment.first + 1
        self.report.last_checkpoint = segment.last
        for number in sorted(segment.pending):
            for problem in segment.pending[number]:
                self.report.add("checkpoint links", problem)
        return True

    def _name_forged(self, handle: BinaryIO, segment: _Segment) -> None:
        """Check a failed segment line by line, reading it again."""
        resume = handle.tell()
        handle.seek(segment.offset)
        for number in range(segment.first, segment.last_line + 1):
            checkpoint = parse_checkpoint(handle.readline())
            try:
                checkpoint.verify_signature(self.key)
            except AuditError:
                self.forged.add(number)
                self.report.add("checkpoint signatures", Problem(
                    f"checkpoint line {number}: signature does not verify with the audit "
                    "public key (forged or re-signed)", line=number))
                continue
            self.report.checkpoints += 1
            self.report.last_checkpoint = checkpoint
            for problem in segment.pending.get(number, []):
                self.report.add("checkpoint links", problem)
        handle.seek(resume)

    def anchors(self) -> Iterator[_Anchor]:
        """The authentic lines, in file order (the second pass)."""
        handle = self._open()
        if handle is None:
            return
        with handle:
            for number in range(1, self.lines + 1):
                raw = handle.readline()
                if number in self.forged:
                    continue
                # Checked in the first pass; what is read now is only what it says
                # (a line that no longer parses was changed meanwhile: skipped).
                try:
                    payload = json.loads(raw)["payload"]
                    anchor = _Anchor(int(payload["seq"]), str(payload["hash"]),
                                     str(payload["time"]), f"checkpoint line {number}", number)
                except (ValueError, TypeError, KeyError):
                    continue
                yield anchor

    def finish(self) -> list[_Anchor]:
        """Report lines and rows that did not pair up; the validly signed rows
        found only in the table, as evidence of what the log held."""
        for row_id, record in self._rows:
            self.last_row_id = row_id
            digest = row_digest(record) or f"bad row {row_id}"
            if self.unmatched_lines.pop(digest, None) is None:
                self.unmatched_rows[digest] = (row_id, record)
        self._catch_up()
        if self.path is not None and not self.path.exists() and self.unmatched_rows:
            self.report.add("missing checkpoint file", Problem(
                f"the checkpoint file {self.path} is missing, but the database holds "
                "checkpoints: it was deleted or moved"))
        for number in sorted(self.unmatched_lines.values()):
            self.report.add("checkpoint lines not in the database", Problem(
                f"checkpoint line {number} is not in the database's checkpoints table (the "
                "line was edited or added, or the row removed from the database)",
                line=number))
        extra: list[_Anchor] = []
        for row_id, record in sorted(self.unmatched_rows.values()):
            try:
                checkpoint = parse_checkpoint(record, self.key)
            except AuditError as exc:
                self.report.add("database checkpoints", Problem(
                    f"database checkpoint #{row_id} is not in the checkpoint file and is not "
                    f"a valid checkpoint either ({exc})"))
                continue
            if self.path is not None and self.path.exists():
                self.report.add("database checkpoints not in the file", Problem(
                    f"database checkpoint #{row_id} (seq {checkpoint.seq}, {checkpoint.time}) "
                    f"is not in the checkpoint file {self.path}: lines there were edited or "
                    "removed, or the file was rolled back"))
            extra.append(_Anchor(checkpoint.seq, checkpoint.hash, checkpoint.time,
                                 f"database checkpoint #{row_id}", None))
        return extra

    def _catch_up(self) -> None:
        """Forgive what a checkpoint written while we read explains."""
        # A line at the very end whose row is not committed yet.
        for wait in _TABLE_CATCH_UP:
            if self.lines not in self.unmatched_lines.values() or not self.has_table:
                break
            time.sleep(wait)
            for row_id, record in self.conn.execute(
                    "SELECT id, record FROM checkpoints WHERE id > ? ORDER BY id",
                    (self.last_row_id,)):
                self.last_row_id = row_id
                self.unmatched_lines.pop(row_digest(record) or "", None)
        # A row committed after we read the file: its line was written first.
        if self.unmatched_rows and self.path is not None:
            try:
                with open(self.path, "rb") as handle:
                    handle.seek(self.offset)
                    for raw in handle:
                        self.unmatched_rows.pop(row_digest(raw.decode("utf-8", "replace"))
                                                or "", None)
            except OSError:
                pass  # gone meanwhile: what is unmatched stays reported


# -- the events --------------------------------------------------------------------

def _diagnose(conn: sqlite3.Connection, row: StoredRow, before_previous: str | None) -> Problem:
    """Why a row does not chain: changed, moved from another seq, or orphaned."""
    seq, prev_hash, stored = row[0], row[7], row[8]
    belongs = None
    if row_hash(row, seq) != stored:
        for distance in range(1, _REORDER_WINDOW + 1):
            for candidate in (seq - distance, seq + distance):
                if candidate >= 1 and row_hash(row, candidate) == stored:
                    belongs = candidate
                    break
            if belongs is not None:
                break
        if belongs is None:
            return Problem(f"seq {seq}: contents changed (hash does not match)", seq=seq)
    if belongs == seq - 1 and prev_hash == before_previous:
        # This is the event that used to be the one before, and the row before
        # it chains from nowhere we know: a row was slipped in, the rest renumbered.
        return Problem(f"seq {seq - 1}: was inserted (seq {seq} holds the event recorded as "
                       f"seq {seq - 1}; the events after it were renumbered)", seq=seq - 1)
    if belongs is not None:
        # Moved here from another seq: swapped with a row still in the log, or
        # shifted down over a deleted one (whose hash is then nowhere).
        held = conn.execute("SELECT 1 FROM events WHERE hash = ? LIMIT 1",
                            (prev_hash,)).fetchone()
        if held is None and belongs > seq:
            return Problem(
                f"seq {seq}: does not follow seq {seq - 1} (an event is missing or was "
                f"inserted: seq {seq} holds the event recorded as seq {belongs}, and the "
                "events after a deleted one were renumbered)", seq=seq)
        return Problem(f"seq {seq}: out of order (holds the event recorded as seq {belongs})",
                       seq=seq)
    return Problem(f"seq {seq}: does not follow seq {seq - 1} (an event is missing or was "
                   f"inserted: its prev_hash is not the hash of seq {seq - 1})", seq=seq)


class _EventScan:
    """One pass over the events, in seq order, holding the checkpoints against them."""

    def __init__(self, conn: sqlite3.Connection, key: nacl.signing.VerifyKey | None,
                 report: VerifyReport) -> None:
        self.conn = conn
        self.key = key
        self.report = report
        self.first_prev: str | None = None
        self.walk = ChainWalk()  # started at the first row, wherever the log begins
        self.broken_at: int | None = None  # seq of the first break in the chain
        self.matched = 0  # the highest seq a checkpoint confirmed
        self.purges: list[tuple[int, str]] = []
        self.beyond: _Anchor | None = None  # the newest checkpoint past the end
        self.newest_sealed: int | None = None  # the highest seq a checkpoint covers

    def run(self, anchors: Iterator[_Anchor], batch_size: int) -> None:
        cursor = self.conn.execute("SELECT seq, time, type, session, actor, subject, body, "
                                   "prev_hash, hash FROM events ORDER BY seq")
        waiting = next(anchors, None)
        while rows := cursor.fetchmany(batch_size):
            if self.report.first_seq is None:
                self.report.first_seq = rows[0][0]
                self.first_prev = rows[0][7]
                self.walk = ChainWalk(rows[0][0], rows[0][7])
            self.report.events += len(rows)
            if self.broken_at is None:
                self._chain(rows)
            low, high = rows[0][0], rows[-1][0]
            contiguous = high - low + 1 == len(rows)
            by_seq: dict[int, StoredRow] | None = None
            while waiting is not None and waiting.seq <= high:
                seq = waiting.seq
                if seq < low:
                    self.hold(waiting, None)
                elif contiguous:
                    self.hold(waiting, rows[seq - low][8])
                else:
                    by_seq = by_seq or {r[0]: r for r in rows}
                    row = by_seq.get(seq)
                    if row is not None:  # else a gap, which the chain check names
                        self.hold(waiting, row[8])
                waiting = next(anchors, None)
            self.report.last_seq = high
        while waiting is not None:
            self.hold(waiting, None)
            waiting = next(anchors, None)

    def _chain(self, rows: list[StoredRow]) -> None:
        """Check links and hashes until the first break (`chain.ChainWalk`),
        and say why the row that breaks it does not follow."""
        walk = self.walk
        broken = walk.first_break(rows)
        good = rows if broken is None else rows[:broken]
        self.purges.extend((row[0], row[6]) for row in good if row[2] == PURGE_EVENT)
        if broken is None:
            return
        row, expected_seq = rows[broken], walk.expected_seq
        seq = row[0]
        if seq != expected_seq:
            gap = (f"seq {expected_seq} is missing" if seq == expected_seq + 1
                   else f"seq {expected_seq}-{seq - 1} are missing")
            self.report.add("events", Problem(
                f"seq {seq}: does not follow seq {expected_seq - 1} (an event is missing "
                f"or was inserted: {gap})", seq=seq))
        else:
            self.report.add("events", _diagnose(self.conn, row, walk.before_previous))
        self.broken_at = seq

    def hold(self, anchor: _Anchor, stored: str | None) -> None:
        """Compare one checkpoint with the event it covers (`stored`: its hash,
        if at hand; else it is looked up)."""
        cp, report = anchor, self.report
        self.newest_sealed = max(cp.seq, self.newest_sealed or 0)
        if cp.seq == 0:
            if cp.hash != GENESIS_HASH:
                report.add("checkpoints", Problem(
                    f"{anchor.where}: a checkpoint of the empty log must name the genesis "
                    "hash", line=anchor.line))
            return
        first = report.first_seq
        if first is not None and cp.seq < first:
            # Purged (if a signed record says so, see `_check_start`): only the
            # link to the first kept event can still be checked.
            if cp.seq == first - 1 and cp.hash != self.first_prev:
                report.add("checkpoint hashes", Problem(
                    f"checkpoint for seq {cp.seq} names hash {_short(cp.hash)} but event "
                    f"{first} follows hash {_short(self.first_prev or '')} ({anchor.where}, "
                    f"{cp.time})", seq=first, line=anchor.line))
            return
        if stored is None:
            if report.last_seq is None or cp.seq > report.last_seq:
                if self.beyond is None or cp.seq >= self.beyond.seq:
                    self.beyond = anchor
                return
            row = self.conn.execute("SELECT hash FROM events WHERE seq = ?",
                                    (cp.seq,)).fetchone()
            if row is None:
                return  # a gap, which the chain check names
            stored = str(row[0])
        if stored == cp.hash:
            self.matched = max(self.matched, cp.seq)
            return
        if self.broken_at is not None and self.broken_at <= cp.seq:
            why = f"follows from the break at seq {self.broken_at}"
        else:
            # The chain holds, so it was recomputed after a change somewhere
            # since the last checkpoint that still matches.
            why = (f"an event in seq {self.matched + 1}-{cp.seq} was changed, inserted or "
                   "removed and the chain recomputed")
        report.add("checkpoint hashes", Problem(
            f"checkpoint for seq {cp.seq} names hash {_short(cp.hash)} but event {cp.seq} "
            f"has hash {_short(stored)} ({anchor.where}, {cp.time}: {why})",
            seq=cp.seq, line=anchor.line))

    def finish(self) -> None:
        self._check_start()
        last = self.report.last_seq
        if last is not None:
            sealed = self.newest_sealed if self.newest_sealed is not None else 0
            self.report.unsealed = (min(self.report.events, last - sealed)
                                    if last > sealed else 0)
        if self.beyond is not None:
            cp, last = self.beyond, self.report.last_seq
            end = "log is empty" if last is None else f"log ends at seq {last}"
            self.report.add("truncation", Problem(
                f"{end} but checkpoint of {cp.time} covers seq {cp.seq}: events were deleted "
                "from the end (truncated), or audit.db was replaced by an older copy",
                seq=(last or 0) + 1, line=self.beyond.line))

    def _check_start(self) -> None:
        """A log not starting at seq 1 must show a signed purge record for the gap."""
        first = self.report.first_seq
        if first is None:
            return
        if first == 1:
            if self.first_prev != GENESIS_HASH:
                self.report.add("events", Problem(
                    "seq 1: does not start the chain (its prev_hash is not the genesis hash)",
                    seq=1))
            return
        reasons: list[str] = []
        for seq, body_text in self.purges:
            try:
                body = json.loads(body_text)
                if not isinstance(body, dict):
                    raise AuditError("its body is not an object")
                if self.key is None:
                    raise AuditError("there is no audit public key to check it with")
                purge = check_purge_body(body, self.key)
            except (ValueError, AuditError) as exc:
                reasons.append(f"the purge record at seq {seq} is not valid: {exc}")
                continue
            if purge_covers(purge, first, self.first_prev or ""):
                self.report.purged_through = purge.through_seq
                return
            reasons.append(f"the purge record at seq {seq} covers seq 1-{purge.through_seq}")
        why = "; ".join(reasons) if reasons else "there is no events_purged record"
        self.report.add("events", Problem(
            f"seq {first}: the log starts here, but no valid signed purge record accounts "
            f"for seq 1-{first - 1} ({why}): events were deleted from the start", seq=first))


# -- witnesses -----------------------------------------------------------------------


def witness_lines(path: Path, key: nacl.signing.VerifyKey,
                  report: VerifyReport) -> list[tuple[str, Checkpoint]]:
    """The signed checkpoints of one witness file, each with where it is;
    a line that is not one is reported."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise AuditError(f"cannot read the witness file {path}: {exc}") from exc
    lines = []
    with handle:
        for number, raw in enumerate(handle, 1):
            where = f"witness {path} line {number}"
            if not raw.strip():
                continue
            try:
                lines.append((where, parse_checkpoint(raw, key)))
            except AuditError as exc:
                report.add("witness lines", Problem(
                    f"{where}: not a checkpoint signed by the audit key ({exc})"))
    return lines


def witness_seqs(lines: Sequence[tuple[str, Checkpoint]], report: VerifyReport) -> set[int]:
    """The seqs whose hash `hold_witness` will look up in the log."""
    first, last = report.first_seq, report.last_seq
    return {cp.seq for _, cp in lines
            if cp.seq > 0 and last is not None and cp.seq <= last
            and (first is None or cp.seq >= first)}


def hold_witness(lines: Sequence[tuple[str, Checkpoint]], report: VerifyReport,
                 first_prev: str | None, hash_at: Callable[[int], str | None]) -> None:
    """Hold every witness checkpoint against the log (after the event scan,
    which set the log's span and what retention purged); `hash_at(seq)` is
    the log's hash of an event it holds. Both backends' verify use it."""
    first, last, purged = report.first_seq, report.last_seq, report.purged_through
    for where, cp in lines:
        if cp.seq == 0:
            agrees = cp.hash == GENESIS_HASH
        elif last is None or cp.seq > last:
            end = "the log is empty" if last is None else f"the log ends at seq {last}"
            report.add("witness truncation", Problem(
                f"{where}: the checkpoint of {cp.time} covers seq {cp.seq} but {end}: "
                f"the log was cut (events from seq {(last or 0) + 1} deleted) or "
                "replaced by an older copy", seq=(last or 0) + 1))
            continue
        elif first is not None and cp.seq < first:
            if purged is None or cp.seq > purged:
                report.add("witness purged", Problem(
                    f"{where}: seq {cp.seq} (checkpoint of {cp.time}) is no longer in "
                    "the log and no signed purge record covers it: events were deleted "
                    "from the start", seq=cp.seq))
                continue
            agrees = cp.seq != first - 1 or cp.hash == first_prev
        else:
            agrees = hash_at(cp.seq) == cp.hash
        if not agrees:
            report.add("witness hashes", Problem(
                f"{where}: the checkpoint of {cp.time} signed hash {_short(cp.hash)} for "
                f"seq {cp.seq}, which the log no longer holds: the log was altered at or "
                f"before seq {cp.seq}", seq=cp.seq))
            continue
        report.witness_checkpoints += 1


def _check_witness(conn: sqlite3.Connection, path: Path, key: nacl.signing.VerifyKey,
                   report: VerifyReport, first_prev: str | None) -> None:
    def hash_at(seq: int) -> str | None:
        row = conn.execute("SELECT hash FROM events WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    hold_witness(witness_lines(path, key, report), report, first_prev, hash_at)


# -- the whole check -----------------------------------------------------------------


def _open_read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise AuditError(f"no audit log at {db_path}")
    try:
        conn = sqlite3.connect(f"file:{quote(str(db_path.absolute()))}?mode=ro", uri=True,
                               isolation_level=None)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise AuditError(f"cannot open the audit log {db_path}: {exc}") from exc
    return conn


def verify_log(
    db_path: Path,
    *,
    public_key: nacl.signing.VerifyKey | None,
    checkpoint_file: Path | None,
    witnesses: Sequence[Path] = (),
    batch_size: int = _BATCH,
) -> VerifyReport:
    """Check everything the module docstring lists; tampering is reported,
    never raised.

    Raises AuditError only when the check cannot run: no database, an
    unreadable file, or checkpoints to check but no `public_key`. With
    `checkpoint_file` None only the database's own checkpoints table is used.
    `witnesses` (files of checkpoints kept elsewhere) need `public_key` too.
    """
    if witnesses and public_key is None:
        raise AuditError("witness files hold signed checkpoints: pass --pubkey FILE (the "
                         "output of `audit pubkey`) to check them")
    report = VerifyReport()
    conn = _open_read_only(db_path)
    try:
        has_rows = has_checkpoint_table(conn) and conn.execute(
            "SELECT 1 FROM checkpoints LIMIT 1").fetchone() is not None
        has_file = checkpoint_file is not None and checkpoint_file.exists()
        if public_key is None and (has_rows or (
                has_file and checkpoint_file is not None and checkpoint_file.stat().st_size)):
            raise AuditError("there are signed checkpoints but no audit public key to check "
                             "them with: pass --pubkey FILE (the output of `audit pubkey`)")
        events = _EventScan(conn, public_key, report)
        if public_key is None:
            report.notes.append("no checkpoints: events deleted from the end of the log "
                                "cannot be detected until the broker writes some")
            events.run(iter(()), batch_size)
        else:
            scan = _CheckpointScan(checkpoint_file, conn, public_key, report)
            scan.check()
            events.run(scan.anchors(), batch_size)
            for anchor in scan.finish():
                events.hold(anchor, None)
            if not scan.lines and not has_rows:
                report.notes.append("no checkpoints: events deleted from the end of the log "
                                    "cannot be detected until the broker writes some")
        events.finish()
        for witness in witnesses:
            if public_key is not None:
                _check_witness(conn, Path(witness), public_key, report, events.first_prev)
    except sqlite3.Error as exc:
        raise AuditError(f"cannot read the audit log {db_path}: {exc}") from exc
    finally:
        conn.close()
    report.close()
    return report
