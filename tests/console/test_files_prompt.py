"""The plain join's files prompt: its keys, commands and lines, driven
against a real SFTP server (the terminal around it is the e2e's)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from pathlib import Path

from console.files import FileTransfers
from console.files_prompt import BACK_TEXT, Command, FilesPrompt, parse, progress_text
from tests.console.sftp_server import sftp_server


class Screen:
    def __init__(self) -> None:
        self.text = ""
        self.closed = 0

    def write(self, text: str) -> None:
        self.text += text

    def close(self) -> None:
        self.closed += 1


async def settle(prompt: FilesPrompt) -> None:
    async with asyncio.timeout(30):
        while prompt.busy is not None:
            await asyncio.sleep(0.01)


def test_commands_are_parsed_with_shell_quoting() -> None:
    assert parse("get 'my app.log' /tmp/x") == Command("get", ("my app.log", "/tmp/x"))
    assert parse("PUT fix.patch") == Command("put", ("fix.patch",))
    assert parse("   ") == "empty"
    assert parse("get") == "usage: get REMOTE [LOCAL]"
    assert str(parse("rm \x1b[2J")).startswith("unknown command")
    assert "\x1b" not in str(parse("\x1b[2J"))
    assert parse("get 'unterminated").startswith("cannot read")  # type: ignore[union-attr]


def test_progress_line_has_bytes_percent_and_rate() -> None:
    line = progress_text("app.log", 512 * 1024, 1024 * 1024, 2.0)
    assert line == "app.log: 512.0 KiB of 1.0 MiB  50% 256.0 KiB/s"
    assert progress_text("empty", 0, 0, 0.0) == "empty: 0 B of 0 B    - -"


async def test_put_get_and_ls_from_the_prompt(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    (remote / "logs").mkdir()
    (remote / "logs" / "app.log").write_bytes(os.urandom(150_000))
    (remote / "x\x1b]0;pwned\x07").write_bytes(b"!")
    (local / "fix.patch").write_bytes(os.urandom(70_000))
    screen = Screen()
    async with sftp_server(remote) as conn:
        prompt = FilesPrompt(FileTransfers(conn), screen.write, screen.close, local_dir=local)
        prompt.open()
        assert "files> " in screen.text and "get REMOTE" in screen.text
        prompt.feed(b"ls\r")
        await settle(prompt)
        assert "logs/" in screen.text and "\x1b]0" not in screen.text
        assert "x\\x1b]0;pwned\\x07" in screen.text  # shown, not acted on
        prompt.feed(b"cd logs\r")
        await settle(prompt)
        prompt.feed(b"get app.log\r")
        await settle(prompt)
        assert "fetched app.log: 146.5 KiB saved as" in screen.text
        assert re.search(r"app\.log: 146\.5 KiB of 146\.5 KiB 100%", screen.text)
        prompt.feed(b"put fix.patch\r")
        await settle(prompt)
        assert "sent fix.patch: 68.4 KiB as logs/fix.patch" in screen.text
        prompt.feed(b"get nothing-here\r")
        await settle(prompt)
        assert "No such file or folder on the customer's computer: logs/nothing-here" \
            in screen.text
        assert prompt.active  # errors leave the prompt open for the next try
        prompt.feed(b"\r")  # an empty line: back to the shell
        assert not prompt.active and screen.closed == 1 and BACK_TEXT in screen.text
    for path in (remote / "logs" / "app.log", local / "fix.patch"):
        twin = local / "app.log" if path.name == "app.log" else remote / "logs" / "fix.patch"
        assert hashlib.sha256(path.read_bytes()).digest() == \
            hashlib.sha256(twin.read_bytes()).digest()


async def test_keys_edit_the_line_and_ctrl_c_cancels_a_transfer(tmp_path: Path) -> None:
    (tmp_path / "big.log").write_bytes(os.urandom(20_000_000))
    out = tmp_path / "out"
    out.mkdir()
    screen = Screen()
    async with sftp_server(tmp_path) as conn:
        prompt = FilesPrompt(FileTransfers(conn), screen.write, screen.close, local_dir=out)
        prompt.open()
        prompt.feed("gét\x7f\x7fet big.log\x1b[D\r".encode())  # é is two bytes: one rub-out
        async with asyncio.timeout(30):
            while prompt.busy is None or "big.log:" not in screen.text:
                await asyncio.sleep(0.01)
        prompt.feed(b"\x03")
        await settle(prompt)
        assert "cancelled; nothing was kept" in screen.text
        assert list(out.iterdir()) == []
        assert prompt.active
        prompt.feed(b"\x1b")  # a lone Esc: back to the shell
        assert not prompt.active and screen.closed == 1
