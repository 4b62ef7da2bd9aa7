"""Stock OpenSSH through a consented session: the system's /usr/bin/ssh and
scp with `consentry-console proxy` as their ProxyCommand, the agent's host
key pinned (StrictHostKeyChecking=yes), and the rights enforced by the agent
whatever the client sends.

These tests need OpenSSH's client: `.ci/run` installs it (openssh-client)
when `ssh` is missing. Without it they fail; they do not skip."""

from __future__ import annotations

import io
import json
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pexpect

from tests.e2e.conftest import BIN, Deployment, read_code, transcript


def openssh(program: str) -> str:
    path = shutil.which(program)
    assert path, (f"OpenSSH's {program} is not installed; `.ci/run` installs it "
                  "(apt-get install openssh-client)")
    return path


def ssh_options(dep: Deployment, key: Path, *proxy_flags: str) -> list[str]:
    """The README's options: the proxy (given the host name, %n), the known
    hosts file it writes, strict checking, and only the engineer's key."""
    known = dep.root / "consentry_known_hosts"
    proxy = shlex.join([
        str(BIN / "consentry-console"), "proxy", "%n", "--broker", dep.url,
        "--ca", str(dep.pki.ca_cert), "--identity", str(key), "--user", "alice",
        "--known-hosts", str(known), *proxy_flags,
    ])
    return [
        "-F", "/dev/null",  # none of this machine's ssh_config
        "-o", f"ProxyCommand={proxy}",
        "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
        "-o", "BatchMode=yes",
    ]


def popen(dep: Deployment, *argv: str, stdin: int | None = subprocess.PIPE
          ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dep.env(), cwd=dep.root)


def finish(proc: subprocess.Popen[bytes], stdin: bytes | None = None,
           timeout: float = 60) -> tuple[bytes, str]:
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out, err.decode(errors="replace")


