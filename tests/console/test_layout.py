"""The console at 80x24 and 120x40: nothing cut off, and the remote terminal
gets exactly the rows and columns it is shown in.

Snapshots are the rendered screen as text (what a terminal of that size shows,
minus colours), kept in snapshots/*.txt. After a deliberate layout change,
regenerate them with `CONSENTRY_UPDATE_SNAPSHOTS=1 pytest tests/console/test_layout.py`
and review the diff like code.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import pytest
from textual.app import App
from textual.geometry import Region
from textual.widgets import Button, Label, Static, Switch

from console.screens.session import SessionPane
from tests.console.fakes import FakeLive
from tests.console.test_app import Harness, connect, join, until

SIZES = [(80, 24), (120, 40)]  # with snapshots
MORE_SIZES = [(81, 25), (200, 50)]  # "and every size above"
SNAPSHOTS = Path(__file__).resolve().parent / "snapshots"
# Header (1) and tab strip (2) above the terminal; status bar (1), footer (1) below.
ABOVE, BELOW = 3, 2


def screen_lines(app: App[None]) -> list[str]:
    """The whole screen as text, one string per row, as the compositor paints it."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def check_snapshot(name: str, lines: list[str]) -> None:
    path = SNAPSHOTS / f"{name}.txt"
    text = "\n".join(line.rstrip() for line in lines) + "\n"
    if os.environ.get("CONSENTRY_UPDATE_SNAPSHOTS"):
        SNAPSHOTS.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"the screen differs from {path.name}"


def full_screen_program(cols: int, rows: int) -> bytes:
    """What `top` or `vi` draws for a terminal of `rows` x `cols`: every row
    addressed absolutely, the first and last ones marked."""
    out = [b"\x1b[?1049h\x1b[H\x1b[2J"]
    for row in range(1, rows + 1):
        label = "first row" if row == 1 else "last row" if row == rows else f"row {row}"
        out.append(f"\x1b[{row};1H{label}".encode())
    return b"".join(out)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_home_shows_the_whole_join_row(size: tuple[int, int]) -> None:
    width, height = size
    harness = Harness()
    async with harness.app.run_test(size=size) as pilot:
        await connect(pilot, harness.app)
        await pilot.pause(0.2)
        screen = harness.app.screen
        for widget in screen.query("#join-row > *"):
            region = widget.region
            assert region.width > 0 and region.right <= width, f"{widget} is cut off"
        # One free cell after the button, so its edge is not mistaken for a cut.
        assert screen.query_one("#join", Button).region.right <= width - 1
        lines = screen_lines(harness.app)
        row = next(line for line in lines if "Join" in line and "control" in line)
        assert "code, e.g. 4821-193-775" in row  # the placeholder is whole
        # Each switch's state in words, whole.
        assert "control: no" in row and "files: no" in row
        check_snapshot(f"home-{width}x{height}", lines)

        for switch, words in (("control", "control: yes"), ("files", "files: yes")):
            await pilot.click(f"#{switch}")
            await pilot.pause()
            assert screen.query_one(f"#{switch}", Switch).value
            assert words in str(screen.query_one(f"#{switch}-label", Label).render())
            assert any(words in line for line in screen_lines(harness.app))


async def open_session(harness: Harness, pilot, *, control: bool = True,  # type: ignore[no-untyped-def]
                       files: bool = False) -> FakeLive:
    await connect(pilot, harness.app)
    await join(pilot, harness.app, "4821-193-775", control=control, files=files)
    await until(pilot, lambda: harness.backends and harness.backend.sessions
                and harness.backend.sessions[0].shell_open)
    await pilot.pause(0.1)
    return harness.backend.sessions[0]


def mask_counters(lines: list[str]) -> list[str]:
    """The status bar's clock and byte counts change from run to run."""
    return [re.sub(r"\d\d:\d\d", "MM:SS", re.sub(r"\d+(\.\d)? (B|KiB)", "N B", line))
            for line in lines]


