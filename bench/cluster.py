"""The cluster row: an engineer's join and keystrokes through HAProxy in
front of two broker nodes on PostgreSQL, against one broker on SQLite, in
the same run, with the same measuring code, as ratios.

The engines come from the system's packages and are started as the
cluster tests start them (tests/cluster/harness.py: a PostgreSQL of its
own in a temporary folder, HAProxy in TCP mode with PROXY v2 from
127.0.0.2 and GET /healthz checks). Each node's URL is a frontend of the
balancer of its own (as contrib/haproxy.cfg shows), so after a `moved`
answer the session's bytes still pass HAProxy: the row measures the
balancer's hop too, not only the database behind the nodes.

The join is timed from before login to the first byte of the prompt, login
included, on both paths: a join that lands on the node without the code is
moved and logs in again there, which is the cluster's own cost.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import measure
from bench.cases import Mode, Row
from bench.fixture import BIN, Deployment
from bench.paths import Agents, console_client, relayed
from bench.stats import Summary, percentile, ratios
from broker.wire.code import parse_code
from console.client import Progress
from tests.cluster.harness import (
    HAProxy,
    Postgres,
    free_port,
    start_haproxy,
    start_postgres,
    stop_postgres,
)

BALANCER = "127.0.0.2"  # the address HAProxy dials the nodes from, the only one they trust
NODES = 2
# Every agent of the harness connects from one address: the flood guard on
# agent registrations would otherwise pace the harness itself.
MANY_AGENTS = ("--agent-hellos-per-minute", "1000000")
KEYSTROKE_BLOCK = 50  # timed on one path before the other takes its turn
UP_TIMEOUT = 30.0


@dataclass
class Cluster:
    """Two nodes, their PostgreSQL and the balancer; `front` is what the
    agent and the console dial (the balancer's address, the nodes' CA and
    the harness's engineer key)."""

    root: Path
    front: Deployment
    nodes: list[Deployment] = field(default_factory=list)
    pg: Postgres | None = None
    proxy: HAProxy | None = None

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for node in self.nodes:
            node.stop()
        if self.pg is not None:
            stop_postgres(self.pg)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(single: Deployment) -> Cluster:
    """Nodes with `single`'s CA and engineer key, so that one client
    identity serves both paths; the caller stops the cluster."""
    root = Path(tempfile.mkdtemp(prefix="consentry-bench-cluster-"))
    front = Deployment(root=root / "front", pki=single.pki, data_dir=root / "unused",
                       key_path=single.key_path, user=single.user)
    cluster = Cluster(root=root, front=front)
    try:
        try:
            cluster.pg = pg = start_postgres(durable=True)
        except pytest.fail.Exception as exc:  # how the harness says an engine is missing
            raise RuntimeError(str(exc)) from None
        pg.psql("CREATE DATABASE bench")
        url = pg.url("bench")
        listen = [free_port() for _ in range(NODES)]
        node_ports = [free_port() for _ in range(NODES)]
        for n, (port, node_port) in enumerate(zip(listen, node_ports, strict=True), 1):
            node = Deployment(root=root / f"node{n}", pki=single.pki,
                              data_dir=root / f"node{n}" / "var", key_path=single.key_path)
            node.root.mkdir(parents=True)
            if cluster.nodes:  # one audit log, so one master key: the first node's
                node.data_dir.mkdir(mode=0o700, parents=True)
                key = node.data_dir / "master.key"
                key.write_bytes((cluster.nodes[0].data_dir / "master.key").read_bytes())
                key.chmod(0o600)
            cluster.nodes.append(node)
            node.start_broker("--database-url", url,
                              "--node-url", f"wss://127.0.0.1:{node_port}",
                              "--proxy-protocol-from", BALANCER, *MANY_AGENTS,
                              listen=f"127.0.0.1:{port}")
        _register(cluster.nodes[0], url, single)
        cluster.proxy = proxy = start_haproxy(
            root / "haproxy", [("127.0.0.1", node.port) for node in cluster.nodes],
            check_ca=single.pki.ca_cert, healthz=True, source=BALANCER, node_ports=node_ports)
        deadline = time.monotonic() + UP_TIMEOUT
        while not all(s["status"] == "UP" and s["check_status"] == "L7OK"
                      for s in proxy.servers().values()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"HAProxy never had every node UP: {proxy.servers()}")
            time.sleep(0.1)
        front.root.mkdir()
        front.port = proxy.port
        return cluster
    except BaseException:
        cluster.stop()
        raise


def _register(node: Deployment, url: str, single: Deployment) -> None:
    """The harness's engineer, in the cluster's registry (every node's)."""
    result = subprocess.run(
        [str(BIN / "consentry-broker"), "engineer", "add", single.user, "--key",
         f"{single.key_path}.pub", "--role", "admin", "--display", "Bench",
         "--database-url", url, "--data-dir", str(node.data_dir)],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"could not register the bench engineer in the cluster: "
                           f"{(result.stdout + result.stderr).strip()}")


async def _join_ms(dep: Deployment, agents: Agents, moves: list[str]) -> float:
    """One join, login included, to the first byte of the shell prompt;
    a `moved` answer on the way is added to `moves`."""
    client = console_client(dep)
    code = parse_code(await agents.code(0))

    def progress(step: Progress) -> None:
        if step.state == "moved":
            moves.append(step.text)

    start = time.perf_counter()
    joined = await client.join(code, ("view", "control"), progress)
    conn, pump = await joined.open_ssh()
    _chan, tap = await measure.open_shell(conn)
    await tap.until(lambda: tap.received > 0)
    elapsed = (time.perf_counter() - start) * 1000
    conn.close()
    await joined.leave()
    pump.cancel()
    return elapsed


async def cluster_vs_single(mode: Mode) -> list[Row]:
    """The cluster's rows: its joins and keystrokes over the single node's."""
    single = Deployment.create()
    cluster: Cluster | None = None
    single_agents: Agents | None = None
    cluster_agents: Agents | None = None
    try:
        single.start_broker(*MANY_AGENTS)
        cluster = start_cluster(single)
        single_agents = await Agents.start(single, 1)
        cluster_agents = await Agents.start(cluster.front, 1)
        paths = ((single, single_agents), (cluster.front, cluster_agents))
        # Joins alternate path by path, so a slow moment hits both alike.
        joins: tuple[list[float], list[float]] = ([], [])
        moves: tuple[list[str], list[str]] = ([], [])
        for _ in range(mode.joins):
            for (dep, agents), taken, moved in zip(paths, joins, moves, strict=True):
                taken.append(await _join_ms(dep, agents, moved))
        s50: list[float] = []
        s99: list[float] = []
        c50: list[float] = []
        c99: list[float] = []
        async with relayed(single, single_agents, 0) as s_conn, \
                relayed(cluster.front, cluster_agents, 0) as c_conn:
            echoes = [await measure.make_echo(s_conn), await measure.make_echo(c_conn)]
            block = min(mode.keystrokes, KEYSTROKE_BLOCK)
            for _ in range(mode.reps):
                samples: tuple[list[float], list[float]] = ([], [])
                for _ in range(max(1, mode.keystrokes // block)):
                    for (chan, tap), taken in zip(echoes, samples, strict=True):
                        taken += await measure.keystrokes(chan, tap, block)
                for taken, p50s, p99s in ((samples[0], s50, s99), (samples[1], c50, c99)):
                    p50s.append(percentile(taken, 50) * 1000)
                    p99s.append(percentile(taken, 99) * 1000)
    finally:
        for started in (single_agents, cluster_agents):
            if started is not None:
                await started.stop()
        if cluster is not None:
            cluster.stop()
        single.stop()
        shutil.rmtree(single.root, ignore_errors=True)
    base = "one node on SQLite, direct (same run)"
    what = f"cluster ({NODES} nodes on PostgreSQL, through HAProxy)"
    single_join, cluster_join = joins
    j50 = percentile(cluster_join, 50) / percentile(single_join, 50)
    j99 = percentile(cluster_join, 99) / percentile(single_join, 99)
    k50, k99 = ratios(c50, s50), ratios(c99, s99)
    return [
        Row(f"{what}: join to shell prompt, login included", base, "-",
            f"p50 {j50:.2f}x, p99 {j99:.2f}x; cluster p50 {percentile(cluster_join, 50):.0f} "
            f"ms, p99 {percentile(cluster_join, 99):.0f} ms; single p50 "
            f"{percentile(single_join, 50):.0f} ms, p99 {percentile(single_join, 99):.0f} ms "
            f"(n={len(cluster_join)} each)", None,
            {"p50_ratio": j50, "p99_ratio": j99, "cluster_ms": cluster_join,
             "single_ms": single_join},
            note=f"{len(moves[1])} of {len(cluster_join)} cluster joins landed on the node "
                 "without the code (leastconn: the agent holds a connection on its own), were "
                 "moved and logged in again there; PostgreSQL with fsync and synchronous "
                 "commits on, as the single node's SQLite log is durable"),
        Row(f"{what}: keystroke round trip p50", base, "-",
            f"{k50.fmt('x')}; cluster {Summary.of(c50).fmt(' ms', 3)}, single "
            f"{Summary.of(s50).fmt(' ms', 3)}", None,
            {"ratio": k50.__dict__, "cluster_ms": Summary.of(c50).__dict__,
             "single_ms": Summary.of(s50).__dict__}),
        Row(f"{what}: keystroke round trip p99", base, "-",
            f"{k99.fmt('x')}; cluster {Summary.of(c99).fmt(' ms', 3)}, single "
            f"{Summary.of(s99).fmt(' ms', 3)}", None,
            {"ratio": k99.__dict__, "cluster_ms": Summary.of(c99).__dict__,
             "single_ms": Summary.of(s99).__dict__}),
    ]
