"""The engineer's status lines on stderr, and the join's progress steps.

Apart from `console.terminal` (which needs asyncssh) so that a plain join
can say "Connecting..." and open its connection before anything heavy is
imported (`console.__main__`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass

from broker.wire.text import printable

__all__ = ["CONNECTING", "CONNECTING_TEXT", "Progress", "ProgressPrinter", "status"]

CONNECTING = "connecting"
CONNECTING_TEXT = "Connecting to the broker..."


@dataclass(frozen=True)
class Progress:
    """A step of the join, for the engineer's screen."""

    state: str  # connecting | logged_in | moved | pairing | waiting | approved
    text: str
    deadline: float | None = None  # monotonic time the customer's prompt times out


def status(text: str) -> None:
    """A status line for the engineer, kept apart from the remote output."""
    sys.stderr.write(f"consentry: {text}\r\n")
    sys.stderr.flush()


class ProgressPrinter:
    """Prints join progress; counts down while the customer decides."""

    def __init__(self) -> None:
        self._countdown: asyncio.Task[None] | None = None

    def __call__(self, progress: Progress) -> None:
        self.stop()
        status(printable(progress.text, 300))
        if progress.deadline is not None and sys.stderr.isatty():
            self._countdown = asyncio.get_running_loop().create_task(
                self._count(progress.deadline))

    async def _count(self, deadline: float) -> None:
        while (left := deadline - time.monotonic()) > 0:
            sys.stderr.write(f"\rconsentry: waiting for the customer to approve ({left:.0f} s) ")
            sys.stderr.flush()
            await asyncio.sleep(1)

    def stop(self) -> None:
        if self._countdown is not None:
            self._countdown.cancel()
            self._countdown = None
            sys.stderr.write("\r\x1b[K")
