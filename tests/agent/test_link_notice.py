"""What the customer is told while a session's link is down: the notice
rides in the session's one banner row beside who is connected, and the way
to end the session (Ctrl-] e) must stay on that row at 80 columns."""

from __future__ import annotations

import os
import pty
from collections.abc import AsyncIterator

import pytest

from agent.link_notice import link_notice
from agent.pty import set_winsize
from agent.screen import CustomerScreen, Viewer
from broker.client.relay import LinkEvent
from tests.agent.test_screen_flow import read_all

COLUMNS = 80
# A long but ordinary name: the banner's share for who is connected.
ENGINEER = Viewer("Alexandra Example-Smith", "alexandra", control=True)


@pytest.fixture
async def screen() -> AsyncIterator[CustomerScreen]:
    master, slave = pty.openpty()
    set_winsize(master, COLUMNS, 24)
    os.set_blocking(master, False)
    try:
        async with CustomerScreen(slave, slave) as customer:
            customer.session_started("s1", ENGINEER)
            yield customer
            read_all(master)
    finally:
        os.close(master)
        os.close(slave)


@pytest.mark.parametrize("event", [LinkEvent("retrying", 3.0), LinkEvent("peer_lost", 120.0)])
async def test_the_way_to_end_it_stays_on_the_banner_while_the_link_is_down(
        screen: CustomerScreen, event: LinkEvent) -> None:
    notice = link_notice(event)
    assert notice is not None
    screen.notice(notice)
    row = screen._banner_text()[:COLUMNS]
    assert row.startswith("consentry: Alexandra E")  # who comes first, cut if need be
    assert " can type -- " in row and row.rstrip().endswith("Ctrl-] e ends it"), row


def test_each_state_is_said_in_words() -> None:
    assert link_notice(LinkEvent("retrying", 3.2)) == "Reconnecting (3 s)… Ctrl-] e ends it"
    assert link_notice(LinkEvent("peer_lost", 120.0)) == (
        "Waiting for them (120 s)… Ctrl-] e ends it")
    assert link_notice(LinkEvent("resumed", 1.52)) == "Connection restored (it was down 1.5 s)"
    assert link_notice(LinkEvent("lost")) is None
