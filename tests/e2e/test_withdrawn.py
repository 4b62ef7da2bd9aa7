"""A join request withdrawn while the customer's prompt is open, from either
side: the other side hears it at once, and nobody's program crashes on a
late answer. Real broker, agent and console processes under PTYs."""

from __future__ import annotations

import asyncio
import signal
import time

import pexpect

from tests.e2e.conftest import CODE_RE, Deployment, read_code, transcript
from tests.e2e.test_control import expect, view_only_session
from tests.e2e.vt import Terminal


def last_screen(child: pexpect.spawn) -> str:
    """What the agent drew since it last cleared its screen."""
    shown = transcript(child)
    return shown[shown.rindex("\x1b[2J"):]


def code_shown_with(child: pexpect.spawn, notice: str, timeout: float = 5) -> str:
    """Wait for `notice`, then the code on the same screen as it."""
    child.expect(notice, timeout=timeout)
    match = CODE_RE.search(last_screen(child))
    assert match, last_screen(child)
    return match.group(1)


def _prompt_open(dep: Deployment) -> tuple[pexpect.spawn, pexpect.spawn, str]:
    key = dep.add_engineer("alice", display="Alice Example")
    agent = dep.agent("--alias", "front desk")
    code = read_code(agent)
    console = dep.console(code, key, "alice", "--control")
    agent.expect(r"\[n/Enter\] deny")
    console.expect("Waiting for the customer to approve")
    return agent, console, code


def test_engineer_gives_up_the_prompt_closes_and_the_agent_carries_on(
    running: Deployment,
) -> None:
    agent, console, old_code = _prompt_open(running)
    console.sendintr()  # Ctrl-C on `consentry-console join`
    console.expect("nothing is left waiting for the customer")
    console.expect(pexpect.EOF)
    # At once, not when the customer answers or the countdown runs out.
    new_code = code_shown_with(agent, "withdrew the request")
    assert new_code != old_code
    # A late answer (the customer had not seen it close) is no answer to anything.
    agent.send("c")
    agent.expect(pexpect.TIMEOUT, timeout=1)
    assert agent.isalive()
    assert "Traceback" not in transcript(agent) and "ExceptionGroup" not in transcript(agent)
    # The next engineer is asked afresh, with the new code.
    key = running.root / "alice_ed25519"
    again = running.console(new_code, key, "alice")
    agent.expect(r"\[n/Enter\] deny")
    agent.send("n")
    again.expect("the customer declined the request")
    again.expect(pexpect.EOF)
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)
    agent.close()
    assert agent.exitstatus == 0
    types = running.audit_types()
    assert "join_abandoned" in types


def test_engineer_killed_while_the_customer_answers_is_no_crash(running: Deployment) -> None:
    agent, console, _code = _prompt_open(running)
    console.kill(signal.SIGKILL)  # no word from the console: the broker sees it go
    agent.send("c")  # the answer races the broker's news
    code_shown_with(agent, "withdr(ew|awn)", timeout=10)
    time.sleep(0.5)
    assert agent.isalive()
    assert "Traceback" not in transcript(agent)


def test_customer_quits_during_the_prompt_the_engineer_hears_at_once(
    running: Deployment,
) -> None:
    agent, console, _code = _prompt_open(running)
    started = time.monotonic()
    agent.sendcontrol("c")  # Ctrl-C on the agent, the prompt still open
    agent.expect(pexpect.EOF, timeout=5)
    console.expect("the customer closed the support program", timeout=5)
    console.expect(pexpect.EOF, timeout=5)
    assert time.monotonic() - started < 5  # the prompt's own timeout is 60 s
    console.close()
    agent.close()
    assert console.exitstatus == 7  # not approved (README: exit codes of the console)
    assert agent.exitstatus == 0
    assert "stopped; nobody is connected" in transcript(agent)


async def test_engineer_leaves_during_a_request_for_control(running: Deployment) -> None:
    async with view_only_session(running) as (agent, engineer):
        term = Terminal(agent)
        await engineer.joined.request_control()
        await expect(agent, r"\[c\] allow control")
        await engineer.joined.leave()
        await expect(agent, "Alice Example left the session", timeout=5)
        await asyncio.to_thread(term.settle, 0.5)
        text = term.text()
        assert "approval needed" not in text and "Your support code" in text, text
        agent.send("c")  # too late: nothing is asked any more
        await asyncio.to_thread(term.settle, 0.5)
        assert agent.isalive()
        assert "Traceback" not in transcript(agent)
