"""How a session ends, as each person sees it: the console says what really
happened, with the documented exit code, and a frozen agent never runs input
that arrived for a session that had already ended."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pexpect
import pytest

from agent.liveness import STALL_AFTER
from broker.wire.code import parse_code
from console.client import ConsoleClient
from console.errors import KeyMismatch
from console.identity import Identity, load_file_identity
from tests.e2e.conftest import Deployment, read_code, transcript, write_key
from tests.e2e.test_session import approve_session


def test_a_broker_crash_is_a_lost_connection_not_a_leave(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    assert running.broker is not None
    running.broker.kill()  # kill -9: no `ended`, the sockets just die
    running.broker.wait()
    # Both ends try to resume; the broker that comes back has no such
    # session (it lived in the dead process), so both are told it is over.
    console.expect("connection lost — reconnecting")
    running.start_broker(running.port)
    console.expect("session is over")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 4
    assert "You left" not in transcript(console)
    agent.expect("connection to the support service was lost")


def test_only_a_real_leave_is_you_left_with_exit_0(running: Deployment) -> None:
    _agent, console, _code = approve_session(running, "c", "--control")
    console.send("\x1dq")
    console.expect("You left the session.")
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0


async def test_a_key_mismatch_is_not_blamed_on_the_code(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    real = load_file_identity("alice", key, None)
    swapped = write_key(running.root / "swapped_ed25519")
    offered = " ".join((running.root / "swapped_ed25519.pub").read_text().split()[:2])

    class Swapped(Identity):
        @property
        def public_line(self) -> str:
            return offered

    client = ConsoleClient(running.url, running.pki.ca_cert, Swapped(real.user, real.keypair))
    assert swapped.exists()
    with pytest.raises(KeyMismatch) as info:
        await client.join(parse_code(code), ("view",))
    message = str(info.value)
    assert "did not match" in message and "key" in message
    assert "code did not match" not in message
    assert info.value.exit_code == 8
    await asyncio.to_thread(agent.expect, "did not match the one the support service announced")
    bodies = [json.loads(line) for line in
              running.cli("audit", "list", "--json").stdout.splitlines() if line.strip()]
    failed = [e for e in bodies if e["type"] == "pairing_failed"]
    assert failed and failed[-1]["body"]["reason"] == "key_mismatch"
    assert "join_abandoned" not in [e["type"] for e in bodies]


def test_a_frozen_agent_never_runs_input_for_an_ended_session(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    ran = running.root / "ran-after-the-end"
    # A program waiting for one line, deaf to the hang-up that ends a session:
    # if the line reaches it at all, the file appears.
    console.send(f"stty -icanon; trap '' HUP; echo READ\"\"Y; read x; "
                 f"[ \"$x\" = go ] && touch {ran}\r")
    console.expect("READY")
    agent.expect("READY")
    agent.kill(signal.SIGSTOP)
    try:
        console.send("go\r")  # sits in the frozen agent's socket buffer
        console.expect(pexpect.TIMEOUT, timeout=0.5)
        console.kill(signal.SIGKILL)  # the broker ends the session behind it
        for _ in range(50):
            if "session_ended" in running.audit_types():
                break
            time.sleep(0.1)
        assert "session_ended" in running.audit_types()
        time.sleep(STALL_AFTER)  # a stall as long as those the agent notices
    finally:
        agent.kill(signal.SIGCONT)
    agent.expect("nothing of it ran")
    agent.expect("Nobody can connect without your approval")  # it carries on, waiting
    assert agent.isalive()
    assert not ran.exists(), "input for an ended session ran on the customer's computer"


def test_input_held_across_a_stall_runs_once_the_session_is_confirmed_live(
    running: Deployment,
) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    agent.kill(signal.SIGSTOP)
    try:
        console.send("echo HELD$((40+2))\r")
        console.expect(pexpect.TIMEOUT, timeout=STALL_AFTER + 1)  # a stall it notices
    finally:
        agent.kill(signal.SIGCONT)
    console.expect("HELD42")
    agent.expect("HELD42")
