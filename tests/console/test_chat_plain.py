"""The plain join's chat on a real PTY (pexpect): Ctrl-] m sends a line,
the customer's lines appear between the shell's output, marked and
escaped; against the loopback chat server (tests/console/plain_chat_harness.py)."""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pexpect

from console.chat_prompt import CANCELLED_TEXT, PROMPT

HARNESS = Path(__file__).resolve().parent / "plain_chat_harness.py"


@contextmanager
def plain_join(*args: str) -> Iterator[pexpect.spawn]:
    child = pexpect.spawn(sys.executable, [str(HARNESS), *args], dimensions=(24, 80),
                          timeout=20, encoding="utf-8", codec_errors="replace")
    child.logfile_read = io.StringIO()
    try:
        yield child
    finally:
        child.close(force=True)


def transcript(child: pexpect.spawn) -> str:
    log = child.logfile_read
    assert isinstance(log, io.StringIO)
    return log.getvalue()


def test_ctrl_rbracket_m_sends_and_customer_lines_show_between_the_output() -> None:
    with plain_join() as child:
        child.expect_exact("m sends the customer a message")
        child.expect_exact("customer@desk:~$ ")
        # The fake shell makes the customer say what follows "customer ".
        child.send("customer is it \x1b[2Jfixed?\r")
        child.expect_exact("\r\n[chat] Customer: is it [2Jfixed?\r\n")
        child.send("\x1dm")
        child.expect_exact(PROMPT)
        child.send("the patch is coming\r")
        child.expect_exact("[chat] Alice Example: the patch is coming\r\n")
        # The shell is back: keys go to it again.
        child.send("ls\r")
        child.expect_exact("ls\r\ncustomer@desk:~$ ")
        child.send("\x1dm")
        child.expect_exact(PROMPT)
        child.send("never mind\x1b")
        child.expect_exact(CANCELLED_TEXT)
        child.send("\x1dq")
        child.expect_exact("You left the session.")
        child.expect(pexpect.EOF)
    assert transcript(child).count("[chat] Alice Example:") == 1


def test_view_only_still_chats() -> None:
    with plain_join("--view-only") as child:
        child.expect_exact("customer@desk:~$ ")
        child.send("x")
        child.expect_exact("view only: your keystrokes are not sent")
        child.send("\x1dm")
        child.expect_exact(PROMPT)
        child.send("I can only watch\r")
        child.expect_exact("[chat] Alice Example: I can only watch")
        child.send("\x1dq")
        child.expect(pexpect.EOF)


def test_a_computer_without_chat_says_so_at_ctrl_rbracket_m() -> None:
    with plain_join("--no-chat") as child:
        child.expect_exact("customer@desk:~$ ")
        child.send("\x1dm")
        child.expect_exact("does not offer chat")
        child.send("echo\r")  # the keys still go to the shell
        child.expect_exact("echo\r\n")
        child.send("\x1dq")
        child.expect(pexpect.EOF)
