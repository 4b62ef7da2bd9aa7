"""Issue 14's whole cluster, once, as an operator would run it: three broker
nodes on one PostgreSQL behind HAProxy (TCP mode, TLS passed through, PROXY
v2 from 127.0.0.2, each node checked by GET /healthz over its own TLS).

One scenario, in order, sharing its set-up (three nodes and a PostgreSQL of
its own cost seconds each, and the last step stops that PostgreSQL):

1. an agent dials the balancer; an engineer whose connection lands on
   another node is moved to the agent's and the session works (a marker
   typed by the engineer is seen on both terminals);
2. agents on all three nodes (leastconn spreads them; their codes' slots
   differ), a session on each, all in one chain that `audit verify` passes;
3. kill -9 the first agent's node mid-session: HAProxy marks it DOWN, the
   orphaned agent reconnects through the balancer and shows the customer
   a new code of another node, a new session works, the leader records
   `node_lost` with the session, and verify still passes;
4. PostgreSQL stopped: every surviving node refuses new sessions with the
   audit reason and says 503 on /healthz; HAProxy has them all DOWN.

Everything started here is stopped here.
"""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pexpect

from broker.certs import init_dev_pki
from tests.cluster.harness import HAProxy, Postgres, start_haproxy, start_postgres, stop_postgres
from tests.cluster.test_nodes_e2e import WAIT, _engineer_on, _events, _node, healthz
from tests.e2e.conftest import Deployment, matched, read_code, transcript

BALANCER = "127.0.0.2"  # the only address the nodes believe a PROXY header from
LEASE = "3"  # seconds: a killed node is found lost within a few


