"""A consented session through real processes, real TLS and real sockets."""

from __future__ import annotations

import secrets
from pathlib import Path

import pexpect

from tests.e2e.conftest import Deployment, matched, read_code, transcript


def approve_session(dep: Deployment, key_answer: str = "c", *console_args: str,
                    key: Path | None = None) -> tuple[pexpect.spawn, pexpect.spawn, str]:
    """Start an agent and a console, pair them, answer the consent prompt.
    `key`: alice's, registered already (in a cluster's database, say)."""
    if key is None:
        key = dep.add_engineer("alice", display="Alice Example")
    agent = dep.agent("--alias", "front desk")
    code = read_code(agent)
    console = dep.console(code, key, "alice", *console_args)
    agent.expect(r"Alice Example \(alice, engineer\)")
    agent.expect(r"Pairing:\s+([0-9A-F]{4}-[0-9A-F]{4})")
    sas = matched(agent)
    agent.expect(r"\[n/Enter\] deny")
    agent.send(key_answer)
    console.expect(f"fingerprint {sas}")  # both ends show the same pairing fingerprint
    console.expect("connected to front desk")
    console.expect(r"\$ ")  # the remote shell's prompt
    return agent, console, code


def test_marker_reaches_both_terminals_and_never_the_broker(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    marker = "CSY" + secrets.token_hex(8)
    # The shell computes part of the output, so seeing it proves execution.
    console.send(f"echo {marker}-$((6*7))\r")
    console.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")
    agent.expect("Alice Example \\(alice\\) is viewing and typing")

    console.send("\x1dq")  # Ctrl-] q: the engineer leaves
    console.expect("You left the session.")
    console.expect(pexpect.EOF)
    agent.expect("Alice Example left the session.")
    running.stop()

    for path in [*running.data_dir.rglob("*"), running.broker_stdout]:
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), f"marker leaked into {path}"
    types = running.audit_types()
    for event in ("agent_connected", "engineer_login", "join_requested", "consent_granted",
                  "session_started", "session_ended"):
        assert event in types
    assert_customer_copy_proves_the_log(running)


def assert_customer_copy_proves_the_log(running: Deployment) -> None:
    """The agent kept the broker's checkpoint of its consent, in a form
    `audit verify --witness` takes as it is."""
    kept = running.root / "agent-state" / "checkpoints.jsonl"
    assert kept.read_text().count("\n") >= 1
    result = running.cli("audit", "verify", "--witness", str(kept))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "witness checkpoint" in result.stdout


def test_customer_ends_the_session_at_once_and_gets_a_fresh_code(running: Deployment) -> None:
    agent, console, old_code = approve_session(running, "c", "--control")
    agent.send("\x1d")  # Ctrl-]
    agent.expect(r"\[e\] end the session now")
    agent.send("e")
    console.expect("The customer ended the session.")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0
    new_code = read_code(agent)  # drawn above the notice of what happened
    agent.expect("You ended the session with Alice Example.")
    assert new_code != old_code
    running.stop()
    assert "session_ended" in running.audit_types()
    listing = running.cli("audit", "list").stdout
    assert "customer_ended" in listing


def test_view_only_keystrokes_are_not_sent(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "v", "--control")
    assert "the customer granted view only" in transcript(console)
    marker = "VIEW" + secrets.token_hex(6)
    console.send(f"echo {marker}\r")
    console.expect("view only: your keystrokes are not sent")
    agent.expect("Alice Example \\(alice\\) is viewing --")
    # Nothing the engineer typed reached the shell: no echo on either side.
    assert console.before is not None and marker not in console.before
    try:
        agent.expect(marker, timeout=2)
        raise AssertionError("view-only keystrokes reached the customer's shell")
    except pexpect.TIMEOUT:
        pass


def test_wrong_code_is_burned_warned_and_redrawn(running: Deployment) -> None:
    key = running.add_engineer("alice")
    agent = running.agent()
    code = read_code(agent)
    nameplate, secret = code.split("-", 1)
    wrong = f"{nameplate}-{'000-000' if secret != '000-000' else '111-111'}"
    console = running.console(wrong, key, "alice")
    console.expect("the code did not match")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 6
    new_code = read_code(agent)
    agent.expect("wrong code")
    assert new_code.split("-")[0] != nameplate

    # The right secret no longer works either: the code was single-use.
    retry = running.console(code, key, "alice")
    retry.expect("no customer is waiting with that code")
    retry.expect(pexpect.EOF)
    running.stop()
    assert "pairing_failed" in running.audit_types()


def test_no_answer_means_deny(running: Deployment) -> None:
    key = running.add_engineer("alice")
    agent = running.agent("--consent-timeout", "2")
    code = read_code(agent)
    console = running.console(code, key, "alice", "--control")
    agent.expect(r"\[n/Enter\] deny")
    console.expect("the customer did not answer in time", timeout=20)
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 7
    agent.expect("You did not answer in time")
    running.stop()
    assert "consent_timeout" in running.audit_types()
    assert "session_started" not in running.audit_types()


def test_customer_can_refuse(running: Deployment) -> None:
    key = running.add_engineer("alice")
    agent = running.agent()
    console = running.console(read_code(agent), key, "alice")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("\r")
    console.expect("the customer declined the request")
    console.expect(pexpect.EOF)
    agent.expect("You declined")  # said once the refusal's checkpoint is kept
    running.stop()
    assert "consent_denied" in running.audit_types()
    assert_customer_copy_proves_the_log(running)


def test_unregistered_engineer_cannot_log_in(running: Deployment) -> None:
    running.add_engineer("alice")
    from tests.e2e.conftest import write_key

    stranger = write_key(running.root / "mallory_ed25519")
    agent = running.agent()
    code = read_code(agent)
    for user in ("mallory", "alice"):  # unknown name; known name with the wrong key
        console = running.console(code, stranger, user)
        console.expect("login refused")
        console.expect(pexpect.EOF)
        console.close()
        assert console.exitstatus == 4
    running.stop()
    assert running.audit_types().count("login_failed") == 2
    assert "join_requested" not in running.audit_types()


def test_window_resizes_reach_the_remote_shell(running: Deployment) -> None:
    _agent, console, _code = approve_session(running, "c", "--control")
    console.send("stty size\r")
    console.expect(r"\b24 80\b")
    console.setwinsize(40, 132)
    console.kill(28)  # SIGWINCH, as a terminal emulator sends on resize
    console.send("stty size\r")
    console.expect(r"\b40 132\b")


def test_agent_reconnects_when_the_broker_comes_back(running: Deployment) -> None:
    agent = running.agent()
    old = read_code(agent)
    running.stop_broker()
    agent.expect("Lost the support service")
    running.start_broker(port=running.port)
    new = read_code(agent, timeout=60)
    assert new != old
    key = running.add_engineer("alice")
    console = running.console(new, key, "alice")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("n")
    console.expect("declined")


def test_customer_types_in_the_shared_shell_and_the_engineer_sees_it(
    running: Deployment,
) -> None:
    agent, console, _code = approve_session(running, "v", "--control")
    agent.send("echo CUST$((3+4))\r")
    agent.expect("CUST7")
    console.expect("CUST7")
