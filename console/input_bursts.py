"""A paste the terminal did not bracket still arrives as one paste.

Textual enables bracketed paste, and most terminals then deliver a paste as
one `events.Paste`. Some do not bracket it (tmux's `paste-buffer` without
`-p`, `send-keys`, some terminals' middle-click), and Textual turns every
character into its own `events.Key`, each handed from the input thread to
the event loop and dispatched on its own: measured, 213 KB took ~50 s to
reach the remote shell, one SSH packet per character, with the status bar
frozen meanwhile.

So the driver's events are passed to the app in batches (whatever the input
thread parsed while the loop was busy, in order), and a run of at least
`BURST_CHARS` plain characters within a batch becomes one `events.Paste`.
A person typing, even with key repeat, never produces such a run between
two turns of the loop; a paste does (the input thread parses a whole read
of the terminal, 4 KiB, per turn).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from textual import events
from textual.driver import Driver
from textual.message import Message

# Plain characters in one batch from which on it is a paste, not typing.
BURST_CHARS = 32
# Keys a paste is made of besides printable characters: line ends and tabs.
_PASTE_CONTROLS = frozenset("\r\n\t")


def _plain(message: Message) -> str | None:
    """The character a key event types, if it is one a paste contains."""
    if not isinstance(message, events.Key):
        return None
    char = message.character
    if char is None or len(char) != 1:
        return None
    return char if char.isprintable() or char in _PASTE_CONTROLS else None


def coalesce(messages: Iterable[Message]) -> Iterator[Message]:
    """`messages` in order, each run of `BURST_CHARS` or more plain keys
    replaced by one `events.Paste` of their text."""
    run: list[Message] = []

    def end_run() -> Iterator[Message]:
        if len(run) >= BURST_CHARS:
            yield events.Paste("".join(_plain(key) or "" for key in run))
        else:
            yield from run
        run.clear()

    for message in messages:
        if _plain(message) is not None:
            run.append(message)
            continue
        yield from end_run()
        yield message
    yield from end_run()


class BurstCoalescing(Driver):
    """Mixed in before a Textual driver class: see the module doc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._burst_lock = threading.Lock()
        self._burst: list[Message] = []

    def send_message(self, message: Message) -> None:
        # Runs in the input thread. One hand-over per batch: the first
        # message of a batch schedules it, later ones join it until it runs.
        with self._burst_lock:
            self._burst.append(message)
            if len(self._burst) > 1:
                return
        self._loop.call_soon_threadsafe(self._deliver)

    def _deliver(self) -> None:
        with self._burst_lock:
            batch, self._burst = self._burst, []
        for message in coalesce(batch):
            message.set_sender(self._app)  # as Driver.process_message does
            self._app.post_message(message)


def coalescing(driver_class: type[Driver]) -> type[Driver]:
    """`driver_class` with `BurstCoalescing` mixed in."""
    if issubclass(driver_class, BurstCoalescing):
        return driver_class
    return type(f"BurstCoalescing{driver_class.__name__}", (BurstCoalescing, driver_class), {})
