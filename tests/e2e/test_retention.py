"""The broker applies retention at start-up: personal data older than 14 days
is shredded before anyone asks."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time

from broker.audit.store import AuditLog
from tests.e2e.conftest import Deployment

DEVICE_OLD = "dev-0a0a0a0a-0000-4000-8000-00000000000a"
DEVICE_NEW = "dev-0b0b0b0b-0000-4000-8000-00000000000b"


def retention_runs(deployment: Deployment) -> int:
    conn = sqlite3.connect(f"file:{deployment.data_dir / 'audit.db'}?mode=ro", uri=True)
    try:
        return int(conn.execute(
            "SELECT COUNT(*) FROM events WHERE type = 'retention_run'").fetchone()[0])
    finally:
        conn.close()


async def test_broker_purges_at_start_up(deployment: Deployment) -> None:
    now = dt.datetime.now(dt.UTC)
    audit = await AuditLog.open(deployment.data_dir)
    try:
        await audit.append("agent_connected", now=now - dt.timedelta(days=20),
                           subject=DEVICE_OLD, personal={"alias": "old", "ip": "10.99.88.77"})
        await audit.append("agent_connected", now=now - dt.timedelta(days=1),
                           subject=DEVICE_NEW, personal={"alias": "new", "ip": "10.99.88.78"})
    finally:
        await audit.close()

    deployment.start_broker()
    deadline = time.monotonic() + 20
    while retention_runs(deployment) == 0:
        assert time.monotonic() < deadline, deployment.broker_stdout.read_text()
        time.sleep(0.05)
    deployment.stop_broker()

    audit = await AuditLog.open(deployment.data_dir)
    try:
        events = await audit.events()
        assert [e.personal for e in events[:2]] == [None, {"alias": "new", "ip": "10.99.88.78"}]
        (run,) = [e for e in events if e.type == "retention_run"]
        assert run.actor == "broker"
        assert (run.body["personal_rows"], run.body["subjects_shredded"]) == (1, 1)
        assert await audit.verify_chain() is None
    finally:
        await audit.close()
    assert "retention: 1 personal record(s)" in deployment.broker_stdout.read_text()