@pytest.mark.parametrize("size", SIZES + MORE_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_terminal_gets_exactly_the_rows_it_shows(size: tuple[int, int]) -> None:
    width, height = size
    rows = height - ABOVE - BELOW
    harness = Harness()
    async with harness.app.run_test(size=size) as pilot:
        live = await open_session(harness, pilot)
        pane = harness.app.screen.query_one(SessionPane)
        term = pane.terminal
        status = pane.query_one(".session-status", Static)
        assert term.region == Region(0, ABOVE, width, rows)
        assert status.region == Region(0, height - 2, width, 1)
        assert term.size_cells == (width, rows)
        assert live.shell_size == (width, rows)

        # A long notice stays on the status bar's one row: the terminal keeps
        # its size and the shell is not told a new one.
        told = len(live.resizes)
        pane.set_notice("View only: your keys are not sent. F7 asks the customer for "
                        "control, and this sentence is long enough to need a second row.")
        await pilot.pause(0.1)
        assert status.region.height == 1
        assert term.size_cells == (width, rows)
        assert len(live.resizes) == told
        assert screen_lines(harness.app)[height - 2].rstrip().endswith("…")

        # A full-screen program drawn for the size the shell was told fills
        # the terminal exactly: first row under the tabs, last row above the
        # status bar, nothing lost or repeated.
        cols, shell_rows = live.shell_size
        live.emit(full_screen_program(cols, shell_rows))
        await pilot.pause(0.1)
        lines = screen_lines(harness.app)
        assert lines[ABOVE].rstrip() == "first row"
        assert [line.rstrip() for line in lines[ABOVE + 1:ABOVE + rows - 1]] == [
            f"row {n}" for n in range(2, rows)]
        assert lines[ABOVE + rows - 1].rstrip() == "last row"
        if size in SIZES:
            check_snapshot(f"session-{width}x{height}", mask_counters(lines))


async def test_a_resize_while_the_shell_opens_reaches_the_shell() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        await connect(pilot, harness.app)
        gate = harness.backend.open_gate = asyncio.Event()
        await join(pilot, harness.app, "4821-193-775", control=True)
        await until(pilot, lambda: harness.backend.sessions)
        live = harness.backend.sessions[0]
        await until(pilot, lambda: harness.app.screen.query(SessionPane))
        assert not live.shell_open
        await pilot.resize_terminal(100, 30)  # while the SSH channel is not there yet
        await pilot.pause(0.2)
        gate.set()
        await until(pilot, lambda: live.shell_open)
        await pilot.pause(0.1)
        term = harness.app.screen.query_one(SessionPane).terminal
        assert term.size_cells == (100, 30 - ABOVE - BELOW)
        assert live.shell_size == term.size_cells


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
async def test_the_audit_tab_fits(size: tuple[int, int]) -> None:
    """Every filter's name, the Apply button, the page's whole info line and
    every key in the footer are on screen; F7/F8, which act on a session
    tab, are left out of the footer elsewhere to make room."""
    from tests.console.test_audit_actions import open_audit

    _, height = size
    harness = Harness(role="admin")
    async with harness.app.run_test(size=size) as pilot:
        await open_audit(pilot, harness)
        await pilot.pause(0.2)
        lines = screen_lines(harness.app)
        filters = next(line for line in lines if "since" in line and "Apply" in line)
        for name in ("since", "until", "engineer", "device", "type", "session", "Apply"):
            assert re.search(rf"\b{name}\b", filters), f"{name!r} is cut off: {filters!r}"
        info = " ".join(line.strip() for line in lines if "Page 1" in line or "UTC" in line)
        assert "n: older" in info and re.search(r"checked \d\d:\d\d:\d\d UTC", info)
        # The footer recomposes when the tab changes: wait for it, then read it.
        await until(pilot, lambda: "Quit" in screen_lines(harness.app)[-1])
        footer = screen_lines(harness.app)[-1]
        assert footer.rstrip().endswith("f10 Quit"), footer
        assert "f7" not in footer and "f8" not in footer
        table = harness.app.screen.query_one("#events")
        assert table.region.height >= height - 10  # the events get the room


def live_tab(harness: Harness) -> str:
    return next(iter(harness.app.screen.records))  # type: ignore[attr-defined]


async def test_session_keys_are_in_the_footer_only_on_a_session_tab() -> None:
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        await open_session(harness, pilot, control=False)

        def footer() -> str:
            return screen_lines(harness.app)[-1]

        await until(pilot, lambda: "f7 Ask for control" in footer())
        assert "f8 Leave session" in footer()
        harness.app.screen.show_tab("home")  # type: ignore[attr-defined]
        await until(pilot, lambda: "Quit" in footer() and "f7" not in footer())
        assert "f8" not in footer()
        harness.app.screen.show_tab(live_tab(harness))  # type: ignore[attr-defined]
        await until(pilot, lambda: "f7 Ask for control" in footer())
