"""Broker nodes on PostgreSQL, what the whole-cluster scenario
(test_cluster_scenario.py: three nodes behind HAProxy, a move, a node
killed, PostgreSQL stopped) does not show: a single node's /healthz, and a
node whose lease is taken sending its agents away and taking another slot.
The helpers here (a node, its /healthz, an engineer in the cluster, the
cluster's events) are the scenario's too."""

from __future__ import annotations

import asyncio
import json
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import asyncpg

from broker.certs import PkiPaths, init_dev_pki
from tests.cluster.harness import Postgres, free_port
from tests.e2e.conftest import Deployment, read_code, write_key

WAIT = 30.0


def _node(root: Path, pki: PkiPaths, database_url: str, *extra: str) -> Deployment:
    """A broker node of the cluster, as a subprocess; the caller stops it."""
    root.mkdir(parents=True, exist_ok=True)
    dep = Deployment(root=root, pki=pki, data_dir=root / "var")
    # One audit log for all nodes, so one master key: the first node's.
    shared = root.parent / "cluster-master.key"
    if shared.exists():
        dep.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (dep.data_dir / "master.key").write_bytes(shared.read_bytes())
        (dep.data_dir / "master.key").chmod(0o600)
    port = free_port()
    dep.start_broker(port, "--database-url", database_url,
                     "--node-url", f"wss://127.0.0.1:{port}", *extra)
    if not shared.exists():
        shared.write_bytes((dep.data_dir / "master.key").read_bytes())
        shared.chmod(0o600)
    return dep


def healthz(dep: Deployment) -> int:
    ctx = ssl.create_default_context(cafile=str(dep.pki.ca_cert))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{dep.port}/healthz", context=ctx,
                                    timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


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
