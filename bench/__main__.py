"""`python -m bench [--smoke] [--only CASE ...]`: run the harness, write
bench/results/latest.md + .json (smoke.md + .json for --smoke)."""

from __future__ import annotations

import argparse
import time
import traceback
from pathlib import Path

from bench import bastion_case, cases, cluster, report, startup
from bench.fixture import Deployment
from bench.procs import raise_fd_limit
from broker import eventloop

CASES = ("interactive", "join", "startup", "bastion", "sessions", "idle", "flood", "soak", "audit",
         "cluster")


async def run(mode: cases.Mode, only: set[str]) -> list[cases.Row]:
    rows: list[cases.Row] = []
    single_p99 = 0.0

    async def case(name: str, coro_factory) -> None:  # type: ignore[no-untyped-def]
        if only and name not in only:
            return
        print(f"bench: {name} ...", flush=True)
        began = time.monotonic()
        try:
            rows.extend(await coro_factory())
        except Exception as exc:  # a failed case is reported, the rest still run
            traceback.print_exc()
            rows.append(cases.Row(name, "-", "-", f"failed: {exc}", False))
        print(f"bench: {name} done in {time.monotonic() - began:.0f} s", flush=True)

    # Every agent here connects from 127.0.0.1: the per-address limit on agent
    # registrations (a flood guard) would otherwise pace the harness itself.
    many_agents = ("--agent-hellos-per-minute", "1000000")
    dep = Deployment.create()
    dep.start_broker(*many_agents)
    try:
        await case("interactive", lambda: cases.interactive_and_bulk(dep, mode))
        for row in rows:
            if row.what == "keystroke round trip p99":
                single_p99 = row.detail["relay_ms"]["median"]
        await case("join", lambda: cases.join_to_prompt(dep, mode))
        await case("startup", lambda: startup.console_startup(dep, mode))
        # OpenSSH's own sshd and ssh beside the same relay (bench/bastion.py).
        await case("bastion", lambda: bastion_case.bastion_vs_consentry(dep, mode))
        await case("sessions", lambda: cases.concurrent_sessions(dep, mode, single_p99))
        # The same at a quarter of the load: shows whether the relay or the
        # machine gives out first.
        await case("sessions", lambda: cases.concurrent_sessions(
            dep, mode, single_p99, count=max(1, mode.sessions // 4)))
    finally:
        dep.stop()
    # A fresh broker, so earlier sessions do not count in its memory.
    idle = Deployment.create()
    idle.start_broker(*many_agents)
    try:
        await case("idle", lambda: cases.idle_agents(idle, mode))
    finally:
        idle.stop()
    # Another fresh broker: its RSS before, at the peak and after a flood.
    flood = Deployment.create()
    flood.start_broker(*many_agents)
    try:
        await case("flood", lambda: cases.connection_flood(flood, mode))
        await case("soak", lambda: cases.soak(flood, mode))
    finally:
        flood.stop()
    await case("audit", lambda: _audit(mode))
    # Its own single node and cluster, side by side (bench/cluster.py).
    await case("cluster", lambda: cluster.cluster_vs_single(mode))
    return rows


async def _audit(mode: cases.Mode) -> list[cases.Row]:
    return [*await cases.audit_appends(mode), *await cases.audit_verify(mode)]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--smoke", action="store_true", help="a fast pass (< 60 s) to keep it working")
    p.add_argument("--only", action="append", choices=CASES, default=[])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = p.parse_args()
    raise_fd_limit()
    mode = cases.Mode.quick() if args.smoke else cases.Mode.full()
    began = time.monotonic()
    rows = eventloop.run(run(mode, set(args.only)))
    md, js = report.write(rows, mode, args.out, time.monotonic() - began)
    print(md.read_text())
    print(f"bench: wrote {md} and {js}")


if __name__ == "__main__":
    main()
