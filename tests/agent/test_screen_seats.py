"""The customer's screen with several engineers connected, on a real PTY:
the banner numbers them, `v` and `r` ask which one by that number, the
menu fits 80 columns, and a code for one more engineer is shown until a key
is pressed or the code is used."""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import AsyncIterator

import pytest

from agent.pty import set_winsize
from agent.screen import _MENU_TEXTS, _SEATS_MENU_TEXTS, CustomerScreen, Viewer
from tests.agent.test_screen_flow import read_all, read_until


@pytest.fixture
async def two() -> AsyncIterator[tuple[CustomerScreen, int, list[tuple[str, object]]]]:
    master, slave = pty.openpty()
    set_winsize(master, 80, 24)
    os.set_blocking(master, False)
    calls: list[tuple[str, object]] = []
    try:
        async with CustomerScreen(slave, slave) as customer:
            customer.on_view_only = lambda seat: calls.append(("view_only", seat))
            customer.on_remove = lambda seat: calls.append(("remove", seat))
            customer.on_invite = lambda: calls.append(("invite", None))
            customer.on_customer_input = lambda data: calls.append(("typed", data))
            customer.session_started("s1", Viewer("Alice", "alice", control=True))
            customer.session_started("s1#1", Viewer("Bob\x1b[2J", "bob", control=False))
            yield customer, master, calls
            read_all(master)
    finally:
        os.close(master)
        os.close(slave)


async def keys(master: int, data: bytes) -> None:
    os.write(master, data)
    await asyncio.sleep(0.1)


async def test_the_banner_numbers_everyone_and_escapes_their_names(two: tuple) -> None:
    customer, _master, _calls = two
    banner = customer._banner_text()
    assert banner.startswith("consentry: [1] Alice can type; [2] Bob")
    assert "is watching" in banner and "\x1b" not in banner


async def test_take_control_from_one_and_remove_one_by_number(two: tuple) -> None:
    customer, master, calls = two
    await keys(master, b"\x1dv")
    assert customer._banner_text().startswith("Take control from:  [1] Alice  [2] Bob")
    await keys(master, b"1")
    await keys(master, b"\x1dr2")
    await keys(master, b"\x1dr9")  # no such engineer: nothing happens
    await keys(master, b"\x1di")
    assert calls == [("view_only", "s1"), ("remove", "s1#1"), ("invite", None)]
    # The digits picked an engineer; none of them went to the shell.
    assert not [c for c in calls if c[0] == "typed"]


async def test_every_menu_has_a_wording_that_fits_80_columns() -> None:
    for texts in (_MENU_TEXTS, _SEATS_MENU_TEXTS):
        assert any(len(text) <= 80 for text in texts)
        assert len(texts[-1]) <= 50
    assert "[r] remove" not in " ".join(_MENU_TEXTS)  # one engineer: `e` ends it


async def test_the_code_for_one_more_engineer_shows_until_used(two: tuple) -> None:
    customer, master, calls = two
    claimed = asyncio.Event()
    shown = asyncio.create_task(customer.show_invite("1234-567-890", 600, claimed))
    received = bytearray()
    await read_until(master, received, b"works once, for one more")
    assert b"1234-567-890" in received
    claimed.set()  # the engineer joined with it: the screen goes back to the session
    await asyncio.wait_for(shown, 5)
    # A key closes it too, and is not typed into the shell.
    shown = asyncio.create_task(customer.show_invite("1234-567-891", 600, asyncio.Event()))
    await asyncio.sleep(0.1)
    await keys(master, b"x")
    await asyncio.wait_for(shown, 5)
    assert ("typed", b"x") not in calls
