"""A session survives its links being cut: real agent and console under
PTYs, a real broker, and a TCP forwarder of the test's own between each of
them and the broker, which the test resets (RST) mid-session.

After each cut the session goes on with no new consent, a marker typed
afterwards comes back, a large output cut in the middle arrives whole and
once, the audit has the interruption and the resume, and a third party with
the engineer's own login but not the pairing cannot take the seat."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import secrets
import socket
import struct
import threading
import time
from pathlib import Path

import pexpect

from broker.client.link import LinkError
from console.client import ConsoleClient
from console.identity import load_file_identity
from tests.e2e.conftest import Deployment, read_code, transcript

RESUME_WINDOW = "60"


class Forwarder:
    """127.0.0.1:port -> the broker, one thread per direction; `cut` resets
    every connection it carries (as a dropped Wi-Fi or a NAT timeout does),
    and while `refusing` new connections are reset at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.refusing = False
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                _reset(sock)

    def close(self) -> None:
        self.cut()
        self.listener.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    # A close alone does not end a connection another thread is blocked
    # reading (the kernel keeps it until that read returns): shut it down
    # first, which wakes the reader; the close then resets it (linger 0).
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    _reset(dst)


def until_seen(child: pexpect.spawn, pattern: str, *, also_read: pexpect.spawn,
               timeout: float) -> None:
    """`child.expect(pattern)` while the other terminal is read too, as a
    person's screen would be (a terminal nobody reads holds the shell)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            child.expect(pattern, timeout=0.2)
            return
        except pexpect.TIMEOUT:
            if time.monotonic() > deadline:
                raise
        with contextlib.suppress(pexpect.TIMEOUT):
            also_read.expect(pexpect.TIMEOUT, timeout=0.05)


def between(text: str, start: str, end: str) -> str:
    begin = text.index(start) + len(start)
    return text[begin:text.index(end, begin)]


def test_a_session_survives_its_console_then_its_agent_link_being_cut(
        deployment: Deployment) -> None:
    deployment.start_broker(0, "--resume-window", RESUME_WINDOW)
    key = deployment.add_engineer("alice", display="Alice Example")
    to_agent, to_console = Forwarder(deployment.port), Forwarder(deployment.port)
    try:
        agent = deployment.agent("--alias", "front desk", "--broker", to_agent.url)
        code = read_code(agent)
        console = deployment.console(code, key, "alice", "--control", "--broker", to_console.url)
        agent.expect(r"\[n/Enter\] deny")
        agent.send("c")
        console.expect(r"\$ ")
        first = "ONE" + secrets.token_hex(4)
        console.send(f"echo {first}-$((20+1))\r")
        console.expect(f"{first}-21")
        agent.expect(f"{first}-21")

        # The console's link is reset: it reconnects, proves itself, resumes.
        to_console.cut()
        console.expect("connection lost — reconnecting", timeout=20)
        console.expect("resumed", timeout=30)
        agent.expect("Connection restored", timeout=10)
        second = "TWO" + secrets.token_hex(4)
        console.send(f"echo {second}-$((20+2))\r")
        console.expect(f"{second}-22")
        agent.expect(f"{second}-22")

        # A large output, and the agent's link reset while it streams: every
        # line arrives, in order, once.
        start, end = "BEGIN" + secrets.token_hex(4), "END" + secrets.token_hex(4)
        console.send(f"echo {start}; seq 1 60000; echo {end}-$((1+2))\r")
        until_seen(console, r"\n5000\r", also_read=agent, timeout=20)
        to_agent.cut()
        # (The customer's terminal is read meanwhile: the shell waits for
        # the customer's screen as for the engineer's.)
        until_seen(console, f"{end}-3", also_read=agent, timeout=60)
        # The digits that arrived, with the console's own status lines (put
        # in between at a write's boundary) taken out: each number once, in order.
        arrived = between(transcript(console), f"{start}\r\n", f"{end}-3")
        digits = re.sub(r"\s", "", re.sub(r"consentry: [^\r\n]*", "", arrived))
        assert digits == "".join(str(n) for n in range(1, 60001))
        agent.expect("Connection restored", timeout=30)
        third = "THREE" + secrets.token_hex(4)
        console.send(f"echo {third}-$((20+3))\r")
        console.expect(f"{third}-23")
        agent.expect(f"{third}-23")

        # Someone with Alice's own login (her key) but not the pairing tries
        # to take the seat while her console cannot reach the broker.
        session = _session_id(deployment)
        to_console.refusing = True
        to_console.cut()
        console.expect("connection lost — reconnecting", timeout=20)
        error = asyncio.run(_forged_resume(deployment, key, session))
        assert error.code == "resume_refused", error
        to_console.refusing = False
        console.expect("resumed", timeout=60)
        fourth = "FOUR" + secrets.token_hex(4)
        console.send(f"echo {fourth}-$((20+4))\r")
        console.expect(f"{fourth}-24")

        # Never a second consent prompt; the customer ends it as ever.
        assert transcript(agent).count("A support engineer asks to connect") == 1
        agent.send("\x1d")
        agent.expect(r"\[e\] end the session now")
        agent.send("e")
        console.expect("The customer ended the session.")
        console.expect(pexpect.EOF)
        for child in (agent, console):
            assert "Traceback" not in transcript(child)
    finally:
        deployment.stop()
        to_agent.close()
        to_console.close()

    result = deployment.cli("audit", "list", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    mine = [e for e in events if e["session"] == session]
    types = [e["type"] for e in mine]
    assert types.count("session_interrupted") == 3 and types.count("session_resumed") == 3
    assert [e["body"]["side"] for e in mine if e["type"] == "session_resumed"] == [
        "console", "agent", "console"]
    assert "resume_refused" in types
    ended = next(e for e in mine if e["type"] == "session_ended")
    assert ended["body"]["reason"] == "customer_ended"
    # A replay is counted once: the 60000 lines and the rest, not twice.
    assert ended["body"]["bytes_to_console"] < 2 * len("\r\n".join(map(str, range(60001))))
    assert sum(t in ("consent_granted",) for t in types) == 1


def _session_id(deployment: Deployment) -> str:
    result = deployment.cli("audit", "list", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return next(e["session"] for e in events if e["type"] == "consent_granted")


async def _forged_resume(deployment: Deployment, key: Path, session: str) -> LinkError:
    """Log in as Alice (the key is hers) and claim her held seat with a
    proof made without the pairing's key: the agent must refuse it."""
    identity = load_file_identity("alice", key, None)
    client = ConsoleClient(deployment.url, deployment.pki.ca_cert, identity)
    link = None
    for _ in range(50):  # until the broker holds the seat (the console's cut seen)
        link = await client.reconnect()
        # An attempt number newer than any so far: the proof is what is tested.
        await link.send("resume", session=session, attempt=10**6,
                        nonce=base64.b64encode(secrets.token_bytes(32)).decode(), received=0)
        try:
            challenge = await link.recv(timeout=10)
        except LinkError as exc:
            await link.close()
            if exc.code != "unknown_session":
                return exc
            await asyncio.sleep(0.1)
            continue
        assert challenge.type == "resume_challenge", challenge
        await link.send("resume_proof", proof=base64.b64encode(bytes(32)).decode())
        try:
            reply = await link.recv(timeout=10)
        except LinkError as exc:
            return exc
        finally:
            await link.close()
        raise AssertionError(f"a forged resume was answered {reply.type}")
    raise AssertionError("the seat was never held for a resume")





