"""A broker whose audit log is in PostgreSQL (`serve --database-url`): a real
session through real processes lands in the database, `audit verify
--database-url` passes on it and finds an edit, and the URL's password is
shown nowhere."""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pexpect
import pytest

from broker.audit.checkpoint_record import parse_checkpoint
from tests.cluster.harness import Postgres, free_port, start_postgres, stop_postgres
from tests.e2e.conftest import Deployment, read_code, transcript, write_key
from tests.e2e.test_fail_closed import REASON
from tests.e2e.test_session import approve_session


def start_node(deployment: Deployment, database_url: str, *extra: str) -> None:
    """One node of a cluster (`--database-url` needs `--node-url`)."""
    port = free_port()
    deployment.start_broker(port, "--database-url", database_url,
                            "--node-url", f"wss://127.0.0.1:{port}", *extra)


def one_session(deployment: Deployment, key: Path | None = None) -> str:
    """A session with a marker both sides see, then the engineer leaves;
    the marker (which no log may hold)."""
    agent, console, _code = approve_session(deployment, "c", "--control", key=key)
    marker = "CSY" + secrets.token_hex(8)
    console.send(f"echo {marker}-$((6*7))\r")
    console.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")
    console.send("\x1dq")
    console.expect("You left the session.")
    return marker


def cluster_engineer(deployment: Deployment, owner_url: str, name: str = "alice") -> Path:
    """An engineer added to the cluster's registry (as the README says: once,
    with the owner's URL), not to this directory's registry.db."""
    key = write_key(deployment.root / f"{name}_ed25519")
    result = deployment.cli("engineer", "add", name, "--key", f"{key}.pub",
                            "--display", "Alice Example", "--database-url", owner_url)
    assert result.returncode == 0, result.stdout + result.stderr
    return key


def _verify(deployment: Deployment, database_url: str, *extra: str,
            ) -> subprocess.CompletedProcess[str]:
    return deployment.cli("audit", "verify", "--database-url", database_url, *extra)


@pytest.fixture
def node_role(postgres: Postgres) -> Iterator[tuple[str, str]]:
    """A login role (name, password) for a broker node; granted nothing yet."""
    name, password = f"node_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        yield name, password
    finally:
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE usename = '{name}'")
        postgres.psql(f"DROP ROLE {name}")