def session_ended(dep: Deployment) -> dict[str, object]:
    result = dep.cli("audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    ended = [event for event in events if event["type"] == "session_ended"]
    assert ended, [event["type"] for event in events]
    body = ended[0]["body"]
    assert isinstance(body, dict)
    return body


def test_a_command_sent_to_the_shell_through_ssh_shows_its_output(running: Deployment) -> None:
    ssh = openssh("ssh")
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    proc = popen(running, ssh, "-T", *ssh_options(running, key, "--control"),
                 f"consentry-{code}")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    # The agent refuses exec (`ssh host command`), so the command goes to
    # the shell on stdin, as a script would.
    out, err = finish(proc, b"echo OUT$((6*7))\nexit\n")
    assert b"OUT42" in out, (out, err)
    # stdout is ssh's: the proxy's words are on stderr only.
    assert b"consentry:" not in out
    assert "granted: view and control" in err
    assert f"pinned as consentry-{code}" in err
    known = running.root / "consentry_known_hosts"
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    assert known.read_text().startswith(f"consentry-{code} ssh-ed25519 ")
    agent.expect("OUT42")  # the customer saw it run


def test_exec_is_refused_and_said_by_ssh(running: Deployment) -> None:
    ssh = openssh("ssh")
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    proc = popen(running, ssh, *ssh_options(running, key, "--control"),
                 f"consentry-{code}", "echo EXEC$((2+2))")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    out, err = finish(proc)
    assert proc.returncode != 0
    assert b"EXEC4" not in out
    assert "exec request failed" in err


def test_view_only_keystrokes_from_ssh_do_not_reach_the_shell(running: Deployment) -> None:
    ssh = openssh("ssh")
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    child = pexpect.spawn(ssh, ["-tt", *ssh_options(running, key, "--control"),
                                f"consentry-{code}"],
                          env=running.env(), cwd=str(running.root), timeout=20,
                          encoding="utf-8", codec_errors="replace", dimensions=(24, 80))
    child.logfile_read = io.StringIO()
    running.children.append(child)  # stopped by the fixture if the test fails
    agent.expect(r"\[n/Enter\] deny")
    agent.send("v")  # the engineer asked for control; the customer says view only
    child.expect("the customer granted view only")
    agent.expect(r"Alice Example \(alice\) is viewing --")
    typed = "TYPED" + secrets.token_hex(4)
    child.send(f"echo {typed}-$((6*7))\r")
    # ssh sends the new window size after those keys, on the same channel:
    # once the shell has that size, the agent has had the keys too.
    child.setwinsize(33, 101)
    for _ in range(40):
        agent.send("stty size\r")
        if agent.expect(["33 101", pexpect.TIMEOUT], timeout=0.5) == 0:
            break
    else:
        raise AssertionError("the engineer's window size never reached the shell")
    # The customer's own keys reach the shell, and the engineer sees them.
    agent.send("echo CUSTOMER$((5*5))\r")
    child.expect("CUSTOMER25")
    agent.send("exit\r")  # the engineer cannot end the shell; the customer can
    child.expect(pexpect.EOF)
    for who in (child, agent):
        assert f"{typed}-42" not in transcript(who)
    dropped = session_ended(running)["input_dropped_bytes"]
    assert isinstance(dropped, int) and dropped >= len(f"echo {typed}-$((6*7))\r")


def files_agent(dep: Deployment) -> tuple[pexpect.spawn, str, Path, Path]:
    """An agent sharing a folder, and where what the engineer sends lands."""
    share, incoming = dep.root / "share", dep.root / "incoming"
    share.mkdir()
    agent = dep.agent("--alias", "front desk", "--share", str(share),
                      "--transfers-dir", str(incoming))
    return agent, read_code(agent), share, incoming


def test_scp_with_files_sends_a_file_byte_identical(running: Deployment) -> None:
    scp = openssh("scp")
    key = running.add_engineer("alice", display="Alice Example")
    agent, code, _, incoming = files_agent(running)
    upload = running.root / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    # scp speaks SFTP (the default since OpenSSH 9.0; -s says so to older ones).
    proc = popen(running, scp, "-s", *ssh_options(running, key, "--files"),
                 str(upload), f"consentry-{code}:arrived.bin", stdin=subprocess.DEVNULL)
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    _, err = finish(proc)
    assert proc.returncode == 0, err
    (arrived,) = incoming.glob("*/arrived.bin")
    assert arrived.read_bytes() == upload.read_bytes()


def test_scp_with_files_fetches_a_shared_file_byte_identical(running: Deployment) -> None:
    scp = openssh("scp")
    key = running.add_engineer("alice", display="Alice Example")
    agent, code, share, _ = files_agent(running)
    (share / "report.bin").write_bytes(original := os.urandom(300_000))
    fetched = running.root / "fetched.bin"
    proc = popen(running, scp, "-s", *ssh_options(running, key, "--files"),
                 f"consentry-{code}:shared/report.bin", str(fetched), stdin=subprocess.DEVNULL)
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    _, err = finish(proc)
    assert proc.returncode == 0, err
    assert fetched.read_bytes() == original


def test_a_large_file_fetched_by_scp_arrives_whole(running: Deployment) -> None:
    """More than the replay buffer holds, as fast as sftp asks: the agent's
    SFTP server outruns the acknowledgements (they take the broker's control
    path; OpenSSH's window adjustments take the fast one), and the session
    must go on rather than end as if the link had broken."""
    scp = openssh("scp")
    key = running.add_engineer("alice", display="Alice Example")
    agent, code, share, _ = files_agent(running)
    (share / "big.bin").write_bytes(original := os.urandom(48 << 20))
    fetched = running.root / "big-fetched.bin"
    proc = popen(running, scp, "-s", *ssh_options(running, key, "--files"),
                 f"consentry-{code}:shared/big.bin", str(fetched), stdin=subprocess.DEVNULL)
    agent.expect(r"\[a\] allow all of this")
    agent.send("a")
    _, err = finish(proc, timeout=120)
    assert proc.returncode == 0, err
    assert fetched.read_bytes() == original


def test_scp_without_the_files_right_copies_nothing(running: Deployment) -> None:
    scp = openssh("scp")
    key = running.add_engineer("alice", display="Alice Example")
    agent, code, _, incoming = files_agent(running)
    upload = running.root / "upload.bin"
    upload.write_bytes(b"not for you")
    proc = popen(running, scp, "-s", *ssh_options(running, key, "--files"),
                 str(upload), f"consentry-{code}:arrived.bin", stdin=subprocess.DEVNULL)
    agent.expect(r"\[a\] allow all of this")
    agent.send("v")
    _, err = finish(proc)
    assert proc.returncode != 0
    assert "the customer did not grant files" in err
    assert not list(incoming.glob("*/arrived.bin"))


def test_a_host_key_other_than_the_paired_one_is_refused(running: Deployment) -> None:
    """StrictHostKeyChecking=yes holds ssh to the key the proxy pinned: with
    another key under the name (the proxy writing elsewhere), ssh refuses."""
    ssh = openssh("ssh")
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    options = ssh_options(running, key, "--control")
    wrong = running.root / "wrong_known_hosts"
    other = (running.root / "alice_ed25519.pub").read_text().split()[:2]
    wrong.write_text(f"consentry-{code} {' '.join(other)}\n")
    options[options.index(f"UserKnownHostsFile={running.root / 'consentry_known_hosts'}")] = \
        f"UserKnownHostsFile={wrong}"
    proc = popen(running, ssh, "-T", *options, f"consentry-{code}")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    out, err = finish(proc, b"echo NO$((1+1))\nexit\n")
    assert proc.returncode != 0
    assert b"NO2" not in out
    assert "HOST IDENTIFICATION HAS CHANGED" in err or "verification failed" in err, err


def test_connection_sharing_carries_copies_without_a_new_code(running: Deployment) -> None:
    """One consent, one SSH connection: OpenSSH's ControlMaster lets scp use
    the connection of the running ssh, with no new code or question."""
    ssh, scp = openssh("ssh"), openssh("scp")
    key = running.add_engineer("alice", display="Alice Example")
    agent, code, _, incoming = files_agent(running)
    control = running.root / "ctl"
    shared = ["-o", f"ControlPath={control}"]
    master = popen(running, ssh, "-M", "-N", *shared, *ssh_options(running, key, "--files"),
                   f"consentry-{code}", stdin=subprocess.DEVNULL)
    try:
        agent.expect(r"\[a\] allow all of this")
        agent.send("a")
        for _ in range(100):  # bounded: the master's socket once it is connected
            if control.exists() or master.poll() is not None:
                break
            time.sleep(0.1)
        assert control.exists(), f"the master ssh did not connect (exit {master.poll()})"
        for name in ("one.bin", "two.bin"):
            (running.root / name).write_bytes(os.urandom(50_000))
            done = subprocess.run(
                [scp, "-s", "-o", "ControlMaster=no", *shared, "-F", "/dev/null",
                 str(running.root / name), f"consentry-{code}:{name}"],
                capture_output=True, env=running.env(), cwd=running.root, timeout=60)
            assert done.returncode == 0, done.stderr
            (arrived,) = incoming.glob(f"*/{name}")
            assert arrived.read_bytes() == (running.root / name).read_bytes()
        subprocess.run([ssh, *shared, "-F", "/dev/null", "-O", "exit", f"consentry-{code}"],
                       capture_output=True, env=running.env(), timeout=30)
    finally:
        finish(master)
    assert running.audit_types().count("consent_granted") == 1
