"""Broker nodes on PostgreSQL, what the whole-cluster scenario
(test_cluster_scenario.py: three nodes behind HAProxy, a move, a node
killed, PostgreSQL stopped) does not show: a single node's /healthz, and a
node whose lease is taken sending its agents away and taking another slot,
the leader's sealed receipt reaching an agent on another node, and a node
restarted at once after kill -9.
The helpers here (a node, its /healthz, an engineer in the cluster, the
cluster's events) are the scenario's too."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from broker.audit.checkpoint_record import parse_checkpoint
from broker.certs import PkiPaths, init_dev_pki
from tests.cluster.harness import Postgres, free_port
from tests.e2e.conftest import Deployment, read_code, write_key
from tests.e2e.test_session import approve_session

WAIT = 30.0


def _node(root: Path, pki: PkiPaths, database_url: str, *extra: str) -> Deployment:
    """A broker node of the cluster, as a subprocess; the caller stops it."""
    root.mkdir(parents=True, exist_ok=True)
    dep = Deployment(root=root, pki=pki, data_dir=root / "var")
    # One audit log for all nodes, so one master key and one audit (signing)
    # key: the first node's.
    keys = ("master.key", "audit.key")
    shared = root.parent / "cluster-keys"
    if shared.exists():
        dep.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in keys:
            (dep.data_dir / name).write_bytes((shared / name).read_bytes())
            (dep.data_dir / name).chmod(0o600)
    port = free_port()
    dep.start_broker(port, "--database-url", database_url,
                     "--node-url", f"wss://127.0.0.1:{port}", *extra)
    if not shared.exists():
        shared.mkdir(mode=0o700)
        for name in keys:
            (shared / name).write_bytes((dep.data_dir / name).read_bytes())
            (shared / name).chmod(0o600)
    return dep


def healthz(dep: Deployment) -> int:
    ctx = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{dep.port}/healthz", context=ctx,
                                    timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def nodes(tmp_path: Path, database_url: str) -> Iterator[list[Deployment]]:
    """Two nodes, the first started first (slot 10, and the leader); short
    leases, so that a node killed is found lost within seconds."""
    started: list[Deployment] = []
    pki = init_dev_pki(tmp_path / "certs")
    try:
        for n in (1, 2):
            started.append(_node(tmp_path / f"node{n}", pki, database_url,
                                 "--node-lease", "3"))
        yield started
    finally:
        for dep in started:
            dep.stop()


def _engineer_on(nodes: list[Deployment], name: str, url: str) -> Path:
    """Registered once, in the cluster's database: every node lets them in."""
    key = write_key(nodes[0].root / f"{name}_ed25519")
    result = nodes[0].cli("engineer", "add", name, "--key", f"{key}.pub",
                          "--display", "Alice Example", "--database-url", url)
    assert result.returncode == 0, result.stderr
    assert "to the cluster" in result.stdout
    listed = nodes[1].cli("engineer", "list", "--json", "--database-url", url)
    assert [json.loads(line)["name"] for line in listed.stdout.splitlines()] == [name]
    for dep in nodes:  # no node's own registry.db knows them
        assert dep.cli("engineer", "list", "--json").stdout == ""
    return key


def test_a_single_node_says_200_on_healthz(running: Deployment) -> None:
    assert healthz(running) == 200


def _events(database_url: str, event_type: str | None = None) -> list[dict[str, Any]]:
    """Events of the cluster's one audit log (in PostgreSQL), oldest first."""
    async def fetch() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch(
                "SELECT type, session, body FROM events WHERE $1::text IS NULL OR type = $1 "
                "ORDER BY seq", event_type)
        finally:
            await conn.close()
        return [{"type": r["type"], "session": r["session"], "body": json.loads(r["body"])}
                for r in rows]

    return asyncio.run(fetch())


def _types(database_url: str) -> list[str]:
    return [event["type"] for event in _events(database_url)]


def test_a_node_that_loses_its_lease_sends_its_agents_away_and_they_come_back(
        tmp_path: Path, database_url: str, postgres: Postgres) -> None:
    dep = _node(tmp_path / "node", init_dev_pki(tmp_path / "certs"), database_url,
                "--node-lease", "3")
    try:
        agent = dep.agent("--alias", "front desk")
        assert read_code(agent).startswith("10")
        # Another node takes slot 10 (as if this one had been silent too long).
        name = database_url.rsplit("/", 1)[1]
        postgres.psql("UPDATE cluster_nodes SET node_id = 'usurper', "
                      "expires_at = now() + interval '1 hour' WHERE slot = 10", database=name)
        agent.expect("issues no codes and takes no joins", timeout=WAIT)
        agent.expect(r"retrying in \d+ s", timeout=WAIT)
        # The node claims the next free slot; the agent's retry gets a code of it.
        assert read_code(agent, timeout=WAIT).startswith("11")
        assert healthz(dep) == 200
    finally:
        dep.stop()


def test_an_agent_on_a_node_that_does_not_lead_gets_the_leaders_sealed_receipt(
        nodes: list[Deployment], database_url: str) -> None:
    one, two = nodes
    key = _engineer_on(nodes, "alice", database_url)
    _agent, console, _code = approve_session(two, "c", "--control", key=key)
    kept = two.root / "agent-state" / "checkpoints.jsonl"
    deadline = time.monotonic() + WAIT
    while not (kept.exists() and kept.read_text().endswith("\n")):
        assert time.monotonic() < deadline, "no consent_sealed reached the agent"
        time.sleep(0.1)
    console.send("\x1dq")
    console.expect("You left the session.")
    # The first node leads and wrote it; the agent's node writes none.
    line = kept.read_text().splitlines()[0]
    assert line in (one.data_dir / "checkpoints-postgresql.jsonl").read_text().splitlines()
    assert not (two.data_dir / "checkpoints-postgresql.jsonl").exists()
    assert parse_checkpoint(line).seq >= _types(database_url).index("consent_granted") + 1


def test_a_node_restarted_after_kill_9_is_a_new_node_and_its_old_sessions_are_closed(
        nodes: list[Deployment], database_url: str) -> None:
    one, _two = nodes
    key = _engineer_on(nodes, "alice", database_url)
    _agent, _console, _code = approve_session(one, "c", "--control", key=key)
    [started] = _events(database_url, "session_started")
    assert one.broker is not None
    one.broker.send_signal(signal.SIGKILL)
    one.broker.wait(timeout=WAIT)
    # At once, before its old lease ran out: the same data dir, a new process.
    port = one.port
    one.start_broker(port, "--database-url", database_url, "--node-url",
                     f"wss://127.0.0.1:{port}", "--node-lease", "3")
    deadline = time.monotonic() + WAIT
    while not (lost := _events(database_url, "node_lost")):
        assert time.monotonic() < deadline, one.broker_stdout.read_text()
        time.sleep(0.3)
    [event] = lost
    assert event["body"]["slot"] == 10 and event["body"]["sessions"] == [started["session"]]
    assert healthz(one) == 200  # the new process serves, in a slot of its own
