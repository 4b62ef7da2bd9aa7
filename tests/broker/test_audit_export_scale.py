"""`audit export` streams: a million events leave a real `consentry-broker`
process in bounded memory.

The log is built fast but valid: the store makes the schema, then one raw
sqlite3 transaction inserts a million rows chained with the store's own
`event_hash` (inserts do not meet the append-only triggers, which guard
UPDATE and DELETE). The export runs as a subprocess; its peak RSS is taken
by `PEAK_RSS_LAUNCHER` (below), not by this process's own `os.wait4`.
Building and exporting take ~40 s here.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.audit.chain import GENESIS_HASH, event_hash
from broker.audit.store import AuditLog

EVENTS = 1_000_000
# A streaming export of this log peaks near 50 MB (the interpreter and its
# imports are most of it); holding the events would take well over 1 GB.
MAX_RSS_MB = 150
TIME = "2025-03-01T12:00:00.000000Z"
TYPES = ("agent_connected", "engineer_login", "join_requested", "consent_granted",
         "session_started", "session_ended")


# Linux keeps a process's peak RSS across exec, and subprocess starts its
# child with vfork: a child of this test process inherits this process's
# peak, so once a long pytest worker passes 150 MB every export "peaks"
# above it (CI measured 153 MB for an export that peaks near 53 MB). The
# launcher is a fresh, small interpreter: it forks the export from itself,
# waits for it and prints the export's own peak as its last stderr line.
PEAK_RSS_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
sys.stderr.write(f"\\npeak_rss_kb={usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def launch_measured(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-I", "-S", "-c", PEAK_RSS_LAUNCHER, *argv],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def peak_rss_mb(stderr: bytes) -> float:
    last = stderr.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
    assert last.startswith("peak_rss_kb="), stderr.decode(errors="replace")
    return int(last.removeprefix("peak_rss_kb=")) / 1024  # kilobytes on Linux


def test_the_peak_is_the_childs_own_not_this_process() -> None:
    ballast = bytearray(MAX_RSS_MB << 20)
    for page in range(0, len(ballast), 4096):
        ballast[page] = 1  # resident, as a long test session's heap is
    proc = launch_measured([sys.executable, "-c", "pass"])
    _, errors = proc.communicate()
    del ballast
    assert proc.returncode == 0
    assert peak_rss_mb(errors) < MAX_RSS_MB / 3


def _rows(count: int) -> Iterator[tuple[object, ...]]:
    prev = GENESIS_HASH
    for seq in range(1, count + 1):
        kind = TYPES[seq % len(TYPES)]
        session = f"s{seq // len(TYPES)}"
        body = {"n": seq}
        digest = event_hash(prev, seq, TIME, kind, session, "alice", None, body)
        yield seq, TIME, kind, session, "alice", None, f'{{"n":{seq}}}', prev, digest
        prev = digest


def build_log(data_dir: Path, count: int) -> None:
    async def schema() -> None:
        await (await AuditLog.open(data_dir)).close()

    asyncio.run(schema())
    conn = sqlite3.connect(data_dir / "audit.db", isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a test fixture: durability is moot
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO events (seq, time, type, session, actor, subject, body, prev_hash, "
            "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", _rows(count))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


@pytest.mark.timeout(300)
def test_a_million_events_export_in_bounded_memory(tmp_path: Path) -> None:
    started = time.monotonic()
    build_log(tmp_path, EVENTS)
    built = time.monotonic() - started

    exporter = Path(sys.executable).parent / "consentry-broker"
    proc = launch_measured([str(exporter), "audit", "export", "--format", "jsonl",
                            "--data-dir", str(tmp_path)])
    assert proc.stdout is not None and proc.stderr is not None
    lines, first, tail = 0, b"", b""
    # Counted as it streams: the test must not hold the export either.
    while chunk := proc.stdout.read(1 << 20):
        if not first:
            first = chunk.split(b"\n", 1)[0]
        lines += chunk.count(b"\n")
        tail = (tail + chunk)[-4096:]
    errors = proc.stderr.read()
    assert proc.wait() == 0, errors.decode(errors="replace")

    assert lines == EVENTS
    assert json.loads(first)["seq"] == 1
    last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    assert last["seq"] == EVENTS and last["body"] == {"n": EVENTS}
    assert last["hash"] == event_hash(last["prev_hash"], last["seq"], last["time"],
                                      last["type"], last["session"], last["actor"],
                                      last["subject"], last["body"])
    peak_mb = peak_rss_mb(errors)
    assert peak_mb < MAX_RSS_MB, f"export peaked at {peak_mb:.0f} MB"
    print(f"built {EVENTS} events in {built:.1f} s; exported in "
          f"{time.monotonic() - started - built:.1f} s, peak RSS {peak_mb:.0f} MB")

    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        (body,) = conn.execute("SELECT body FROM events WHERE type = 'audit_exported'").fetchone()
    finally:
        conn.close()
    assert json.loads(body)["events"] == EVENTS
