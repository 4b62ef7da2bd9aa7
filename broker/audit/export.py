"""Exporting the event log for SIEM tools: JSON Lines or CSV, streamed.

`stream_events` reads the log in keyset-paged slices (`AuditLog.scan`,
oldest first) and hands each event to a writer as it comes, so memory stays
flat however long the log is: a million events export in the same few tens
of megabytes as a hundred.

What an export holds is the event skeleton only — seq, UTC time, type,
session, actor, the subject's *pseudonym*, the metadata body, and (JSON
Lines) the chain hashes, so a SIEM can re-check the chain with
`broker.audit.chain.event_hash`. Personal fields (device alias, IP,
hostname, OS user, signed receipts) are never exported this way: they stay
encrypted in the broker, under the data subject's key, where erasure and
retention can reach them.

The values are untrusted (an engineer's name, a reason a peer sent), so:

- JSON Lines are written with ``ensure_ascii``: every control or non-ASCII
  character is a ``\\u`` escape, one event per line, always.
- CSV cells are quoted by the `csv` module where needed, and a cell that
  begins with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a
  leading apostrophe (``'``), so a spreadsheet opening the file shows it as
  text instead of running it as a formula (CSV / formula injection). The
  apostrophe is the only change ever made to a value.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from broker.audit.interface import AuditEvent, AuditStore

__all__ = [
    "CSV_COLUMNS",
    "EXPORT_PAGE",
    "ExportFilters",
    "csv_cell",
    "csv_writer",
    "jsonl_line",
    "stream_events",
]

CSV_COLUMNS = ("seq", "time", "type", "session", "actor", "subject", "body_json")
# Events per read: large enough that the per-query cost vanishes, small
# enough that a page is a few hundred kilobytes.
EXPORT_PAGE = 2000
# What a spreadsheet would take as the start of a formula (OWASP's list).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# One encoder for every line (json.dumps with options builds one per call).
_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))


@dataclass(frozen=True)
class ExportFilters:
    """The filters of `audit export`, as those of `audit list` (less the
    alias search: a SIEM export does not touch personal data)."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    engineer: str | None = None
    type: str | None = None
    session: str | None = None


def _body_json(event: AuditEvent) -> str:
    return _JSON.encode(event.body)


def jsonl_line(event: AuditEvent) -> str:
    """One event as one line of JSON (ASCII only), newline included."""
    # Keys in sorted order as written, so no sorting per line; the body is
    # already sorted (canonical JSON when it was stored).
    return _JSON.encode({
        "actor": event.actor, "body": event.body, "hash": event.hash,
        "prev_hash": event.prev_hash, "seq": event.seq, "session": event.session,
        "subject": event.subject, "time": event.time, "type": event.type,
    }) + "\n"


def csv_cell(value: object) -> str:
    """A CSV cell that no spreadsheet will evaluate (see the module docstring)."""
    if value is None:
        return ""
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_writer(out: TextIO) -> Callable[[AuditEvent], None]:
    """Write the header to `out` and return a function writing one event.

    `out` should be opened with ``newline=""`` (the `csv` module writes its
    own CRLF record ends, RFC 4180).
    """
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)

    def write(event: AuditEvent) -> None:
        writer.writerow([
            event.seq, csv_cell(event.time), csv_cell(event.type), csv_cell(event.session),
            csv_cell(event.actor), csv_cell(event.subject), csv_cell(_body_json(event)),
        ])

    return write


async def stream_events(
    audit: AuditStore,
    write: Callable[[AuditEvent], None],
    filters: ExportFilters,
    *,
    page: int = EXPORT_PAGE,
) -> tuple[int, int]:
    """Pass every matching event, oldest first, to `write`; return
    (events written, the last seq the export covered).

    The export covers the log as it was when it started (up to its newest
    seq then): events appended meanwhile — the export's own record among
    them — are left for the next export, so an export of a busy log ends.
    """
    newest = await audit.events(limit=1)
    through = newest[0].seq if newest else 0
    count, after = 0, 0
    query: dict[str, Any] = {
        "since": filters.since, "until": filters.until, "actor": filters.engineer,
        "type": filters.type, "session": filters.session,
    }
    # The next page is read while this one is written: the database thread
    # and the encoder work side by side.
    pending = asyncio.ensure_future(
        audit.scan(after_seq=after, through_seq=through, limit=page, **query))
    try:
        while True:
            events = await pending
            if not events:
                return count, through
            after = events[-1].seq
            pending = asyncio.ensure_future(
                audit.scan(after_seq=after, through_seq=through, limit=page, **query))
            for event in events:
                write(event)
            count += len(events)
    finally:
        pending.cancel()
