"""The bastion case of `make bench` (issue 15): OpenSSH's own sshd and ssh
beside consentry's relay, every row in one run. The measurements are in
bench/bastion.py (keystrokes, bulk through a PTY, connect to prompt),
bench/bastion_files.py (SFTP and exec) and bench/bastion_idle.py (a
waiting customer's memory); the rows here join them into one table."""

from __future__ import annotations

from bench import bastion_files, bastion_idle
from bench.bastion import (
    CONSENTRY,
    JUMP,
    PATHS,
    REVERSE,
    OpenSsh,
    Results,
    measure_connect,
    measure_keystrokes,
    measure_pty_bulk,
    rows,
    table_row,
)
from bench.bastion_files import FileResults
from bench.bastion_idle import IdleMemory
from bench.cases import Mode, Row
from bench.fixture import Deployment
from bench.paths import Agents
from bench.stats import Summary, ratios


async def bastion_vs_consentry(dep: Deployment, mode: Mode) -> list[Row]:
    ssh = await OpenSsh.start()
    agents: Agents | None = None
    res, files = Results(), FileResults()
    try:
        share = ssh.root / "shared"
        bastion_files.make_shared(share, mode)
        agents = await Agents.start(dep, 1, share=share)
        await measure_keystrokes(ssh, dep, agents, mode, res)
        await measure_pty_bulk(ssh, dep, agents, mode, res)
        await bastion_files.sftp_bulk(ssh, dep, agents, share, mode, files)
        await bastion_files.exec_bulk(ssh, dep, agents, mode, files)
        await measure_connect(ssh, dep, agents, mode, res)
        idle = await bastion_idle.idle_memory(ssh, dep, mode)
    finally:
        if agents is not None:
            await agents.stop()
        await ssh.stop()
    return rows(res, mode) + file_rows(files, mode) + [idle_row(idle)]


def _rate_cell(rates: list[float], gib: list[float]) -> str:
    cell = f"{Summary.of(rates).median:.1f} MB/s"
    return cell + (f" (relay {Summary.of(gib).median:.1f} s/GiB)" if gib else "")


def file_rows(res: FileResults, mode: Mode) -> list[Row]:
    mib = max(mode.bulk_bytes, bastion_files.MIN_SFTP_BYTES) >> 20
    rate = ratios(res.sftp_rate[CONSENTRY], res.sftp_rate[JUMP])
    out = [table_row(
        f"bulk {mib} MiB by SFTP (stock sftp, a file fetched)",
        {p: f"{Summary.of(res.sftp_rate[p]).median:.1f} MB/s" for p in PATHS},
        ">= 1x bastion -J",
        f"{rate.fmt('x')}; consentry {Summary.of(res.sftp_rate[CONSENTRY]).fmt(' MB/s', 1)}, "
        f"bastion -J {Summary.of(res.sftp_rate[JUMP]).fmt(' MB/s', 1)}",
        rate.median >= 1.0, {"ratio": rate.__dict__, "MBps": res.sftp_rate},
        note="the same `sftp -b` on every path; consentry's through `consentry-console "
             "proxy` (files right), served by the agent's SFTP server from the customer's "
             "shared folder; each run's time less that of a one-byte fetch just before it "
             "(login, and for consentry join and consent, cancel out)")]
    measured = any(x > 0 for x in res.sftp_relay_gib[JUMP])
    gib = ratios(res.sftp_relay_gib[CONSENTRY], res.sftp_relay_gib[JUMP]) if measured else None
    out.append(table_row(
        "relay CPU per GiB (SFTP)",
        {p: (f"{Summary.of(res.sftp_relay_gib[p]).median:.1f} s"
             if res.sftp_relay_gib[p] else "-") for p in PATHS},
        "<= 1x bastion -J",
        f"{gib.fmt('x') if gib else 'no ratio (under a CPU tick)'}; broker "
        f"{Summary.of(res.sftp_relay_gib[CONSENTRY]).fmt(' s/GiB')}, bastion sshd "
        f"{Summary.of(res.sftp_relay_gib[JUMP]).fmt(' s/GiB')}",
        gib.median <= 1.0 if gib else None,
        {"ratio": gib.__dict__ if gib else None, "s_per_gib": res.sftp_relay_gib}))
    cells = {p: _rate_cell(res.exec_rate[p], res.exec_relay_gib[p])
             for p in bastion_files.OPENSSH_PATHS}
    cells[CONSENTRY] = "refused (no exec)"
    out.append(table_row(
        f"bulk {mode.bulk_bytes >> 20} MiB through an exec channel (no PTY)", cells, "-",
        f"consentry refuses exec (ssh said: {res.exec_refused}); bastion -J "
        f"{Summary.of(res.exec_rate[JUMP]).fmt(' MB/s', 1)}", None,
        {"MBps": res.exec_rate, "s_per_gib": res.exec_relay_gib,
         "consentry": res.exec_refused},
        note="`ssh -T HOST 'head -c N /dev/zero'`; the agent offers a shell, files and chat "
             "only, so a command's output comes through the PTY (row above) or a file "
             "through SFTP"))
    return out


def idle_row(idle: IdleMemory) -> Row:
    tunnel = (f"{idle.bastion_rss / 2**20:.1f} MiB RSS / {idle.bastion_uss / 2**20:.1f} "
              "MiB USS")
    ours = f"{idle.broker_rss / 1024:.0f} KiB RSS / {idle.broker_uss / 1024:.0f} KiB USS"
    ratio = idle.broker_rss / idle.bastion_rss if idle.bastion_rss > 0 else None
    return table_row(
        "memory per idle waiting customer (on the relay)",
        {"direct sshd": "-", JUMP: f"as -R: {tunnel}", REVERSE: tunnel, CONSENTRY: ours},
        "<= 1x bastion -R",
        (f"{ratio:.3f}x" if ratio is not None else "no ratio") +
        f"; consentry {ours} per agent ({idle.agents} agents), the bastion's sshd "
        f"{tunnel} per tunnel ({idle.tunnels} tunnels)",
        ratio is not None and ratio <= 1.0, idle.__dict__,
        note="a waiting customer is, with OpenSSH, an `ssh -N -R` held open on the bastion "
             "(its sshd keeps a process pair per connection); with consentry an agent's "
             "control connection to the broker. Both measured on the relay, before and "
             "after, in the same run")
