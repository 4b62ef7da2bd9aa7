"""Two real broker nodes on one PostgreSQL: the agent on node 1, the
engineer's join on node 2, which answers `moved`; the console follows it
and the session works (a marker both sides). `/healthz` over each node's
TLS port: 200 while it holds its lease, 503 once the database is gone."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pexpect
import pytest

from broker.audit.ratchet import RATCHET_NAME
from broker.certs import PkiPaths, init_dev_pki
from tests.cluster.harness import HAProxy, Postgres, free_port, start_postgres, stop_postgres
from tests.e2e.conftest import Deployment, matched, read_code, transcript, write_key

WAIT = 30.0


def _node(root: Path, pki: PkiPaths, database_url: str, *extra: str) -> Deployment:
    """A broker node of the cluster, as a subprocess; the caller stops it."""
    root.mkdir(parents=True, exist_ok=True)
    dep = Deployment(root=root, pki=pki, data_dir=root / "var")
    # One audit log for all nodes, so one master key and one wrapping key
    # (audit-ratchet.key): the first node's.
    shared = root.parent / "cluster-keys"
    if shared.exists():
        dep.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for key in shared.iterdir():
            (dep.data_dir / key.name).write_bytes(key.read_bytes())
            (dep.data_dir / key.name).chmod(0o600)
    port = free_port()
    dep.start_broker(port, "--database-url", database_url,
                     "--node-url", f"wss://127.0.0.1:{port}", *extra)
    if not shared.exists():
        shared.mkdir(mode=0o700)
        for name in ("master.key", RATCHET_NAME):
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


def wait_for_health(dep: Deployment, status: int) -> None:
    deadline = time.monotonic() + WAIT
    while (seen := healthz(dep)) != status:
        assert time.monotonic() < deadline, f"/healthz stayed {seen}, not {status}"
        time.sleep(0.2)


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


def test_a_join_on_the_wrong_node_is_moved_to_the_agents_node_and_works(
        nodes: list[Deployment], database_url: str) -> None:
    one, two = nodes
    key = _engineer_on(nodes, "alice", database_url)
    agent = one.agent("--alias", "front desk")
    code = read_code(agent)
    assert code[:2] in ("10", "11")
    # The agent's node is the slot its code begins with; join at the other.
    home, other = (one, two) if code.startswith("10") else (two, one)
    assert home is one
    console = other.console(code, key, "alice", "--control")
    agent.expect(r"Alice Example \(alice, engineer\)")
    agent.expect(r"Pairing:\s+([0-9A-F]{4}-[0-9A-F]{4})")
    sas = matched(agent)
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    console.expect(f"fingerprint {sas}")
    console.expect("connected to front desk")
    console.expect(r"\$ ")
    marker = "CSY" + secrets.token_hex(8)
    console.send(f"echo {marker}-$((6*7))\r")
    console.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")
    console.send("\x1dq")
    console.expect("You left the session.")
    # One session, in the one log every node writes; the agent never moved.
    assert _types(database_url).count("session_started") == 1
    assert "moved" not in transcript(agent)


def test_healthz_is_200_with_a_lease_and_503_once_the_database_is_gone(
        tmp_path: Path) -> None:
    pg: Postgres = start_postgres()
    dep: Deployment | None = None
    try:
        pg.psql("CREATE DATABASE healthz")
        dep = _node(tmp_path / "node", init_dev_pki(tmp_path / "certs"), pg.url("healthz"))
        assert healthz(dep) == 200
        pg.stop()
        wait_for_health(dep, 503)
        # Without the database, no code: the agent is told why (a first
        # contact that fails ends the agent; a registered one retries).
        agent = dep.agent("--alias", "front desk")
        # (Whichever the node finds first: its lease gone, or its log.)
        agent.expect("issues no codes and takes no joins|cannot record sessions right now",
                     timeout=WAIT)
        agent.expect(pexpect.EOF, timeout=WAIT)
        assert "Your support code" not in transcript(agent)
    finally:
        if dep is not None:
            dep.stop()
        stop_postgres(pg)


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


def test_a_node_killed_mid_session_is_recorded_lost_with_its_session_by_the_leader(
        nodes: list[Deployment], database_url: str) -> None:
    one, two = nodes
    key = _engineer_on(nodes, "alice", database_url)
    agent = one.agent("--alias", "front desk")
    code = read_code(agent)
    console = one.console(code, key, "alice", "--control")
    agent.expect(r"Alice Example \(alice, engineer\)")
    agent.expect(r"Pairing:\s+([0-9A-F]{4}-[0-9A-F]{4})")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    console.expect("connected to front desk")
    [started] = _events(database_url, "session_started")
    assert one.broker is not None
    one.broker.send_signal(signal.SIGKILL)
    one.broker.wait(timeout=WAIT)
    # The second node takes the leader's lock, and once the dead node's lease
    # and its grace are over, closes its session in the log.
    deadline = time.monotonic() + WAIT
    while not (lost := _events(database_url, "node_lost")):
        assert time.monotonic() < deadline, two.broker_stdout.read_text()
        time.sleep(0.3)
    [event] = lost
    assert event["body"]["slot"] == 10
    assert event["body"]["sessions"] == [started["session"]]
    # The survivor still serves: a new agent gets a code of its own slot.
    fresh = two.spawn("consentry-agent", "--broker", two.url, "--ca", str(two.pki.ca_cert),
                      "--state-dir", str(two.root / "agent2"), "--shell", "/bin/sh",
                      "--alias", "back office")
    assert read_code(fresh).startswith("11")


def test_through_haproxy_the_engineer_landing_on_the_other_node_meets_the_agent(
        tmp_path: Path, database_url: str, haproxy: Callable[..., HAProxy]) -> None:
    """The agent and the console both dial the balancer; the console's
    connection lands on the node without the agent (leastconn: the agent
    holds one), is moved to the agent's node by its URL, and the session
    runs there. HAProxy checks each node by GET /healthz over TLS, and
    connects from 127.0.0.2, the only address the nodes take a PROXY header
    from, so that the nodes' own URLs on 127.0.0.1 are dialled directly."""
    pki = init_dev_pki(tmp_path / "certs")
    nodes: list[Deployment] = []
    front = Deployment(root=tmp_path / "front", pki=pki, data_dir=tmp_path / "unused")
    try:
        for n in (1, 2):
            nodes.append(_node(tmp_path / f"node{n}", pki, database_url,
                               "--proxy-protocol-from", "127.0.0.2"))
        proxy = haproxy([("127.0.0.1", dep.port) for dep in nodes], check_ca=pki.ca_cert,
                        healthz=True, source="127.0.0.2")
        deadline = time.monotonic() + WAIT
        while not all(s["status"] == "UP" and s["check_status"] == "L7OK"
                      for s in proxy.servers().values()):
            assert time.monotonic() < deadline, proxy.servers()
            time.sleep(0.1)
        front.root.mkdir()
        front.port = proxy.port
        key = _engineer_on(nodes, "alice", database_url)
        agent = front.agent("--alias", "front desk")
        code = read_code(agent)
        console = front.console(code, key, "alice", "--control")
        agent.expect(r"Alice Example \(alice, engineer\)")
        agent.expect(r"Pairing:\s+([0-9A-F]{4}-[0-9A-F]{4})")
        agent.expect(r"\[n/Enter\] deny")
        agent.send("c")
        console.expect("connected to front desk")
        console.expect(r"\$ ")
        marker = "CSY" + secrets.token_hex(8)
        console.send(f"echo {marker}-$((6*7))\r")
        console.expect(f"{marker}-42")
        agent.expect(f"{marker}-42")
        console.send("\x1dq")
        console.expect("You left the session.")
        types = _types(database_url)
        assert types.count("session_started") == 1
        # The engineer logged in on the other node first, was moved, and
        # logged in again on the agent's.
        assert types.count("engineer_login") >= 2
    finally:
        front.stop()
        for dep in nodes:
            dep.stop()


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
