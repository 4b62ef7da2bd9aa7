"""The customer's terminal after the agent exits, however it exits: as it
was before (the agent draws on the alternate screen, as full-screen programs
do), in cooked mode, with only the agent's last line below the shell's."""

from __future__ import annotations

import signal

import pexpect

from tests.e2e.conftest import CODE_RE, Deployment, transcript

ENTER, LEAVE = "\x1b[?1049h", "\x1b[?1049l"


def _restored(child: pexpect.spawn, last_line: str) -> None:
    shown = transcript(child)
    assert shown.startswith(ENTER) or shown.index(ENTER) < shown.index("consentry remote")
    after = shown[shown.rindex(LEAVE) + len(LEAVE):]
    # Nothing the agent drew is left on the customer's screen: only its last word.
    assert "support code" not in after and "\x1b[" not in after
    assert last_line in after, repr(after)


def test_ctrl_c_restores_the_screen(running: Deployment) -> None:
    agent = running.agent("--alias", "front desk")
    agent.expect(CODE_RE)
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 0
    _restored(agent, "stopped; nobody is connected")


def test_an_error_restores_the_screen(deployment: Deployment) -> None:
    deployment.port = 9  # nothing listens there
    agent = deployment.agent("--alias", "front desk")
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 3
    _restored(agent, "cannot reach the broker")


def test_sigterm_restores_the_screen(running: Deployment) -> None:
    agent = running.agent("--alias", "front desk")
    agent.expect(CODE_RE)
    agent.kill(signal.SIGTERM)
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 0
    _restored(agent, "stopped; nobody is connected")