def _until(what: str, done: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def _says(node: Deployment, status: int) -> Callable[[], bool]:
    return lambda: healthz(node) == status


def _statuses(proxy: HAProxy) -> dict[str, str]:
    return {name: row["status"] for name, row in proxy.servers().items()}


def _slots(pg: Postgres, database: str) -> dict[int, str]:
    """Which node URL holds which slot, from the cluster's node table."""
    rows = pg.psql("SELECT slot || ' ' || url FROM cluster_nodes ORDER BY slot",
                   database=database)
    return {int(slot): url for slot, url in (line.split() for line in rows.splitlines())}


def _agent(front: Deployment, name: str) -> pexpect.spawn:
    """A customer's agent dialling the balancer, with a device of its own."""
    return front.spawn("consentry-agent", "--broker", front.url, "--ca",
                       str(front.pki.ca_cert), "--state-dir", str(front.root / name),
                       "--shell", "/bin/sh", "--alias", name)


def _approved(front: Deployment, agent: pexpect.spawn, code: str, key: Path) -> pexpect.spawn:
    """The engineer joins `code` through the balancer; the customer consents."""
    console = front.console(code, key, "alice", "--control")
    agent.expect(r"Alice Example \(alice, engineer\)")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    console.expect("connected to ")
    console.expect(r"\$ ")
    return console


def _marker_both_sides(agent: pexpect.spawn, console: pexpect.spawn) -> None:
    marker = "CSY" + secrets.token_hex(8)
    console.send(f"echo {marker}-$((6*7))\r")
    console.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")


def _leave(console: pexpect.spawn) -> None:
    console.send("\x1dq")
    console.expect("You left the session.")
    console.expect(pexpect.EOF)


def _verify(node: Deployment, url: str) -> str:
    """The operator's `audit verify` on the cluster's log; exit 0 or fail."""
    result = node.cli("audit", "verify", "--database-url", url)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_three_nodes_behind_haproxy_survive_a_killed_node_and_fail_closed_without_postgres(
        tmp_path: Path) -> None:
    pg = start_postgres()
    pki = init_dev_pki(tmp_path / "certs")
    nodes: list[Deployment] = []
    proxy: HAProxy | None = None
    front = Deployment(root=tmp_path / "front", pki=pki, data_dir=tmp_path / "unused")
    try:
        pg.psql("CREATE DATABASE cluster")
        url = pg.url("cluster")
        for n in (1, 2, 3):
            nodes.append(_node(tmp_path / f"node{n}", pki, url, "--proxy-protocol-from",
                               BALANCER, "--node-lease", LEASE))
        proxy = balancer = start_haproxy(
            tmp_path / "haproxy", [("127.0.0.1", d.port) for d in nodes],
            check_ca=pki.ca_cert, healthz=True, source=BALANCER)
        _until("HAProxy has every node UP by /healthz", lambda: all(
            s["status"] == "UP" and s["check_status"] == "L7OK"
            for s in balancer.servers().values()))
        by_url = {d.url: d for d in nodes}
        node_of = {slot: by_url[node_url] for slot, node_url in _slots(pg, "cluster").items()}
        assert len(node_of) == 3
        front.root.mkdir()
        front.port = balancer.port
        key = _engineer_on(nodes, "alice", url)

        # 1. The agent's node is its code's slot; the engineer's connection
        # lands elsewhere (leastconn: the agent's holds one) and is moved.
        first = _agent(front, "front desk")
        code = read_code(first)
        home = node_of[int(code[:2])]
        console = _approved(front, first, code, key)
        assert f"The code is held by node {home.url}; connecting there" in transcript(console)
        _marker_both_sides(first, console)

        # 2. Two more agents: leastconn puts each on a node with none.
        others = [_agent(front, name) for name in ("back office", "warehouse")]
        codes = [code, *(read_code(agent) for agent in others)]
        assert sorted(int(c[:2]) for c in codes) == sorted(node_of), codes
        for agent, other_code in zip(others, codes[1:], strict=True):
            other_console = _approved(front, agent, other_code, key)
            _marker_both_sides(agent, other_console)
            _leave(other_console)
        started = _events(url, "session_started")
        assert len(started) == 3
        assert "audit log intact: " in _verify(home, url)

        # 3. kill -9 the first agent's node while its session runs.
        [mid_session] = [e for e in started if e["session"] not in
                         {e2["session"] for e2 in _events(url, "session_ended")}]
        assert home.broker is not None
        home.broker.send_signal(signal.SIGKILL)
        home.broker.wait(timeout=WAIT)
        dead = f"broker{nodes.index(home) + 1}"
        _until("HAProxy marks the killed node DOWN",
               lambda: _statuses(balancer)[dead].startswith("DOWN"))
        # The customer is told the connection was lost and shown a new code,
        # of a node still alive, in the session's banner (the code screen is
        # hidden while the dead node's session retries its link).
        first.expect("Lost the support service", timeout=WAIT)
        first.expect(r"New support code (\d+-\d{3}-\d{3})", timeout=WAIT)
        new_code = matched(first)
        assert new_code[:2] != code[:2] and node_of[int(new_code[:2])] is not home
        # The customer ends the session that cannot come back (Ctrl-] e, as
        # the retry notice says), and the code screen shows the same new code.
        first.send("\x1d")
        first.send("e")
        assert read_code(first, timeout=WAIT) == new_code
        # The engineer's console, whose node died under it, says so.
        console.expect("connection lost — reconnecting", timeout=WAIT)
        # A new session works through the balancer, with the new code.
        again = _approved(front, first, new_code, key)
        _marker_both_sides(first, again)
        _leave(again)
        _until("the leader records node_lost", lambda: bool(_events(url, "node_lost")))
        [lost] = _events(url, "node_lost")
        assert lost["body"]["slot"] == int(code[:2])
        assert lost["body"]["sessions"] == [mid_session["session"]]
        survivors = [d for d in nodes if d is not home]
        assert "audit log intact: " in _verify(survivors[0], url)

        # 4. PostgreSQL stopped: no node can record a session, so none starts
        # one; each leaves the pool by its /healthz.
        pg.stop()
        for node in survivors:
            _until(f"{node.url} says 503 on /healthz", _says(node, 503))
        _until("HAProxy has every node DOWN", lambda: all(
            status.startswith("DOWN") for status in _statuses(balancer).values()))
        refused = "issues no codes and takes no joins|cannot record sessions right now"
        for agent in (first, *others):  # registered: told why, and retrying
            agent.expect(refused, timeout=WAIT)
        for node in survivors:  # a new customer at each node is told why, given no code
            fresh = node.spawn("consentry-agent", "--broker", node.url, "--ca",
                               str(pki.ca_cert), "--state-dir", str(node.root / "late"),
                               "--shell", "/bin/sh", "--alias", "late")
            fresh.expect(refused, timeout=WAIT)
            fresh.expect(pexpect.EOF, timeout=WAIT)
            assert "Your support code" not in transcript(fresh)
    finally:
        front.stop()
        if proxy is not None:
            proxy.stop()
        for node in nodes:
            node.stop()
        stop_postgres(pg)
