"""Two engineers in one session through the real programs: the agent under a
PTY, two `consentry-console join` processes, a real broker. The customer
invites a second engineer with Ctrl-] i, approves them view only, grants
them control when they ask and takes it back from them alone, removes
them while the first goes on, and ends the session for everyone."""

from __future__ import annotations

import base64
import json
import re
import secrets

import pexpect

from tests.e2e.conftest import Deployment, matched, transcript

INVITE_RE = re.compile(r"Your support code:\s+(?:\x1b\[\d+m)?(\d+-\d{3}-\d{3})")


def two_engineers(running: Deployment) -> tuple[pexpect.spawn, pexpect.spawn, pexpect.spawn]:
    """Alice joins with control; the customer invites; Bob joins view only."""
    alice_key = running.add_engineer("alice", display="Alice Example")
    bob_key = running.add_engineer("bob", display="Bob Second")
    agent = running.agent("--alias", "front desk")
    agent.expect(INVITE_RE)
    first_code = matched(agent)

    # Engineer A, with control.
    alice = running.console(first_code, alice_key, "alice", "--control")
    agent.expect(r"A support engineer asks to connect")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("c")
    alice.expect("connected to front desk")
    alice.expect(r"\$ ")
    agent.expect(r"Alice Example \(alice\) is viewing and typing")

    # The customer makes a code for one more engineer.
    agent.send("\x1d")
    agent.expect(r"\[i\] invite")
    agent.send("i")
    agent.expect("a code for one more engineer")
    agent.expect(INVITE_RE)
    invite = matched(agent)
    assert invite != first_code
    agent.expect("works once, for one more")

    # Engineer B joins the running session, view only.
    bob = running.console(invite, bob_key, "bob")
    agent.expect("join the session already running")
    agent.expect("with Alice Example")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("v")
    bob.expect("connected to front desk")
    # Joining a running shell, Bob is shown its screen as it stands: once
    # that paint arrives, Bob's seat is attached and sees what comes next.
    bob.expect(r"\x1b\[2J")
    agent.expect(r"\[1\] Alice Example can type; \[2\] Bob Second is watching")
    return agent, alice, bob


def test_customer_invites_a_second_engineer_to_the_same_shell(running: Deployment) -> None:
    agent, alice, bob = two_engineers(running)

    # A's keystrokes reach the one shell: seen by the customer and both engineers.
    marker = "SEAT" + secrets.token_hex(6)
    alice.send(f"echo {marker}-$((6*7))\r")
    alice.expect(f"{marker}-42")
    bob.expect(f"{marker}-42")
    agent.expect(f"{marker}-42")

    # B's are dropped.
    dropped = "DROP" + secrets.token_hex(6)
    bob.send(f"echo {dropped}-$((2+3))\r")
    bob.expect("view only: your keystrokes are not sent")
    alice.send("echo AFTER$((1+1))\r")
    alice.expect("AFTER2")
    agent.expect("AFTER2")
    for child in (agent, alice, bob):
        assert f"{dropped}-5" not in transcript(child)

    # B asks for control and gets it, for B alone; the customer then takes
    # it back from B (by number) while A keeps typing.
    bob.send("\x1dc")
    bob.expect("asking the customer for control")
    agent.expect("now asks for control")
    agent.expect(r"\[c\] allow control")
    agent.send("c")
    bob.expect("you can type now")
    agent.expect(r"\[2\] Bob Second can type")
    bob.send("echo BOB$((5+5))\r")
    alice.expect("BOB10")
    agent.send("\x1d")
    agent.expect(r"\[v\] take control")
    agent.send("v")
    agent.expect(r"Take control from:\s+\[1\] Alice Example\s+\[2\] Bob Second")
    agent.send("2")
    bob.expect("rights to: view only")
    agent.expect(r"\[1\] Alice Example can type; \[2\] Bob Second is watching")
    alice.send("echo ALICE$((2*4))\r")
    alice.expect("ALICE8")
    bob.expect("ALICE8")

    # The customer removes B; A's session goes on.
    agent.send("\x1d")
    agent.expect(r"\[r\] remove")
    agent.send("r")
    agent.expect(r"Remove:\s+\[1\] Alice Example\s+\[2\] Bob Second")
    agent.send("2")
    bob.expect("The customer removed you from the session")
    bob.expect(pexpect.EOF)
    agent.expect("You removed Bob Second from the session.")
    alice.send("echo STILL$((3+4))\r")
    alice.expect("STILL7")
    agent.expect("STILL7")

    # The customer ends the session: A's console exits with the reason.
    agent.send("\x1d")
    agent.expect(r"\[e\] end the session now")
    agent.send("e")
    alice.expect("The customer ended the session.")
    alice.expect(pexpect.EOF)
    agent.expect("You ended the session with Alice Example.")
    for console in (alice, bob):
        console.close()
        assert console.exitstatus is not None and "Traceback" not in transcript(console)
    running.stop()

    result = running.cli("audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    granted = [e for e in events if e["type"] == "consent_granted"]
    assert [bool(e["body"].get("upgrade")) for e in granted] == [False, False, True]
    assert len({e["session"] for e in granted}) == 1
    session = granted[0]["session"]
    removed = [e for e in events if e["type"] == "engineer_removed"]
    assert [e["session"] for e in removed] == [session]
    ended = [e for e in events if e["type"] == "session_ended" and e["session"] == session]
    assert len(ended) == 1 and "customer_ended" in json.dumps(ended[0])
    # Each engineer's own signed receipt, under the one session id: in the
    # log, and in the customer's own copy.
    logged = [json.loads(base64.b64decode(e["personal"]["receipt"])) for e in granted]
    assert [(r["engineer"], tuple(r["granted"])) for r in logged] == [
        ("alice", ("view", "control")), ("bob", ("view",)), ("bob", ("view", "control"))]
    changed = [e for e in events if e["type"] == "rights_changed" and e["session"] == session]
    # Bob's rights, twice; Alice's never changed.
    assert [(e["actor"], e["body"]["granted"]) for e in changed] == [
        ("bob", ["view", "control"]), ("bob", ["view"])]
    kept = (running.root / "agent-state" / "receipts.jsonl").read_text().splitlines()
    mine = [json.loads(json.loads(line)["receipt"]) for line in kept]
    assert sorted(r["engineer"] for r in mine if r["session"] == session) == [
        "alice", "bob", "bob"]

    for path in [*running.data_dir.rglob("*"), running.broker_stdout]:
        if path.is_file():
            assert marker.encode() not in path.read_bytes(), f"marker leaked into {path}"


def test_ending_with_two_engineers_ends_it_for_both_with_one_end(running: Deployment) -> None:
    agent, alice, bob = two_engineers(running)
    agent.send("\x1d")
    agent.expect(r"\[e\] end for")
    agent.send("e")
    for console in (alice, bob):
        console.expect("The customer ended the session.")
        console.expect(pexpect.EOF)
    agent.expect(INVITE_RE)  # a fresh code for the next call
    running.stop()
    result = running.cli("audit", "list", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    ended = [e for e in events if e["type"] == "session_ended"]
    assert len(ended) == 1 and ended[0]["body"]["reason"] == "customer_ended", ended
    # Nobody's seat read as lost: both were ended by the customer.
    assert {p["engineer"]: p["left"] for p in ended[0]["body"]["participants"]} == {
        "alice": "customer_ended", "bob": "customer_ended"}
    assert "agent_lost" not in result.stdout
