"""The customer's screen as they read it (the agent's output played into a VT
emulator): the prompt survives a resize, an approved request for control
keeps the history they were watching, and the banner always comes back to
who is connected."""

from __future__ import annotations

import asyncio
import re

from agent.screen import FLASH_SECONDS
from tests.e2e.conftest import Deployment, read_code
from tests.e2e.test_control import expect, view_only_session
from tests.e2e.vt import Terminal

PROMPT_WORDS = ("approval needed", "Alice Example (alice, engineer)", "Pairing:",
                "[n/Enter] deny", "means deny.")


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


def test_the_prompt_is_redrawn_whole_at_once_after_a_resize(running: Deployment) -> None:
    key = running.add_engineer("alice", display="Alice Example")
    agent = running.agent("--alias", "front desk")
    running.console(read_code(agent), key, "alice", "--control")
    agent.expect(r"\[n/Enter\] deny")
    term = Terminal(agent)
    term.settle(0.2)
    before = _words(term.text())
    term.resize(22, 56)  # narrower than the prompt's longest lines
    term.settle(0.3)  # sooner than the countdown's own redraw
    lines = term.lines()
    text = "\n".join(lines)
    # Every word still there and whole (not cut at the old width, not split
    # across lines), the countdown aside.
    assert [w for w in _words(text) if not w.isdigit()] == \
        [w for w in before if not w.isdigit()], text
    assert all(len(line) < 56 for line in lines), text


async def test_a_prompt_during_a_session_survives_a_resize(running: Deployment) -> None:
    async with view_only_session(running) as (agent, engineer):
        term = Terminal(agent)
        await engineer.joined.request_control()
        await expect(agent, r"No answer in \d+ s means no")
        await asyncio.to_thread(term.settle, 0.2)
        await asyncio.to_thread(term.resize, 20, 50)
        await asyncio.to_thread(term.settle, 0.3)
        lines = term.lines()
        text = "\n".join(lines)
        assert lines[0].startswith("consentry: Alice Example"), text
        assert "now asks for control" in " ".join(text.split()), text
        assert "[c] allow control" in text and "keep view only" in " ".join(text.split()), text
        agent.send("n")
        await engineer.next_result()


async def test_an_approved_request_for_control_keeps_what_the_customer_was_watching(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, engineer):
        term = Terminal(agent)
        # The customer types in the shared shell (it is theirs): history to keep.
        agent.send("echo EARLIER$((20+1))\r")
        await expect(agent, "EARLIER21")
        await asyncio.to_thread(term.settle, 0.5)
        assert "EARLIER21" in term.text()
        await engineer.joined.request_control()
        await expect(agent, r"\[c\] allow control")
        agent.send("c")
        result = await engineer.next_result()
        assert result["decision"] == "granted"
        await expect(agent, r"is viewing and typing")
        await asyncio.to_thread(term.settle, 0.5)
        text = term.text()
        assert "echo EARLIER$((20+1))" in text and "EARLIER21" in text, text
        assert "approval needed" not in text, text
        assert text.splitlines()[0].startswith("consentry: Alice Example (alice) is viewing "
                                               "and typing"), text
        engineer.chan.write(b"echo AFTER$((1+1))\r")
        await expect(agent, "AFTER2")
        await asyncio.to_thread(term.settle, 0.5)
        text = term.text()
        assert text.index("EARLIER21") < text.index("AFTER2"), text


async def test_the_banner_comes_back_to_who_is_connected_after_a_no(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, engineer):
        term = Terminal(agent)
        await engineer.joined.request_control()
        await expect(agent, r"\[c\] allow control")
        agent.send("n")
        await engineer.next_result()
        await expect(agent, "can still only watch")
        await asyncio.to_thread(term.settle, 0.3)
        top = term.lines()[0]
        # Who is connected (the customer's privacy indicator) never gives way
        # to the note: it stays first, the note beside it for a while.
        assert top == ("consentry: Alice Example is watching -- You said no: they can still "
                       "only watch."), top
        # No output meanwhile: the note goes on its own.
        await asyncio.to_thread(term.settle, FLASH_SECONDS + 0.5)
        top = term.lines()[0]
        assert top == "consentry: Alice Example (alice) is viewing -- Ctrl-] for options", top


async def test_a_resize_during_a_session_keeps_the_history_and_the_cursor(
    running: Deployment,
) -> None:
    async with view_only_session(running) as (agent, _engineer):
        term = Terminal(agent)
        agent.send("echo ONE$((0+1))\r")
        await expect(agent, "ONE1")
        await asyncio.to_thread(term.settle, 0.5)
        await asyncio.to_thread(term.resize, 24, 80)
        await asyncio.to_thread(term.settle, 0.3)
        agent.send("echo TWO$((1+1))\r")
        await expect(agent, "TWO2")
        await asyncio.to_thread(term.settle, 0.5)
        lines = term.lines()
        text = "\n".join(lines)
        assert lines[0].startswith("consentry: Alice Example"), text
        assert "ONE1" in text and text.index("ONE1") < text.index("TWO2"), text


async def test_the_options_menu_fits_the_customers_terminal(running: Deployment) -> None:
    """Ctrl-] shows every choice on the banner row, at 80 columns and at 50:
    a choice cut off the edge is one the customer cannot know about."""
    async with view_only_session(running) as (agent, _engineer):
        term = Terminal(agent)
        for cols, wanted in ((80, ("[e] end session", "[f] files", "[m] message",
                                   "[q] quit")),
                             (50, ("[e]end", "[v]view", "[f]files", "[m]chat", "[q]quit"))):
            await asyncio.to_thread(term.resize, 24, cols)
            agent.send("\x1d")
            await asyncio.to_thread(term.settle, 0.3)
            banner = term.lines()[0]
            assert all(choice in banner for choice in wanted), banner
            agent.send("z")  # any other key: back
            await asyncio.to_thread(term.settle, 0.3)
            assert term.lines()[0].startswith("consentry: Alice Example"), term.lines()[0]