async def test_a_session_on_a_postgresql_log_verifies_and_an_edit_is_found(
        deployment: Deployment, database_url: str, postgres: Postgres,
        node_role: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    # As the README says: the owner installs the schema, the node runs under
    # a role granted consentry_broker, its password in PGPASSWORD.
    installed = _verify(deployment, database_url)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    name, password = node_role
    postgres.psql(f"GRANT consentry_broker TO {name}")
    monkeypatch.setenv("PGPASSWORD", password)
    node_url = database_url.replace(f"postgres:{postgres.password}@", f"{name}@")
    key = cluster_engineer(deployment, database_url)
    start_node(deployment, node_url)
    marker = one_session(deployment, key)
    deployment.stop()

    out = deployment.broker_stdout.read_text(errors="replace")
    assert postgres.password not in out and password not in out
    # Sessions, and the engineer's registration, are in the database.
    local = deployment.audit_types()
    assert "session_started" not in local and "agent_connected" not in local
    conn = await asyncpg.connect(database_url)
    try:
        types = [r["type"] for r in await conn.fetch("SELECT type FROM events ORDER BY seq")]
        for event in ("engineer_added", "agent_connected", "engineer_login", "consent_granted",
                      "session_started", "session_ended", "broker_stopped"):
            assert event in types, "\n".join([*types, deployment.broker_stdout.read_text()])
        assert marker not in "".join(r["body"] for r in await conn.fetch("SELECT body FROM events"))

        result = _verify(deployment, database_url, "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        report = json.loads(result.stdout)
        assert report["ok"] and report["first_seq"] == 1 and report["events"] == len(types)
        # The node led alone, so it sealed the log (the last at its stop)...
        assert report["checkpoints"] >= 2 and report["unsealed"] == 0, report
        # ...and the agent got its consent's receipt (consent_sealed), a
        # witness `audit verify` takes as it is.
        kept = deployment.root / "agent-state" / "checkpoints.jsonl"
        consent_seq = types.index("consent_granted") + 1
        assert max(parse_checkpoint(line).seq
                   for line in kept.read_text().splitlines()) >= consent_seq
        witnessed = _verify(deployment, database_url, "--json", "--witness", str(kept))
        assert witnessed.returncode == 0, witnessed.stdout + witnessed.stderr
        # The agent's receipt, and the node's own file of what it sealed.
        assert json.loads(witnessed.stdout)["witness_checkpoints"] >= 2
        assert types[0] == "audit_verified"  # the install run
        assert postgres.password not in result.stdout + result.stderr
        # The check is itself in the log.
        assert await conn.fetchval(
            "SELECT type FROM events ORDER BY seq DESC LIMIT 1") == "audit_verified"

        # Someone with the owner's rights turns the guard off and edits a row.
        await conn.execute("ALTER TABLE events DISABLE TRIGGER USER")
        await conn.execute("UPDATE events SET actor = 'mallory' WHERE type = 'session_started'")
        await conn.execute("ALTER TABLE events ENABLE TRIGGER USER")
        edited = await conn.fetchval("SELECT seq FROM events WHERE actor = 'mallory'")
    finally:
        await conn.close()
    result = _verify(deployment, database_url)
    assert result.returncode == 9, result.stdout + result.stderr
    assert f"seq {edited}: contents changed" in result.stdout


def test_print_config_says_the_database_url_is_set_without_showing_it(
        deployment: Deployment) -> None:
    url = "postgresql://broker:pw-" + secrets.token_hex(6) + "@db.example:5432/audit"
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--database-url", url, "--print-config",
         "--data-dir", str(deployment.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert result.returncode == 0, result.stderr
    assert "database_url = (set, not shown)" in result.stdout
    assert "pw-" not in result.stdout + result.stderr


def test_a_url_that_is_not_postgresql_is_refused_before_anything_starts(
        deployment: Deployment) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--database-url",
         "mysql://root:hunter2@db/audit", "--cert", str(deployment.pki.cert),
         "--key", str(deployment.pki.key), "--data-dir", str(deployment.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert result.returncode != 0
    assert "--database-url must look like postgresql://" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_an_unreachable_database_stops_the_broker_with_one_line(
        deployment: Deployment) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--listen", "127.0.0.1:0", "--database-url",
         "postgresql://broker:hunter2@127.0.0.1:1/audit", "--node-url", "wss://127.0.0.1:9",
         "--cert", str(deployment.pki.cert),
         "--key", str(deployment.pki.key), "--data-dir", str(deployment.data_dir)],
        capture_output=True, text=True, timeout=60, cwd=deployment.root)
    assert result.returncode == 4, result.stdout + result.stderr
    assert "cannot connect to the audit database postgresql://broker:***@127.0.0.1:1/audit" \
        in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


async def test_with_postgresql_stopped_no_session_starts_and_it_resumes_when_back(
        deployment: Deployment) -> None:
    # A server of this test's own, to stop and start again.
    pg = await asyncio.to_thread(start_postgres)
    try:
        url = pg.url()
        await asyncio.to_thread(deployment.cli, "audit", "verify", "--database-url", url)
        key = await asyncio.to_thread(cluster_engineer, deployment, url)
        # A lease far longer than the outage below: the node keeps its slot,
        # so the agent's code stays valid (a lapsed lease is the cluster
        # tests' business).
        start_node(deployment, url, "--node-lease", "120")
        agent = deployment.agent("--alias", "Front Desk")
        code = await asyncio.to_thread(read_code, agent)

        await asyncio.to_thread(pg.stop)
        console = deployment.console(code, key, "alice")
        await asyncio.to_thread(console.expect, pexpect.EOF, timeout=30)
        console.close()
        assert REASON in " ".join(transcript(console).split())
        assert "wants to" not in transcript(agent)  # the customer was never asked
        assert "audit log unavailable" in deployment.broker_stdout.read_text()
        assert pg.password not in deployment.broker_stdout.read_text()

        # With the database back, the same node records again: the code
        # still works, and the customer is asked.
        await asyncio.to_thread(pg.start)
        console = deployment.console(code, key, "alice")
        await asyncio.to_thread(agent.expect, r"\[n/Enter\] deny", timeout=30)
        agent.send("n")
        await asyncio.to_thread(console.expect, pexpect.EOF, timeout=30)
        deployment.stop()
        conn = await asyncpg.connect(url)
        try:
            types = [r["type"] for r in await conn.fetch("SELECT type FROM events ORDER BY seq")]
        finally:
            await conn.close()
        assert types.count("join_requested") == 1 and "consent_denied" in types
        assert "session_started" not in types
    finally:
        deployment.stop()
        await asyncio.to_thread(stop_postgres, pg)
