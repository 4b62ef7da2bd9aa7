"""Our own lines never land inside the shell's escape sequences or UTF-8
characters (console.boundary, and the plain join's output that uses it)."""

from __future__ import annotations

import asyncio
import os

import pytest

from broker.client.terminal_io import TerminalInput, TerminalOutput
from console.boundary import CANCEL, OutputBoundary
from console.terminal import OWN_LINE_WAIT, _Output


@pytest.mark.parametrize(("data", "safe"), [
    (b"plain text", True),
    (b"\x1b", False),
    (b"\x1b[", False),
    (b"\x1b[38;5;1", False),
    (b"\x1b[38;5;1m", True),
    (b"\x1b]0;title", False),
    (b"\x1b]0;title\x07", True),
    (b"\x1b]8;;http://x\x1b", False),
    (b"\x1b]8;;http://x\x1b\\", True),
    (b"\x1b(B", True),
    (b"\x1b(", False),
    ("Gr\u00fc".encode()[:-1], False),
    ("Gr\u00fc\u00df".encode(), True),
    ("\U0001f600".encode()[:2], False),
    (b"\x1b[31\x18", True),  # CAN ends a sequence
])
def test_where_the_shells_bytes_stopped(data: bytes, safe: bool) -> None:
    boundary = OutputBoundary()
    boundary.feed(data)
    assert boundary.safe is safe
    # Fed a byte at a time, the same.
    one = OutputBoundary()
    for i in range(len(data)):
        one.feed(data[i:i + 1])
    assert one.safe is safe


async def test_a_chat_line_waits_for_the_end_of_a_sequence_then_a_cancel() -> None:
    read_fd, write_fd = os.pipe()
    keys_r, keys_w = os.pipe()
    try:
        out = TerminalOutput(write_fd, on_pause=lambda: None, on_resume=lambda: None,
                             on_error=lambda _e: None)
        keys = TerminalInput(keys_r, on_data=lambda _d: None, on_error=lambda _e: None)
        session = _Output(asyncio.Event(), out, keys)
        session.data_received(b"\x1b[38;5", None)
        session.own(b"[chat] Customer: hi\r\n")
        session.data_received(b";1mred", None)  # the sequence ends: our line follows
        await out.drain()
        # On a row of its own: after "red", a new line first.
        assert os.read(read_fd, 4096) == b"\x1b[38;5;1mred\r\n[chat] Customer: hi\r\n"

        session.data_received(b"\x1b]0;never ends", None)
        session.own(b"[chat] Customer: still there?\r\n")
        await asyncio.sleep(OWN_LINE_WAIT + 0.2)
        await out.drain()
        # At a row's start already (our line ended it): no empty row.
        assert os.read(read_fd, 4096) == (b"\x1b]0;never ends" + CANCEL
                                          + b"[chat] Customer: still there?\r\n")
        out.close()
    finally:
        for fd in (read_fd, write_fd, keys_r, keys_w):
            os.close(fd)
