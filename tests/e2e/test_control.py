"""The engineer asks for control during a view-only session: real broker
process, real agent under a PTY, and the console's client library driven
in-process (plus the plain terminal console's Ctrl-] c)."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import asyncssh
import pexpect

from broker.wire.code import parse_code
from broker.wire.messages import Message
from console.client import ConsoleClient, JoinedSession
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code, transcript


class Screen(asyncssh.SSHClientSession[bytes]):
    """What the engineer's terminal would show, kept as text."""

    def __init__(self) -> None:
        self.text = ""
        self.changed = asyncio.Event()

    def data_received(self, data: bytes, datatype: int | None) -> None:
        self.text += data.decode(errors="replace")
        self.changed.set()

    async def wait_for(self, needle: str, timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while needle not in self.text:
                self.changed.clear()
                await self.changed.wait()


@dataclass
class Engineer:
    joined: JoinedSession
    screen: Screen
    chan: asyncssh.SSHClientChannel[bytes]
    results: asyncio.Queue[Message] = field(default_factory=asyncio.Queue)

    async def next_result(self) -> Message:
        return await asyncio.wait_for(self.results.get(), 30)


async def expect(child: pexpect.spawn, pattern: str, timeout: float = 20) -> None:
    # pexpect blocks; in a thread, so the console's tasks keep running meanwhile.
    await asyncio.to_thread(child.expect, pattern, timeout=timeout)


@asynccontextmanager
async def view_only_session(dep: Deployment, *agent_args: str) -> AsyncIterator[
        tuple[pexpect.spawn, Engineer]]:
    """A session the customer granted view only, with the engineer's shell open."""
    key = dep.add_engineer("alice", display="Alice Example")
    agent = dep.agent("--alias", "front desk", *agent_args)
    code = read_code(agent)
    client = ConsoleClient(dep.url, dep.pki.ca_cert, load_file_identity("alice", key, None))
    join = asyncio.create_task(client.join(parse_code(code), ("view",)))
    await expect(agent, r"\[n/Enter\] deny")
    agent.send("v")
    joined = await asyncio.wait_for(join, 30)
    assert joined.granted == ("view",)
    screen = Screen()
    conn, pump = await joined.open_ssh()
    chan, _ = await conn.create_session(lambda: screen, term_type="xterm",
                                        term_size=(80, 24), encoding=None)
    engineer = Engineer(joined, screen, chan)

    async def on_control(msg: Message) -> None:
        if msg.type == "control_result":
            await engineer.results.put(msg)

    joined.on_control.append(on_control)
    await expect(agent, r"Alice Example \(alice\) is viewing --")
    try:
        yield agent, engineer
    finally:
        conn.close()
        await joined.leave()
        pump.cancel()


def audit_events(dep: Deployment) -> list[dict]:
    result = dep.cli("audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def test_customer_grants_control_and_keystrokes_then_reach_the_shell(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, engineer):
        # Typed while view only: dropped by the agent, never run.
        engineer.chan.write(b"echo EARLY$((3+4))\r")
        await asyncio.sleep(1)
        assert "EARLY7" not in engineer.screen.text

        await engineer.joined.request_control()
        await expect(agent, "now asks for control")
        await expect(agent, r"\[c\] allow control")
        agent.send("c")
        result = await engineer.next_result()
        assert (result["decision"], result["granted"]) == ("granted", ["view", "control"])
        assert engineer.joined.control
        await expect(agent, r"Alice Example \(alice\) is viewing and typing")

        engineer.chan.write(b"echo UP$((1+1))\r")
        await engineer.screen.wait_for("UP2")
        await expect(agent, "UP2")  # the customer sees it too
        assert "EARLY7" not in engineer.screen.text

        # Nothing left to ask: answered at once, nobody prompted.
        await engineer.joined.request_control()
        result = await engineer.next_result()
        assert (result["decision"], result["granted"]) == ("unchanged", ["view", "control"])

    running.stop()
    events = audit_events(running)
    types = [e["type"] for e in events]
    assert types.count("consent_granted") == 2
    upgrade = [e for e in events if e["type"] == "consent_granted"][-1]
    assert upgrade["body"]["upgrade"] is True
    assert upgrade["body"]["asked"] == ["view", "control"]
    assert upgrade["body"]["granted"] == ["view", "control"]
    assert json.loads(__import__("base64").b64decode(upgrade["personal"]["receipt"]))[
        "decision"] == "granted"
    requested = types.index("control_requested")
    # Recorded in order: the request, the signed answer, then the change of rights.
    assert requested < types.index("consent_granted", requested) < types.index(
        "rights_changed", requested)
    changed = events[types.index("rights_changed", requested)]
    assert changed["body"] == {"granted": ["view", "control"], "by": "customer",
                               "upgrade": True}
    ended = events[types.index("session_ended")]
    assert ended["body"]["granted"] == ["view", "control"]


async def test_customer_declines_control_and_input_is_still_dropped(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, engineer):
        await engineer.joined.request_control()
        await expect(agent, "now asks for control")
        agent.send("n")
        result = await engineer.next_result()
        assert (result["decision"], result["granted"]) == ("denied", ["view"])
        assert not engineer.joined.control
        await expect(agent, "can still only watch")

        marker = "NOPE" + secrets.token_hex(4)
        engineer.chan.write(f"echo {marker}$((2+3))\r".encode())
        await asyncio.sleep(2)
        assert f"{marker}5" not in engineer.screen.text
        assert f"{marker}5" not in transcript(agent)

        # A refusal is not the end: the engineer may ask again.
        await engineer.joined.request_control()
        await expect(agent, "now asks for control")
        agent.send("v")  # keep view only
        result = await engineer.next_result()
        assert result["decision"] == "denied"

    running.stop()
    events = audit_events(running)
    denied = [e for e in events if e["type"] == "consent_denied"]
    assert len(denied) == 2
    assert all(e["body"]["upgrade"] is True and e["body"]["granted"] == [] for e in denied)
    assert "rights_changed" not in [e["type"] for e in events]


async def test_view_only_computer_declines_without_asking(running: Deployment) -> None:
    async with view_only_session(running, "--max-rights", "view") as (agent, engineer):
        await engineer.joined.request_control()
        result = await engineer.next_result()
        assert (result["decision"], result["granted"]) == ("denied", ["view"])
        await expect(agent, "Control declined: this computer does not allow control")
        assert "now asks for control" not in transcript(agent)
    running.stop()
    denied = [e for e in audit_events(running) if e["type"] == "consent_denied"]
    assert [e["body"]["upgrade"] for e in denied] == [True]


def test_terminal_console_asks_with_ctrl_bracket_c(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    console = running.console(read_code(agent), key, "alice")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("v")
    console.expect("connected to front desk")
    console.expect(r"\$ ")
    console.send("\x1dc")  # Ctrl-] c
    console.expect("asking the customer for control")
    agent.expect("now asks for control")
    agent.send("c")
    console.expect("the customer granted control")
    console.send("echo UP$((1+1))\r")
    console.expect("UP2")
    agent.expect("UP2")
    console.send("\x1dc")
    console.expect("nothing to ask")
    console.send("\x1dq")
    console.expect(pexpect.EOF)
