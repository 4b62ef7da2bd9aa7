"""The customer's own record of every file that moved, beside their receipts.

One JSON line per transfer in `transfers.jsonl` in the agent's state
directory (0600, each line appended with one `write` on an `O_APPEND`
descriptor, so lines never interleave): when, which session, which
engineer, which way, the file's name as the engineer saw it, how many
bytes, and how it ended. Unlike the broker's audit (metadata only), this
names the files: it never leaves the customer's computer.
`consentry-agent transfers` prints it (`record_lines`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from agent.transfers.sizes import format_size
from broker.wire.text import printable

log = logging.getLogger("consentry.agent")

RECORD_FILE = "transfers.jsonl"
# A line is bounded whatever a name or reason holds (names are at most 4 KiB).
MAX_RECORD_LINE = 16 * 1024


@dataclass(frozen=True)
class Entry:
    time: str  # ISO 8601, UTC
    session: str
    engineer: str  # the engineer's display name
    login: str
    direction: str  # "upload" (engineer to this computer) or "download"
    name: str  # as the engineer saw it: /report.pdf, /shared/app.log
    bytes: int
    outcome: str  # complete, cancelled, refused, failed
    reason: str = ""
    # Where the file is on this computer (incoming files), for the customer.
    local_path: str = ""


class TransferRecord:
    """Appends entries to the customer's record; never stops a transfer."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def add(self, entry: Entry) -> None:
        line = json.dumps(asdict(entry), ensure_ascii=True, sort_keys=True) + "\n"
        data = line.encode()
        if len(data) > MAX_RECORD_LINE:
            # An absurdly long name or message: keep the entry, cut the text.
            cut = replace(entry, name=entry.name[:512], reason=entry.reason[:512], local_path="")
            data = (json.dumps(asdict(cut), sort_keys=True) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("cannot add to the transfer record %s: %s", self.path, exc)


def read_record(path: Path) -> list[dict[str, Any]]:
    """The entries kept so far (a damaged line is skipped, not fatal)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            entries.append(value)
    return entries


_WAYS = {"upload": "sent to this computer", "download": "copied from this computer"}


def record_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The record as a customer reads it, one line per file (every string
    escaped: a name may hold anything the engineer typed)."""
    lines: list[str] = []
    for entry in entries:
        when = printable(entry.get("time", "?"), 32)
        who = printable(entry.get("engineer", "?"), 40)
        way = _WAYS.get(str(entry.get("direction")), printable(entry.get("direction"), 16))
        name = printable(entry.get("name", "?"), 300)
        count = entry.get("bytes")
        size = format_size(count) if isinstance(count, int) else "?"
        outcome = printable(entry.get("outcome", "?"), 16)
        line = f"{when}  {who} {way}: {name} ({size}) - {outcome}"
        reason = entry.get("reason")
        if reason:
            line += f" ({printable(reason, 160)})"
        local = entry.get("local_path")
        if local:
            line += f" -> {printable(local, 300)}"
        session = printable(entry.get("session", "?"), 40)
        lines.append(f"{line}  [session {session}]")
    return lines
