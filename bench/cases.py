"""Each benchmark case: measure the product and its baseline in the same run,
repeat, and return rows for the report."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from bench import measure
from bench.auditload import append_rate, fill
from bench.fixture import Deployment
from bench.paths import Agents, Direct, console_client, relayed
from bench.procs import cpu_seconds, machine_busy_seconds, rss_bytes, tree_cpu_seconds
from bench.stats import Summary, percentile, ratios
from broker.audit.store import AuditLog
from broker.client.handshake import HandshakeRun
from broker.wire.code import parse_code
from broker.wire.machine.handshake import ConsoleSide, Handshake

GIB = 1 << 30
# Keystrokes timed on one path before the other path takes its turn.
KEYSTROKE_BLOCK = 50


@dataclass(frozen=True)
class Mode:
    smoke: bool
    reps: int
    keystrokes: int
    bulk_bytes: int
    joins: int
    idle_agents: int
    keepalive_window: float
    sessions: int
    load_seconds: float
    append_seconds: float
    verify_events: int

    @classmethod
    def full(cls) -> Mode:
        return cls(False, 5, 300, 256 << 20, 20, 10_000, 60.0, 200, 20.0, 3.0, 200_000)

    @classmethod
    def quick(cls) -> Mode:
        return cls(True, 3, 40, 4 << 20, 3, 50, 3.0, 4, 2.0, 0.5, 20_000)


@dataclass
class Row:
    what: str
    baseline: str
    target: str
    result: str
    met: bool | None  # None: measured for information, no target
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""


# -- keystrokes, bulk, broker CPU -------------------------------------------------


async def interactive_and_bulk(dep: Deployment, mode: Mode) -> list[Row]:
    """One shell per consented session (the agent allows no more), so each
    bulk repetition opens its own connection - a fresh join on the relay."""
    direct = await Direct.start(dep)
    agents = await Agents.start(dep, 1)
    assert dep.broker is not None
    try:
        d50: list[float] = []
        d99: list[float] = []
        r50: list[float] = []
        r99: list[float] = []
        # CPU each process spends per keystroke round trip, on either path:
        # where the relay's extra time goes.
        d_cpu = {"agent's SSH server": lambda: cpu_seconds(direct.proc.pid),
                 "SSH client": time.process_time}
        r_cpu = {"broker": lambda: cpu_seconds(dep.broker.pid),  # type: ignore[union-attr]
                 "agent": lambda: cpu_seconds(agents.proc.pid),
                 "console (SSH client)": time.process_time}
        d_used = dict.fromkeys(d_cpu, 0.0)
        r_used = dict.fromkeys(r_cpu, 0.0)
        d_conn = await direct.connect(dep)
        async with relayed(dep, agents, 0) as r_conn:
            echoes = [await measure.make_echo(d_conn), await measure.make_echo(r_conn)]
            # The two paths take turns in short blocks, so that a noisy
            # neighbour slowing the machine for a while slows both alike.
            block = min(mode.keystrokes, KEYSTROKE_BLOCK)
            for _ in range(mode.reps):
                samples: tuple[list[float], list[float]] = ([], [])
                for _ in range(max(1, mode.keystrokes // block)):
                    for (chan, tap), taken, cpu, used in (
                            (echoes[0], samples[0], d_cpu, d_used),
                            (echoes[1], samples[1], r_cpu, r_used)):
                        before = {k: f() for k, f in cpu.items()}
                        taken += await measure.keystrokes(chan, tap, block)
                        for k, f in cpu.items():
                            used[k] += f() - before[k]
                for taken, p50s, p99s in ((samples[0], d50, d99), (samples[1], r50, r99)):
                    p50s.append(percentile(taken, 50))
                    p99s.append(percentile(taken, 99))
        d_conn.close()
        strokes = mode.reps * max(1, mode.keystrokes // block) * block
        cpu_note = "CPU per round trip: direct - " + ", ".join(
            f"{k} {v / strokes * 1e6:.0f} us" for k, v in d_used.items()) + "; relay - " + \
            ", ".join(f"{k} {v / strokes * 1e6:.0f} us" for k, v in r_used.items())
        d_rate, r_rate, cpu_per_gib = [], [], []
        for _ in range(mode.reps):
            d_conn = await direct.connect(dep)
            d_rate.append(mode.bulk_bytes / await measure.bulk(d_conn, mode.bulk_bytes))
            d_conn.close()
            async with relayed(dep, agents, 0) as r_conn:
                broker_before = cpu_seconds(dep.broker.pid)
                seconds = await measure.bulk(r_conn, mode.bulk_bytes)
                broker_cpu = cpu_seconds(dep.broker.pid) - broker_before
            r_rate.append(mode.bulk_bytes / seconds)
            cpu_per_gib.append(broker_cpu / (mode.bulk_bytes / GIB))
    finally:
        await agents.stop()
        await direct.stop()
    p50 = ratios(r50, d50)
    p99 = ratios(r99, d99)
    bulk = ratios(r_rate, d_rate)
    socat = socat_cpu_per_gib(mode)
    cpu_ratio = ratios(cpu_per_gib, socat) if socat else None
    ms = [x * 1000 for x in r50]
    rows = [
        Row("keystroke round trip p50", "direct asyncssh over loopback TCP", "<= 1.3x",
            f"{p50.fmt('x')}; relay {Summary.of(ms).fmt(' ms', 3)}, direct "
            f"{Summary.of([x * 1000 for x in d50]).fmt(' ms', 3)}", p50.median <= 1.3,
            {"ratio": p50.__dict__, "relay_ms": Summary.of(ms).__dict__,
             "direct_ms": Summary.of([x * 1000 for x in d50]).__dict__,
             "cpu_per_round_trip_s": {"direct": d_used, "relay": r_used, "count": strokes}},
            note=cpu_note),
        Row("keystroke round trip p99", "direct asyncssh over loopback TCP", "<= 2x",
            p99.fmt("x"), p99.median <= 2.0,
            {"ratio": p99.__dict__,
             "relay_ms": Summary.of([x * 1000 for x in r99]).__dict__}),
        Row(f"bulk transfer ({mode.bulk_bytes >> 20} MiB)", "direct asyncssh over loopback TCP",
            ">= 0.6x",
            f"{bulk.fmt('x')}; relay {Summary.of([r / 1e6 for r in r_rate]).fmt(' MB/s', 0)}",
            bulk.median >= 0.6,
            {"ratio": bulk.__dict__, "relay_MBps": Summary.of([r / 1e6 for r in r_rate]).__dict__,
             "direct_MBps": Summary.of([r / 1e6 for r in d_rate]).__dict__}),
    ]
    if cpu_ratio is not None and socat:
        rows.append(Row(
            "broker CPU seconds per GiB relayed", "socat relaying the same bytes (TCP)",
            "<= 1.5x",
            f"{cpu_ratio.fmt('x')}; broker {Summary.of(cpu_per_gib).fmt(' s/GiB')}, socat "
            f"{Summary.of(socat).fmt(' s/GiB')}", cpu_ratio.median <= 1.5,
            {"ratio": cpu_ratio.__dict__, "broker": Summary.of(cpu_per_gib).__dict__,
             "socat": Summary.of(socat).__dict__}))
    else:
        rows.append(Row("broker CPU seconds per GiB relayed", "socat", "<= 1.5x",
                        f"broker {Summary.of(cpu_per_gib).fmt(' s/GiB')}; socat not installed",
                        None))
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def socat_cpu_per_gib(mode: Mode) -> list[float] | None:
    """socat splicing the bulk size between two loopback TCP sockets."""
    import shutil

    if shutil.which("socat") is None:
        return None
    results = []
    for _ in range(mode.reps):
        sink = socket.socket()
        sink.bind(("127.0.0.1", 0))
        sink.listen(1)
        port = _free_port()
        proc = subprocess.Popen(["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                                 f"TCP:127.0.0.1:{sink.getsockname()[1]}"])
        try:
            for _ in range(100):
                try:
                    src = socket.create_connection(("127.0.0.1", port))
                    break
                except OSError:
                    time.sleep(0.02)
            conn, _ = sink.accept()
            chunk = b"\0" * (1 << 20)
            import threading

            def drain(conn: socket.socket = conn) -> None:
                while conn.recv(1 << 20):
                    pass

            reader = threading.Thread(target=drain)
            reader.start()
            before = cpu_seconds(proc.pid)
            for _ in range(mode.bulk_bytes // len(chunk)):
                src.sendall(chunk)
            src.shutdown(socket.SHUT_WR)
            reader.join()
            results.append((cpu_seconds(proc.pid) - before) / (mode.bulk_bytes / GIB))
            src.close()
            conn.close()
        finally:
            proc.terminate()
            proc.wait()
            sink.close()
    return [max(r, 1e-3) for r in results]  # socat can round to 0 ticks on small runs


# -- join to prompt ---------------------------------------------------------------


async def join_to_prompt(dep: Deployment, mode: Mode) -> list[Row]:
    agents = await Agents.start(dep, 1)
    client = console_client(dep)
    times = []
    try:
        for _ in range(mode.joins):
            code = parse_code(await agents.code(0))
            link = await client.connect()  # logging in is not part of the target
            start = time.perf_counter()
            # `_join` is the part after login: join, PAKE, keys, consent.
            run = HandshakeRun(link, Handshake(
                ConsoleSide(("view", "control"), client.identity.public_line), code))
            joined = await client._join(run, lambda _p: None)
            conn, pump = await joined.open_ssh()
            _chan, tap = await measure.open_shell(conn)
            await tap.until(lambda tap=tap: tap.received > 0)
            times.append((time.perf_counter() - start) * 1000)
            conn.close()
            await joined.leave()
            pump.cancel()
    finally:
        await agents.stop()
    summary = Summary.of(times)
    p50 = percentile(times, 50)
    return [Row("join to shell prompt (consent answered by the harness at once)", "-",
                "p50 <= 400 ms", f"p50 {p50:.0f} ms, p99 {percentile(times, 99):.0f} ms "
                f"(min {summary.low:.0f}, max {summary.high:.0f}, n={len(times)})",
                p50 <= 400, {"ms": times})]


# -- idle agents --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def idle_agents_held(dep: Deployment, count: int) -> AsyncIterator[float]:
    """`count` idle agent connections (TLS, hello, keepalive), from two
    `bench.agents --idle` processes, held while the body runs; yields how
    many seconds they took to connect."""
    procs = []
    per_proc = max(1, count // 2)
    counts = [per_proc, count - per_proc]
    started = time.monotonic()
    try:
        for share in counts:
            if share:
                procs.append(await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.agents", "--broker", dep.url, "--ca",
                    str(dep.pki.ca_cert), "--idle", str(share), stdout=asyncio.subprocess.PIPE))
        for proc, share in zip(procs, counts, strict=False):
            assert proc.stdout is not None
            while True:
                line = await asyncio.wait_for(proc.stdout.readline(), 600)
                if not line:
                    raise RuntimeError("an idle-agent process died")
                if b'"connected": %d}' % share in line:
                    break
        yield time.monotonic() - started
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()


async def idle_agents(dep: Deployment, mode: Mode) -> list[Row]:
    assert dep.broker is not None
    pid = dep.broker.pid
    before = rss_bytes(pid)
    async with idle_agents_held(dep, mode.idle_agents) as connect_s:
        await asyncio.sleep(2)
        after = rss_bytes(pid)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(mode.keepalive_window)
        cpu_share = (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
    per_agent = (after - before) / mode.idle_agents / 1024
    return [Row(f"idle agents held ({mode.idle_agents}, TLS, keepalive on)",
                "broker RSS before agents connect",
                "10,000 agents, <= 40 KiB each, keepalive CPU <= 10% of a core",
                f"{per_agent:.1f} KiB per agent, keepalive CPU {cpu_share * 100:.1f}% "
                f"(connected in {connect_s:.0f} s)",
                per_agent <= 40 and cpu_share <= 0.10 and mode.idle_agents >= 10_000,
                {"kib_per_agent": per_agent, "cpu_share": cpu_share,
                 "rss_before": before, "rss_after": after})]


# -- concurrent sessions ------------------------------------------------------------


async def concurrent_sessions(dep: Deployment, mode: Mode, single_p99_ms: float,
                              count: int | None = None) -> list[Row]:
    """`count` sessions (the target's 200 by default) echoing 64 KiB/s each.
    Besides the processes' CPU, the row shows the whole machine's: PTYs and
    loopback TCP cost kernel time that no process's own figure includes."""
    target = count is None
    count = mode.sessions if count is None else count
    agents = await Agents.start(dep, count)
    start = asyncio.Event()
    try:
        contexts = [relayed(dep, agents, i) for i in range(count)]
        conns = []
        # Join in waves: each join is a console's connection and an agent's
        # session link, pending together, all from 127.0.0.1, and one source
        # may hold `MAX_PENDING_PER_SOURCE` (32) pending connections.
        wave = 12
        for i in range(0, count, wave):
            conns += await asyncio.gather(*(c.__aenter__() for c in contexts[i:i + wave]))
        tasks = [asyncio.create_task(measure.steady_echo(
            conn, rate=64 * 1024, chunk=4096, seconds=mode.load_seconds, start=start,
            phase=i / len(conns)))
            for i, conn in enumerate(conns)]
        await asyncio.sleep(1)
        assert dep.broker is not None
        broker_pid = dep.broker.pid
        # Where the machine's CPU goes under load: broker, the agents' process
        # with their shells, this harness (the SSH clients), and in all.
        used = {"broker": lambda: cpu_seconds(broker_pid),
                "agents": lambda: tree_cpu_seconds(agents.proc.pid),
                "harness": lambda: cpu_seconds(os.getpid()),
                "machine": machine_busy_seconds}
        cpu0, wall0 = {k: f() for k, f in used.items()}, time.monotonic()
        start.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        wall = time.monotonic() - wall0
        shares = {k: (f() - cpu0[k]) / wall for k, f in used.items()}
        failures = [r for r in results if isinstance(r, BaseException)]
        # Dropped: the session closed. Otherwise the echo fell behind.
        dropped = sum(1 for f in failures if "dropped" in str(f))
        reasons: dict[str, int] = {}
        for failure in failures:
            key = f"{type(failure).__name__}: {failure}"[:120]
            reasons[key] = reasons.get(key, 0) + 1
        samples = [s for r in results if isinstance(r, list) for s in r]
        for context in contexts:
            await context.__aexit__(None, None, None)
    finally:
        await agents.stop()
    p99 = percentile(samples, 99) * 1000 if samples else float("inf")
    p50 = percentile(samples, 50) * 1000 if samples else float("inf")
    ratio = p99 / single_p99_ms if single_p99_ms else float("inf")
    cores = os.cpu_count() or 1
    cpu = ", ".join(f"{k} {shares[k] * 100:.0f}" for k in ("broker", "agents", "harness"))
    return [Row(f"{count} concurrent sessions echoing 64 KiB/s",
                "single-session keystroke p99 (first row)",
                "p99 <= 3x, no session dropped" if target else "- (for comparison)",
                f"p99 {p99:.2f} ms = {ratio:.2f}x (p50 {p50:.2f} ms); dropped {dropped}, "
                f"fell behind {len(failures) - dropped}; CPU % of a core: {cpu} (agents with their "
                f"shells, harness = SSH clients); machine {shares['machine'] * 100:.0f} "
                f"of {cores * 100}",
                (ratio <= 3 and dropped == 0 and count >= 200) if target else None,
                {"p99_ms": p99, "p50_ms": p50, "ratio": ratio, "dropped": dropped,
                 "cpu_shares": shares,
                 "samples": len(samples), "failures": reasons},
                note=("; ".join(f"{n} x {why}" for why, n in reasons.items()) if reasons
                      else ""))]


# -- audit ----------------------------------------------------------------------------


async def audit_appends(mode: Mode) -> list[Row]:
    rates = [await append_rate(Path(tempfile.mkdtemp(prefix="bench-audit-")),
                               mode.append_seconds) for _ in range(mode.reps)]
    summary = Summary.of(rates)
    return [Row("audit appends, durable (16 concurrent writers)", "-", ">= 2,000 events/s",
                summary.fmt(" events/s", 0), summary.median >= 2000, summary.__dict__)]


async def audit_verify(mode: Mode) -> list[Row]:
    data = Path(tempfile.mkdtemp(prefix="bench-verify-"))
    await fill(data, mode.verify_events)
    rates = []
    for _ in range(mode.reps):
        begun = time.perf_counter()
        await _verify(data)
        rates.append(mode.verify_events / (time.perf_counter() - begun))
    summary = Summary.of(rates)
    return [Row(f"audit verify ({mode.verify_events:,} events)", "-", ">= 100,000 events/s",
                summary.fmt(" events/s", 0), summary.median >= 100_000, summary.__dict__)]


async def _verify(data: Path) -> None:
    """The full verifier when it is there (chain, seq continuity, checkpoints);
    the store's own chain check otherwise."""
    try:
        from broker.audit.verify import verify_log
    except ImportError:
        log = await AuditLog.open(data)
        try:
            bad = await log.verify_chain()
        finally:
            await log.close()
        if bad is not None:
            raise RuntimeError(f"verify found a bad seq {bad}") from None
        return
    report = await asyncio.to_thread(verify_log, data / "audit.db", public_key=None,
                                     checkpoint_file=None)
    if not getattr(report, "ok", True):
        raise RuntimeError(f"verify found a problem: {report}")


# -- connection flood ---------------------------------------------------------------

# After a flood, RSS should come back to within this of where it started.
FLOOD_RSS_MARGIN = 32 << 20
# Sockets per flood source (each binds its own 127.x address): below the
# broker's per-source cap, so the flood measures memory, not refusals.
FLOOD_PER_SOURCE = 16


async def idle_sockets(dep: Deployment, count: int, net: str) -> list[socket.socket]:
    """`count` TCP connections to the broker that never say anything, from
    FLOOD_PER_SOURCE-sized groups of addresses in `net`.0.0/16."""
    loop = asyncio.get_running_loop()
    held = []
    for i in range(count):
        sock = socket.socket()
        sock.setblocking(False)
        n = i // FLOOD_PER_SOURCE
        sock.bind((f"{net}.{n // 250}.{n % 250 + 1}", 0))
        try:
            await loop.sock_connect(sock, ("127.0.0.1", dep.port))
        except OSError:  # refused by the broker: that is its business
            sock.close()
            continue
        held.append(sock)
    return held


async def connection_flood(dep: Deployment, mode: Mode) -> list[Row]:
    """Rounds of idle TCP sockets that never start TLS, held and closed;
    the broker's RSS before, at its peak and after the last round."""
    assert dep.broker is not None
    pid = dep.broker.pid
    rounds, count = (2, 200) if mode.smoke else (10, 1000)
    before = peak = rss_bytes(pid)
    for _ in range(rounds):
        held = await idle_sockets(dep, count, "127.2")
        await asyncio.sleep(1.0)
        peak = max(peak, rss_bytes(pid))
        for sock in held:
            sock.close()
        await asyncio.sleep(0.5)
        peak = max(peak, rss_bytes(pid))
    after = await _settled_rss(pid, before)
    mib = 1 << 20
    return [Row(f"connection flood ({rounds} rounds of {count} idle sockets)",
                "broker RSS before the flood", f"after <= before + {FLOOD_RSS_MARGIN // mib} MiB",
                f"RSS before {before / mib:.0f} MiB, peak {peak / mib:.0f} MiB, "
                f"after {after / mib:.0f} MiB", after <= before + FLOOD_RSS_MARGIN,
                {"rss_before": before, "rss_peak": peak, "rss_after": after,
                 "rounds": rounds, "sockets": count})]


# -- soak -----------------------------------------------------------------------------


async def _login_flood(dep: Deployment, stop: asyncio.Event) -> int:
    """Logins with random names and random proofs, one after another."""
    from broker.client.link import LinkError, open_link
    from broker.wire.errors import ProtocolError
    from broker.wire.messages import b64encode

    sent = 0
    while not stop.is_set():
        try:
            link = await open_link(dep.url, "/v1/console", dep.pki.ca_cert)
            await link.send("login", user=os.urandom(6).hex())
            await link.expect("challenge", timeout=10)
            await link.send("login_proof", signature=b64encode(os.urandom(64)))
            await link.recv(10)
        except (LinkError, ProtocolError):
            pass
        else:
            await link.close()
        sent += 1
    return sent


async def _settled_rss(pid: int, before: int) -> int:
    """The broker's RSS once the heap trim after the last closes has had its
    chance (it waits for the closes to settle, and trims at most so often)."""
    from broker.eventloop import TRIM_MIN_INTERVAL_SECONDS, TRIM_SETTLE_SECONDS

    deadline = time.monotonic() + TRIM_SETTLE_SECONDS + TRIM_MIN_INTERVAL_SECONDS + 2
    after = rss_bytes(pid)
    while after > before + FLOOD_RSS_MARGIN and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        after = rss_bytes(pid)
    return after


async def _join_sweep(dep: Deployment, stop: asyncio.Event) -> int:
    """Joins on random nameplates from an account of its own (the join
    limits stop that account, never the one the real sessions use)."""
    import datetime as dt

    from broker.client.link import LinkError
    from broker.errors import RegistryError
    from broker.registry import Registry
    from broker.wire.errors import ProtocolError
    from console.client import ConsoleClient
    from console.identity import load_file_identity

    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = dep.root / "sweeper_ed25519"
    key.write_private_key(str(key_path))
    os.chmod(key_path, 0o600)
    with contextlib.suppress(RegistryError):  # a second soak here: registered already
        Registry(dep.data_dir / "registry.db").add(
            "sweeper", key.export_public_key().decode(), now=dt.datetime.now(dt.UTC))
    client = ConsoleClient(dep.url, dep.pki.ca_cert,
                           load_file_identity("sweeper", key_path, None))
    sent = 0
    while not stop.is_set():
        try:
            link = await client.connect()
            await link.send("join", nameplate=str(int.from_bytes(os.urandom(3)) % 1000),
                            wants=["view"])
            await link.recv(10)
        except (LinkError, ProtocolError):
            pass
        sent += 1
    return sent


async def _idle_flood(dep: Deployment, stop: asyncio.Event, count: int) -> int:
    rounds = 0
    while not stop.is_set():
        held = await idle_sockets(dep, count, "127.3")
        await asyncio.sleep(1.0)
        for sock in held:
            sock.close()
        rounds += 1
    return rounds


async def soak(dep: Deployment, mode: Mode) -> list[Row]:
    """Floods (logins, join sweeps, idle sockets) and real sessions side by
    side for a bounded time; then the audit log is verified."""
    assert dep.broker is not None
    pid = dep.broker.pid
    seconds, idle = (4.0, 100) if mode.smoke else (60.0, 1000)
    db = dep.data_dir / "audit.db"
    before, size0 = rss_bytes(pid), db.stat().st_size
    stop = asyncio.Event()
    floods = [asyncio.create_task(_login_flood(dep, stop)) for _ in range(2)]
    floods.append(asyncio.create_task(_join_sweep(dep, stop)))
    floods.append(asyncio.create_task(_idle_flood(dep, stop, idle)))
    agents = await Agents.start(dep, 1)
    done = failed = 0
    reasons: dict[str, int] = {}
    peak = before
    began = time.monotonic()
    try:
        while time.monotonic() - began < seconds:
            try:
                async with relayed(dep, agents, 0) as conn:
                    chan, tap = await measure.make_echo(conn)
                    await measure.keystrokes(chan, tap, 3)
                done += 1
            except Exception as exc:  # a failed legitimate session is the finding
                failed += 1
                why = f"{type(exc).__name__}: {exc}"[:120]
                reasons[why] = reasons.get(why, 0) + 1
            peak = max(peak, rss_bytes(pid))
    finally:
        stop.set()
        counts = await asyncio.gather(*floods, return_exceptions=True)
        await agents.stop()
    minutes = (time.monotonic() - began) / 60
    growth = (db.stat().st_size - size0) / (1 << 20) / minutes
    after = await _settled_rss(pid, before)
    # The operator's own command, with the broker's key from its data dir.
    check = await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).parent / "consentry-broker"), "audit",
                         "verify", "--data-dir", str(dep.data_dir)],
        capture_output=True, text=True, timeout=120)
    verified = check.returncode == 0
    problem = "; ".join(f"{n} x {why}" for why, n in reasons.items())
    if not verified:
        problem += " verify: " + (check.stdout + check.stderr).strip()[-300:]
    mib = 1 << 20
    return [Row(f"soak ({seconds:.0f} s: login floods, join sweeps, idle floods, real sessions)",
                "-", "no failed session, audit verify passes",
                f"sessions {done} completed, {failed} failed; audit log +{growth:.2f} MiB/min; "
                f"RSS before {before / mib:.0f}, peak {peak / mib:.0f}, after {after / mib:.0f} "
                f"MiB; verify {'passes' if verified else 'FAILS'}",
                failed == 0 and verified and done > 0,
                {"completed": done, "failed": failed, "audit_mib_per_min": growth,
                 "rss_before": before, "rss_peak": peak, "rss_after": after,
                 "verified": verified, "flood_counts": [str(c) for c in counts]},
                note=problem)]
