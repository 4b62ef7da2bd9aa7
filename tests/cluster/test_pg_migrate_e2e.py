"""A single node's log moved to PostgreSQL, end to end with real processes:
a session on the SQLite broker, `audit migrate` (a subprocess), then a node
on the migrated log whose next session with the same device reuses that
device's migrated subject key; one chain that `audit verify --database-url`
passes, and both sessions readable with `audit show --database-url`. The
registry (engineers, device bindings) moves with the log."""

from __future__ import annotations

import json

import asyncpg

from tests.cluster.harness import Postgres
from tests.cluster.test_pg_broker import one_session, start_node
from tests.e2e.conftest import Deployment


async def test_a_migrated_log_carries_on_under_a_node(
        deployment: Deployment, database_url: str, postgres: Postgres) -> None:
    deployment.start_broker()
    one_session(deployment)
    deployment.stop()

    result = deployment.cli("audit", "migrate", "--to", database_url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert postgres.password not in result.stdout + result.stderr
    before = await _pg_events(database_url)
    assert before[-1][1] == "audit_migrated"

    # The registry came along: alice (with her key) and the device's
    # binding are the cluster's now; the device (the same agent state) comes
    # back to a node on the migrated log and is let in as the one it was.
    assert "registry: 1 engineer(s) and 1 device binding(s) copied" in result.stdout
    listed = deployment.cli("engineer", "list", "--json", "--database-url", database_url)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == ["alice"]
    start_node(deployment, database_url)
    one_session(deployment, key=deployment.root / "alice_ed25519")  # her key, as before
    deployment.stop()

    after = await _pg_events(database_url)
    assert after[:len(before)] == before  # the migrated chain, carried on
    sessions = sorted({session for _, type_, session in after
                       if type_ == "session_started" and session})
    assert len(sessions) == 2
    conn = await asyncpg.connect(database_url)
    try:
        # One subject, one key: the node opened the migrated one (the data
        # directory's key ring), rather than re-keying the device.
        assert await conn.fetchval("SELECT COUNT(*) FROM subjects") == 1
    finally:
        await conn.close()

    result = deployment.cli("audit", "verify", "--database-url", database_url, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["ok"]
    for session in sessions:
        result = deployment.cli("audit", "show", session, "--json",
                                "--database-url", database_url)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["device"]["alias"] == "front desk"
        assert report["engineer"] == "alice"


async def _pg_events(url: str) -> list[tuple[int, str, str | None]]:
    conn = await asyncpg.connect(url)
    try:
        return [(int(r[0]), str(r[1]), r[2])
                for r in await conn.fetch("SELECT seq, type, session FROM events ORDER BY seq")]
    finally:
        await conn.close()
