"""Regenerate the console screenshots in docs/: `make screenshots`.

Drives the real app with the test suite's fake backend, so the pictures are
reproducible and need no broker.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from textual.widgets import DataTable, Input, TabbedContent  # noqa: E402

from console.app import ConsoleApp  # noqa: E402
from console.backend import Settings  # noqa: E402
from console.files import FileTransfers  # noqa: E402
from console.screens.main import MainScreen  # noqa: E402
from console.screens.session import SessionPane  # noqa: E402
from tests.console.chat_server import ChatServer, chat_server  # noqa: E402
from tests.console.fakes import DECLINED, FakeBackend  # noqa: E402
from tests.console.sftp_server import sftp_server  # noqa: E402

SETTINGS = Settings(broker="wss://support.example.com:8443", ca=Path("certs/ca.crt"),
                    identity=Path("~/.ssh/id_ed25519"), user="alice")
SIZE = (100, 30)

LISTING = (
    b"ls -l /var/log/app\r\n"
    b"total 12\r\n"
    b"-rw-r----- 1 app app 4096 Nov 22 09:14 \x1b[1;32maccess.log\x1b[0m\r\n"
    b"-rw-r----- 1 app app 1873 Nov 22 09:15 \x1b[1;31merror.log\x1b[0m\r\n"
    b"drwxr-x--- 2 app app 4096 Nov 21 18:02 \x1b[1;34marchive\x1b[0m\r\n"
    b"\x1b[32mcustomer@desk\x1b[0m:~$ tail -3 /var/log/app/error.log\r\n"
    b"09:15:02 \x1b[33mWARN\x1b[0m disk usage at 91%\r\n"
    b"09:15:07 \x1b[31mERROR\x1b[0m could not write cache: No space left on device\r\n"
    b"09:15:07 \x1b[31mERROR\x1b[0m request 4711 failed\r\n"
    b"\x1b[32mcustomer@desk\x1b[0m:~$ "
)


async def _wait(pilot, predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("the app did not reach the state to photograph")
        await pilot.pause(0.05)


async def _files(pilot, app: ConsoleApp, live, outdir: Path) -> Path:  # type: ignore[no-untyped-def]
    """The files pane (F4) on a real SFTP server holding a customer's logs."""
    # The engineer's home, as the pane shows it (~/Downloads), is this run's.
    with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"HOME": tmp}):
        remote, local = Path(tmp) / "transfers", Path(tmp) / "Downloads"
        (remote / "archive").mkdir(parents=True)
        local.mkdir()
        for name, size in (("access.log", 4096), ("error.log", 1873), ("app.conf", 640)):
            (remote / name).write_bytes(b"x" * size)
        (local / "fix-4711.patch").write_bytes(b"p" * 2210)
        async with sftp_server(remote) as conn:
            live.transfers = FileTransfers(conn)
            pane = app.screen.query_one(SessionPane)
            await pilot.press("f4")
            files = pane.files
            await _wait(pilot, lambda: files.rows())
            files.set_local_dir(local)
            files.upload(local / "fix-4711.patch")
            await _wait(pilot, lambda: "sent as" in files.status_text)
            files.download("error.log")
            await _wait(pilot, lambda: "saved as" in files.status_text)
            await pilot.pause(0.5)
            shot = Path(app.save_screenshot("console-files.svg", str(outdir)))
            await pilot.press("f4")
            await live.transfers.close()
            live.transfers = None
    return shot


async def _chat(pilot, app: ConsoleApp, live, outdir: Path) -> Path:  # type: ignore[no-untyped-def]
    """The chat box (F3) on a real SSH server speaking the chat contract."""
    server = ChatServer()
    server.customer_says("Hi, the app says the disk is full again")
    async with chat_server(server) as (_server, conn):
        chat = await live.open_chat(conn)
        live.emit(b"\x1b[H\x1b[2J" + LISTING)  # whole again, after the files pane narrowed it
        pane = app.screen.query_one(SessionPane)
        await _wait(pilot, lambda: pane.chat.lines)
        await pilot.press("f3")
        await chat.say("I see it: /var/log/app is at 91%. I will clear the old logs "
                       "and send you a patch.")
        server.customer_says("Thank you! Go ahead")
        await _wait(pilot, lambda: len(pane.chat.lines) == 3)
        field = pane.chat.query_one(Input)
        field.value = "Done. Could you restart the app?"
        await pilot.pause(0.5)
        shot = Path(app.save_screenshot("console-chat.svg", str(outdir)))
        await pilot.press("f3")
        await chat.close()
        live.chat = None
    return shot


async def take(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a script, not a server
    written: list[Path] = []

    def make(settings: Settings) -> FakeBackend:
        return FakeBackend(settings, role="admin", events=240)

    app = ConsoleApp(make, SETTINGS)
    async with app.run_test(size=SIZE) as pilot:
        written.append(Path(app.save_screenshot("console-connect.svg", str(outdir))))
        await pilot.click("#connect")
        await _wait(pilot, lambda: isinstance(app.screen, MainScreen))
        backend = app.backend
        assert isinstance(backend, FakeBackend)

        # A declined join and a live one, so the list shows both.
        app.screen.query_one("#code", Input).value = DECLINED
        await pilot.click("#join")
        main = app.screen
        assert isinstance(main, MainScreen)
        await _wait(pilot, lambda: any(r.state == "declined" for r in main.records.values()))
        app.screen.query_one("#code", Input).value = "4821-193-775"
        await pilot.click("#control")
        await pilot.click("#files")
        await pilot.click("#join")
        await _wait(pilot, lambda: app.screen.query(SessionPane))
        live = backend.sessions[-1]
        await _wait(pilot, lambda: live.on_output is not None)
        live.emit(LISTING)
        await pilot.pause(1.2)
        written.append(Path(app.save_screenshot("console-session.svg", str(outdir))))
        written.append(await _files(pilot, app, live, outdir))
        written.append(await _chat(pilot, app, live, outdir))

        tabs = app.screen.query_one("#tabs", TabbedContent)
        tabs.active = "home"
        backend.consent_delay = 30.0
        app.screen.query_one("#code", Input).value = "7305-555-018"
        await pilot.pause(0.3)
        await pilot.click("#join")
        await pilot.pause(2.2)
        written.append(Path(app.save_screenshot("console-home.svg", str(outdir))))

        tabs.active = "audit"
        table = app.screen.query_one("#events", DataTable)
        await _wait(pilot, lambda: table.row_count > 0)
        table.focus()
        table.move_cursor(row=3)
        await pilot.press("enter")
        await pilot.pause(0.5)
        written.append(Path(app.save_screenshot("console-audit.svg", str(outdir))))
        for worker in list(app.workers):
            worker.cancel()
    return written


if __name__ == "__main__":
    for path in asyncio.run(take(ROOT / "docs")):
        print(f"wrote {path.relative_to(ROOT)}")
