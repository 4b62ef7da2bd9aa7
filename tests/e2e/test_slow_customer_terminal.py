"""A customer's terminal that falls behind (not read for a while, as a slow
ssh or serial link, or a terminal window scrolled back, behaves) while the
session pours out output: the agent goes on relaying, keeps the kill switch
live, and pauses the shell rather than drop or pile up what the customer
must see; once the customer's terminal reads again, all of it arrives."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pexpect

from tests.e2e.conftest import Deployment, transcript
from tests.e2e.test_paste import Drain
from tests.e2e.test_session import approve_session

# The banner the agent draws over the session (it names "Alice Example").
BANNER_RE = re.compile(r"\x1b7\x1b\[1;1H\x1b\[7m.*?\x1b\[0m\x1b8", re.DOTALL)
# 3,000,000 zero bytes are exactly 4,000,000 "A"s in base64: far more than a
# terminal's buffer and the agent's own together.
FLOOD = "head -c 3000000 /dev/zero | base64"
FLOOD_AS = 4_000_000


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def read_until(child: pexpect.spawn, marker: str, timeout: float = 60) -> None:
    """Read the customer's terminal (as fast as it comes) until `marker`."""
    deadline = time.monotonic() + timeout
    text = transcript(child)
    while marker not in text[-65536:]:
        assert time.monotonic() < deadline, f"{marker!r} never reached the customer"
        try:
            child.read_nonblocking(65536, timeout=0.5)
        except pexpect.TIMEOUT:
            pass
        text = transcript(child)


def test_a_customer_terminal_that_is_not_read_stalls_nothing_and_loses_nothing(
    running: Deployment,
) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    engineer = Drain(console)  # the engineer's terminal always keeps up
    try:
        agent.expect(r"\$ ")
        seen = len(transcript(agent))
        probe = running.root / "probe"
        # In the background, so the shell takes the engineer's next command
        # while the flood waits for the customer.
        console.send(f"({FLOOD}; echo OUT$((40+2))DONE) &\r")
        time.sleep(2.0)  # the customer's terminal is not read meanwhile
        console.send(f"touch {probe}\r")
        # The relay works: the engineer's keystrokes reach the shell at once.
        wait_until(probe.exists, 5, "the agent stopped relaying while the customer's "
                                    "terminal was behind")
        # And the shell was paused, not read into the agent's memory: the
        # engineer has not had the rest of the flood either.
        assert "OUT42DONE" not in transcript(console)

        read_until(agent, "OUT42DONE")  # the customer reads again
        mirrored = BANNER_RE.sub("", transcript(agent)[seen:])
        assert mirrored.count("A") == FLOOD_AS, "the customer did not see all of the output"
        wait_until(lambda: "OUT42DONE" in transcript(console), 30,
                   "the engineer's output did not resume")
        console.send("echo KEY$((40+2))\r")
        wait_until(lambda: "KEY42" in transcript(console), 10, "the keystrokes did not echo")
        read_until(agent, "KEY42", timeout=10)

        # The flood again, endless, and the customer's terminal is not read:
        # Ctrl-] e still ends the session at once.
        console.send("base64 /dev/zero\r")
        time.sleep(2.0)
        agent.send("\x1de")
        wait_until(lambda: "The customer ended the session." in transcript(console), 5,
                   "Ctrl-] e did not end the session while the customer's terminal "
                   "was behind")
        read_until(agent, "You ended the session with Alice Example.", timeout=30)
    finally:
        engineer.close()
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 0
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)
