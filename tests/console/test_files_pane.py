"""The TUI's files pane (F4), driven by Pilot against a real SFTP server."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from textual.widgets import Button, DataTable, Input, ProgressBar

from console.files import FileTransfers
from console.screens.files import FilesPane
from console.screens.session import SessionPane
from tests.console.fakes import FakeLive
from tests.console.sftp_server import sftp_server
from tests.console.test_app import Harness, until
from tests.console.test_layout import ABOVE, BELOW, open_session, screen_lines


def sha(path: Path) -> bytes:
    return hashlib.sha256(path.read_bytes()).digest()


@contextlib.asynccontextmanager
async def session_with_files(harness: Harness, pilot, root: Path | None,  # type: ignore[no-untyped-def]
                             *, files: bool = True
                             ) -> AsyncIterator[tuple[FakeLive, SessionPane]]:
    async with sftp_server(root) as conn:
        live = await open_session(harness, pilot, files=files)
        live.transfers = FileTransfers(conn)
        yield live, harness.app.screen.query_one(SessionPane)
        await live.transfers.close()


async def test_f4_shows_the_listing_and_the_shell_is_told_its_new_size(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    (remote / "logs").mkdir(parents=True)
    (remote / "logs" / "app.log").write_bytes(os.urandom(123_456))
    (remote / "[red]x\x1b[2J").write_bytes(b"!")
    downloads = tmp_path / "dl"
    downloads.mkdir()
    harness = Harness()
    async with harness.app.run_test(size=(120, 40)) as pilot:
        async with session_with_files(harness, pilot, remote) as (live, pane):
            files = pane.files
            assert files.display is False or not files.has_class("-open")
            assert live.shell_size == (120, 40 - ABOVE - BELOW)
            await pilot.press("f4")
            await until(pilot, lambda: files.rows())
            assert files.rows() == ["logs/", "[red]x\\x1b[2J"]
            # Literal on screen: the markup did not act, the escape is visible.
            assert any("[red]x\\x1b[2J" in line for line in screen_lines(harness.app))
            await until(pilot, lambda: pane.terminal.size_cells[0] == 120 - files.region.width
                        and live.shell_size == pane.terminal.size_cells)
            assert files.region.width > 0

            # Into the folder, download to a chosen folder: byte-identical.
            local = files.query_one(".files-local", Input)
            local.value = str(downloads)
            local.focus()
            await pilot.press("enter")
            table = files.query_one(DataTable)
            table.focus()
            table.move_cursor(row=0)
            await pilot.press("enter")
            await until(pilot, lambda: files.rows() == ["app.log"])
            table.move_cursor(row=1)  # row 0 is ".."
            await pilot.press("enter")
            await until(pilot, lambda: (downloads / "app.log").exists())
            await until(pilot, lambda: "saved as" in files.status_text)
            assert sha(downloads / "app.log") == sha(remote / "logs" / "app.log")
            assert files.query(ProgressBar)

            # Upload from a path into the folder shown.
            patch = tmp_path / "fix.patch"
            patch.write_bytes(os.urandom(65_537))
            upload = files.query_one(".files-upload", Input)
            upload.value = str(patch)
            upload.focus()
            await pilot.press("enter")
            await until(pilot, lambda: "sent as" in files.status_text)
            assert sha(remote / "logs" / "fix.patch") == sha(patch)
            await until(pilot, lambda: "fix.patch" in files.rows())

            # The same download again is refused: nothing is overwritten.
            table.focus()
            table.move_cursor(row=1)
            await pilot.press("enter")
            await until(pilot, lambda: "already exists" in files.status_text)

            await pilot.press("f4")  # hide: the terminal gets the width back
            await until(pilot, lambda: live.shell_size == (120, 40 - ABOVE - BELOW))
            assert harness.app.focused is pane.terminal


async def test_without_the_files_right_the_pane_says_so_and_asks(tmp_path: Path) -> None:
    """Without the right the pane says so and offers to ask; the customer's
    grant (here at once) makes the listing appear, and the button goes."""
    (tmp_path / "report.txt").write_bytes(b"x")
    harness = Harness()
    async with harness.app.run_test(size=(80, 24)) as pilot:
        async with session_with_files(harness, pilot, tmp_path, files=False) as (live, pane):
            await pilot.press("f4")
            files: FilesPane = pane.files
            await until(pilot, lambda: "has not allowed file transfer" in files.status_text)
            assert files.query_one(".files-status").has_class("error")
            ask = files.query_one(".files-ask", Button)
            assert ask.display and harness.app.focused is ask
            assert any("Ask the customer for files" in line
                       for line in screen_lines(harness.app))
            await pilot.press("enter")
            await until(pilot, lambda: files.rows() == ["report.txt"])
            assert live.requested == ["files"]
            assert "files" in pane.record.granted and not ask.display
            assert "allowed file transfer" in pane.notice