def test_the_customer_ends_the_session_while_the_agent_link_is_down(
        deployment: Deployment) -> None:
    """Ctrl-] e works at once with no link; the broker and the engineer hear
    `customer_ended` as soon as the agent's link is back."""
    deployment.start_broker(0, "--resume-window", RESUME_WINDOW)
    key = deployment.add_engineer("alice", display="Alice Example")
    to_agent = Forwarder(deployment.port)
    try:
        agent = deployment.agent("--alias", "front desk", "--broker", to_agent.url)
        code = read_code(agent)
        console = deployment.console(code, key, "alice", "--control")
        agent.expect(r"\[n/Enter\] deny")
        agent.send("c")
        console.expect(r"\$ ")
        to_agent.refusing = True
        to_agent.cut()
        agent.expect("Reconnecting", timeout=20)
        console.expect("the customer's connection was lost", timeout=20)
        agent.send("\x1d")
        agent.expect(r"\[e\] end the session now")
        agent.send("e")
        agent.expect("You ended the session with Alice Example.")
        to_agent.refusing = False
        console.expect("The customer ended the session.", timeout=30)
        console.expect(pexpect.EOF)
        for child in (agent, console):
            assert "Traceback" not in transcript(child)
    finally:
        deployment.stop()
        to_agent.close()
    result = deployment.cli("audit", "list", "--json")
    events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    ended = [e for e in events if e["type"] == "session_ended"]
    assert [e["body"]["reason"] for e in ended] == ["customer_ended"]
