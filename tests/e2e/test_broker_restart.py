"""The broker stops or restarts under a running session: the engineer is told
what happened and what to do, with an exit code of its own (0 is a normal
end); the customer's screen says it is back, with a new code, as soon as it is."""

from __future__ import annotations

import re
import time

import pexpect

from tests.e2e.conftest import CODE_RE, Deployment, matched, transcript
from tests.e2e.test_session import approve_session


def test_broker_shutdown_is_its_own_exit_code_with_what_to_do(running: Deployment) -> None:
    agent, console, _code = approve_session(running, "c", "--control")
    running.stop_broker()  # SIGTERM: a clean stop, both ends told why
    console.expect("the broker shut down or restarted", timeout=15)
    console.expect(pexpect.EOF)
    console.close()
    assert console.exitstatus == 9
    shown = transcript(console)
    assert "join again" in shown
    assert "You left" not in shown
    agent.expect("The support service shut down or restarted; the session with Alice "
                 "Example ended", timeout=15)


def test_agent_says_it_is_back_with_a_new_code_as_soon_as_it_reconnects(
    running: Deployment,
) -> None:
    agent = running.agent("--alias", "front desk")
    agent.expect(CODE_RE)
    old_code = matched(agent)
    running.stop_broker()
    agent.expect("Lost the support service", timeout=10)
    running.start_broker(running.port)  # the operator restarts it on the same address
    deadline = time.monotonic() + 20
    agent.expect(CODE_RE, timeout=20)
    reconnected = time.monotonic()
    assert reconnected < deadline
    new_code = matched(agent)
    assert new_code != old_code
    agent.expect(pexpect.TIMEOUT, timeout=1)
    shown = transcript(agent)
    screen = shown[shown.rindex("\x1b[2J"):]  # what the customer sees now
    assert new_code in screen
    assert "Lost the support service" not in screen
    assert "retrying" not in screen
    assert re.search(r"connected to the support service again", screen, re.IGNORECASE)
