"""What the customer sees of file transfers: the banner line, the notice
when one ends, the menu's cancel and files panel, names shown literally."""

from __future__ import annotations

import asyncio
import os
import pty
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.pty import set_winsize
from agent.screen import CustomerScreen, Viewer
from agent.sshd import Gate
from agent.transfers.disk import Roots
from agent.transfers.hub import DOWNLOAD, UPLOAD, Transfer, TransferHub
from agent.transfers.jail import Limits
from agent.transfers.view import TransferView, banner_line, describe
from tests.agent.test_screen_flow import read_all, read_until


def transfer(direction: str, name: str, size: int, engineer: str = "Alice") -> Transfer:
    return Transfer(engineer, "alice", direction, name, size, Gate(control=False, files=True))


def test_each_transfer_in_words_with_the_name_shown_literally() -> None:
    up = transfer(UPLOAD, "/report.pdf", 1_200_000)
    assert describe(up) == "Engineer Alice is sending you report.pdf (1.2 MB so far)"
    down = transfer(DOWNLOAD, "/shared/app.log", 300_000)
    down.moved = 135_000
    assert describe(down) == ("Engineer Alice is copying /shared/app.log (300 KB) from this "
                              "computer - 45%")
    down.outcome = "complete"
    assert describe(down).endswith("from this computer - done")
    hostile = transfer(UPLOAD, "/a\x1b[2Jb", 5, engineer="Eve\x1b]0;x\x07")
    assert "\x1b" not in describe(hostile) and "\\x1b[2J" in describe(hostile)



def test_the_banner_line_names_the_file_and_size_first() -> None:
    # The row starts with who is connected; 80 columns must still hold the
    # file and its size (the engineer, named again, comes last).
    row = "consentry: Alice Example is watching -- "
    up = transfer(UPLOAD, "/report.pdf", 1_200_000, engineer="Alice Example")
    assert banner_line(up) == "Receiving report.pdf (1.2 MB so far) from Alice Example"
    down = transfer(DOWNLOAD, "/shared/app.log", 300_000, engineer="Alice Example")
    down.moved = 135_000
    assert banner_line(down) == "Sending /shared/app.log (300 KB, 45%) to Alice Example"
    assert "(300 KB, 45%)" in (row + banner_line(down))[:80]
    down.outcome = "complete"
    assert banner_line(down) == "Sent /shared/app.log (300 KB) to Alice Example"
    up.outcome, up.reason = "refused", "refused: the name is too long"
    assert banner_line(up) == ("Refused receiving report.pdf from Alice Example "
                               "(refused: the name is too long)")
    hostile = transfer(UPLOAD, "/a\x1b[2Jb", 5, engineer="Eve\x1b]0;x\x07")
    assert "\x1b" not in banner_line(hostile) and "\\x1b[2J" in banner_line(hostile)


@pytest.fixture
async def screen(tmp_path: Path) -> AsyncIterator[tuple[CustomerScreen, int, TransferHub,
                                                        TransferView]]:
    master, slave = pty.openpty()
    set_winsize(master, 200, 30)  # the banner row holds the whole line
    os.set_blocking(master, False)
    try:
        async with CustomerScreen(slave, slave) as customer:
            customer.session_started("s1", Viewer("Alice", "alice", control=False))
            hub = TransferHub("s1", Roots(str(tmp_path / "in")), Limits())
            view = TransferView(customer, tmp_path)
            view.watch(hub)
            customer.on_cancel_transfers = view.cancel
            yield customer, master, hub, view
            read_all(master)
    finally:
        os.close(master)
        os.close(slave)


async def test_the_banner_shows_a_running_transfer_and_ctrl_rbracket_x_cancels_it(
        screen: tuple) -> None:
    customer, master, hub, _view = screen
    stopped: list[bool] = []
    running = hub.start(transfer(DOWNLOAD, "/shared/app.log", 300_000))
    running.on_stop = lambda: stopped.append(True)
    received = bytearray()
    await read_until(master, received, b"Sending /shared/app.log (300 KB, 0%) to Alice")
    assert b"Ctrl-] x cancels" in received
    os.write(master, b"\x1dx")
    await read_until(master, received, b"to Alice: cancelled (cancelled by the customer)")
    assert stopped == [True] and not hub.running
    assert running.outcome == "cancelled"
    await asyncio.sleep(0)
    assert customer._activity == ""


async def test_ctrl_rbracket_f_shows_where_files_go(screen: tuple, tmp_path: Path) -> None:
    customer, master, hub, view = screen
    customer.on_files = lambda: asyncio.get_running_loop().create_task(
        customer.show_panel(view.panel, {"x": view.cancel}))
    hub.finish(hub.start(transfer(UPLOAD, "/fix.sh", 10)), "complete")
    received = bytearray()
    os.write(master, b"\x1df")
    await read_until(master, received, b"(consentry-agent transfers prints it)")
    text = received.decode(errors="replace")
    assert str(tmp_path / "in") in text and "Engineer Alice sent you fix.sh" in text
    os.write(master, b" ")
