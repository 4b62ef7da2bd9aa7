"""Building big, valid audit logs fast, for the verify and export benchmarks,
and the durable-append load (with the broker's checkpointer running)."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from pathlib import Path

from broker.audit.chain import GENESIS_HASH, canonical_json, event_hash, format_time
from broker.audit.checkpoints import Checkpointer
from broker.audit.store import AuditLog


async def fill(data_dir: Path, count: int) -> None:
    """Append `count` chained events in one transaction (schema made by AuditLog)."""
    await _create(data_dir)
    await asyncio.to_thread(_insert, data_dir, count)


def _insert(data_dir: Path, count: int) -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    db = sqlite3.connect(data_dir / "audit.db")
    try:
        row = db.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        seq, prev = row if row else (0, GENESIS_HASH)
        rows = []
        for i in range(count):
            seq += 1
            time = format_time(start + dt.timedelta(seconds=i))
            body = {"reason": "customer_ended", "bytes_to_agent": i, "duration_s": 1.5}
            digest = event_hash(prev, seq, time, "session_ended", f"s{i}", "alice", None, body)
            rows.append((seq, time, "session_ended", f"s{i}", "alice", None,
                         canonical_json(body).decode(), prev, digest))
            prev = digest
        db.executemany("INSERT INTO events (seq, time, type, session, actor, subject, body, "
                       "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.commit()
    finally:
        db.close()


async def _create(data_dir: Path) -> None:
    log = await AuditLog.open(data_dir)
    await log.close()


async def append_rate(data_dir: Path, seconds: float, writers: int = 16) -> float:
    """Events/s that `writers` concurrent appenders make durable for `seconds`,
    with a `Checkpointer` scheduled as the broker runs it (every 100 events,
    and within `MAX_UNSEALED_SECONDS` of an unsealed one): its cost counts."""
    log = await AuditLog.open(data_dir)
    checkpointer = Checkpointer(log, data_dir)
    await checkpointer.start()
    count = 0
    deadline = time.monotonic() + seconds

    async def writer() -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await log.append("session_ended", now=dt.datetime.now(dt.UTC), session="s",
                             actor="alice", body={"reason": "customer_ended"})
            count += 1

    try:
        begun = time.monotonic()
        await asyncio.gather(*(writer() for _ in range(writers)))
        return count / (time.monotonic() - begun)
    finally:
        await checkpointer.stop()
        await log.close()
