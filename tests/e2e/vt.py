"""The customer's terminal as a person reads it: the agent's transcript
played into a VT emulator (pyte), resized when the test resizes the PTY."""

from __future__ import annotations

import pexpect
import pyte

from tests.e2e.conftest import transcript


class Terminal:
    def __init__(self, child: pexpect.spawn) -> None:
        rows, cols = child.getwinsize()
        self.child = child
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.Stream(self.screen)
        self.fed = 0

    def settle(self, seconds: float = 0.5) -> None:
        """Read what the program draws for `seconds`."""
        self.child.expect(pexpect.TIMEOUT, timeout=seconds)

    def sync(self) -> None:
        text = transcript(self.child)
        self.stream.feed(text[self.fed:])
        self.fed = len(text)

    def resize(self, rows: int, cols: int) -> None:
        self.settle(0.3)
        self.sync()
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)

    def lines(self) -> list[str]:
        self.sync()
        return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())
