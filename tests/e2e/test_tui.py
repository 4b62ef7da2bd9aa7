"""The Textual console against a real broker and agent on loopback: log in,
join, watch a marker the customer types appear in the embedded terminal,
leave."""

from __future__ import annotations

import time

import pexpect
import pytest
from textual.widgets import Input

from console.app import ConsoleApp
from console.backend import BrokerBackend, Settings
from console.screens.main import MainScreen
from console.screens.session import SessionPane
from tests.e2e.conftest import Deployment, read_code


async def until(pilot, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await pilot.pause(0.05)


async def join_view_only(pilot, app: ConsoleApp, agent: pexpect.spawn,  # type: ignore[no-untyped-def]
                         code: str) -> SessionPane:
    """Log in, join with `code`, the customer answers view only: the session
    tab once its shell prompt shows."""
    await pilot.click("#connect")
    # The main screen, once its widgets are there (it is pushed first).
    await until(pilot, lambda: isinstance(app.screen, MainScreen)
                and bool(app.screen.query("#code")))
    field = app.screen.query_one("#code", Input)
    field.value = code
    field.focus()
    await pilot.press("enter")  # as a person joins: the code, then Enter
    agent.expect(r"\[n/Enter\] deny", timeout=20)
    agent.send("v")
    await until(pilot, lambda: app.screen.query(SessionPane))
    pane = app.screen.query_one(SessionPane)
    await until(pilot, lambda: "$" in pane.terminal_text())
    return pane


async def test_tui_joins_a_real_agent_sees_the_customer_and_leaves(
    running: Deployment,
) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    settings = Settings(broker=running.url, ca=running.pki.ca_cert, identity=key, user="alice")
    app = ConsoleApp(BrokerBackend, settings)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await join_view_only(pilot, app, agent, code)

        agent.send("echo TUI$((2+3))MARK\r")  # the customer types on their machine
        await until(pilot, lambda: "TUI5MARK" in pane.terminal_text())
        status = str(pane.query_one(".session-status").render())
        assert "front desk" in status and "view only" in status

        # The remote shell was told exactly the size the engineer is shown.
        cols, rows = pane.terminal.size_cells
        assert pane.terminal.region.size == (cols, rows)
        agent.send("stty size\r")
        await until(pilot, lambda: f"\n{rows} {cols}" in pane.terminal_text())

        await pilot.press("f8")
        agent.expect("Alice Example left the session.", timeout=20)
        await until(pilot, lambda: not app.screen.query(SessionPane))
        await app.backend.close()  # type: ignore[union-attr]
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)


@pytest.mark.parametrize(("ending", "reason"), [
    ("ctrl-] e", "The customer ended the session."),
    ("exit", "The remote shell exited."),
])
async def test_tui_shows_the_brokers_reason_not_a_lost_broker(
    running: Deployment, ending: str, reason: str,
) -> None:
    """The shell's connection closes a moment before the broker's `ended`
    arrives with the reason (the customer's kill switch, the shell exiting):
    the session tab waits for it rather than call it a lost broker."""
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    code = read_code(agent)
    settings = Settings(broker=running.url, ca=running.pki.ca_cert, identity=key, user="alice")
    app = ConsoleApp(BrokerBackend, settings)
    async with app.run_test(size=(80, 24)) as pilot:
        pane = await join_view_only(pilot, app, agent, code)
        if ending == "exit":
            agent.send("exit\r")  # the customer types in their own shell
        else:
            agent.send("\x1d")  # Ctrl-] e: the customer's kill switch
            agent.expect(r"\[e\] end the session now", timeout=20)
            agent.send("e")
        await until(pilot, lambda: pane.record.state == "ended")
        await pilot.pause(0.5)  # a later word must not change the outcome either
        assert pane.record.detail == reason, pane.record.detail
        status = str(pane.query_one(".session-status").render())
        assert "lost" not in status and reason[:-1] in status, status
        await app.backend.close()  # type: ignore[union-attr]
    agent.expect("Nobody can connect without your approval")
    agent.sendcontrol("c")
    agent.expect(pexpect.EOF)
