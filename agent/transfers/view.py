"""What the customer sees of file transfers: a line for each as it moves
(in the banner, beside who is connected), a notice when it ends, and the
files panel (Ctrl-] f) with where incoming files are and what moved.

Every name is shown literally: it passes through `printable`, so a name
holding escape sequences shows them as text instead of letting them act
(the policy refuses such names anyway; this is the second line).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from agent.transfers.hub import UPLOAD, Transfer, TransferHub
from agent.transfers.record import RECORD_FILE
from agent.transfers.sizes import format_size
from broker.wire.text import printable

# The banner's transfer line is redrawn at most this often (a transfer may
# report progress thousands of times a second).
REDRAW_INTERVAL = 0.25


class Screen(Protocol):
    """What this needs of `agent.screen.CustomerScreen`."""

    def set_activity(self, text: str) -> None: ...
    def flash(self, text: str, seconds: float = ...) -> None: ...


def shown_name(transfer: Transfer) -> str:
    """The name as the customer reads it: an incoming file by its name in
    the folder, a file copied from the computer by its place in the view."""
    name = transfer.name
    if transfer.direction == UPLOAD:
        name = name.lstrip("/")
    return printable(name, 80)


def describe(transfer: Transfer) -> str:
    """One transfer in a line: who, which way, what, how big, how far."""
    who = printable(transfer.engineer, 40)
    name = shown_name(transfer)
    size = format_size(transfer.size)
    running = transfer.running
    if transfer.direction == UPLOAD:
        what = (f"Engineer {who} is sending you {name} ({size} so far)" if running
                else f"Engineer {who} sent you {name} ({size})")
    else:
        what = (f"Engineer {who} is copying {name} ({size}) from this computer" if running
                else f"Engineer {who} copied {name} ({size}) from this computer")
    if running:
        percent = transfer.percent
        return f"{what} - {percent}%" if percent is not None else what
    outcome = transfer.outcome or ""
    if outcome == "complete":
        return f"{what} - done"
    reason = printable(transfer.reason, 100)
    if outcome == "refused":
        way = "send you" if transfer.direction == UPLOAD else "copy"
        return f"Refused: engineer {who} tried to {way} {name} ({reason})"
    return f"{what} - {outcome}" + (f" ({reason})" if reason else "")


def banner_line(transfer: Transfer) -> str:
    """The same for the banner's one row, file first: the row begins with who
    is connected (the customer's privacy indicator), so on an 80-column
    terminal a sentence that names the engineer again before the file was
    cut before the file's name. Here the name, size and progress come first
    and the engineer last (the row already names who is connected)."""
    who = printable(transfer.engineer, 40)
    name = shown_name(transfer)
    size = format_size(transfer.size)
    upload = transfer.direction == UPLOAD
    if transfer.running:
        if upload:
            return f"Receiving {name} ({size} so far) from {who}"
        percent = transfer.percent
        done = f", {percent}%" if percent is not None else ""
        return f"Sending {name} ({size}{done}) to {who}"
    outcome = transfer.outcome or ""
    reason = printable(transfer.reason, 100)
    if outcome == "complete":
        return f"Received {name} ({size}) from {who}" if upload else (
            f"Sent {name} ({size}) to {who}")
    if outcome == "refused":
        return (f"Refused receiving {name} from {who} ({reason})" if upload else
                f"Refused sending {name} to {who} ({reason})")
    what = f"Receiving {name} ({size}) from {who}" if upload else (
        f"Sending {name} ({size}) to {who}")
    return f"{what}: {outcome}" + (f" ({reason})" if reason else "")


def where(transfer: Transfer) -> str:
    """Where an incoming file landed (for the notice when it is done)."""
    if transfer.direction == UPLOAD and transfer.outcome == "complete" and transfer.local_path:
        return f", saved as {printable(transfer.local_path, 160)}"
    return ""


class TransferView:
    """The customer's view of every running session's transfers."""

    def __init__(self, screen: Screen, state_dir: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._screen = screen
        self._state_dir = state_dir
        self._clock = clock
        self.hubs: list[TransferHub] = []
        self._last_draw = 0.0
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, hub: TransferHub) -> None:
        self.hubs.append(hub)
        hub.listeners.append(self._changed)

    def unwatch(self, hub: TransferHub) -> None:
        if hub in self.hubs:
            self.hubs.remove(hub)
        if self._changed in hub.listeners:
            hub.listeners.remove(self._changed)
        self._draw()

    def running(self) -> list[Transfer]:
        return [t for hub in self.hubs for t in hub.running]

    def cancel(self) -> int:
        """Ctrl-] x: stop every running transfer. How many were."""
        count = sum(hub.cancel_all() for hub in list(self.hubs))
        if not count:
            self._screen.flash("No file transfer is running.")
        return count

    def _changed(self, transfer: Transfer) -> None:
        if not transfer.running:
            self._screen.flash(banner_line(transfer) + where(transfer))
            self._draw()
            return
        now = self._clock()
        if now - self._last_draw >= REDRAW_INTERVAL:
            self._draw()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(
                REDRAW_INTERVAL - (now - self._last_draw), self._draw)

    def _draw(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._last_draw = self._clock()
        self._screen.set_activity(self.activity())

    def activity(self) -> str:
        """The banner's transfer line ("" when nothing moves)."""
        running = self.running()
        if not running:
            return ""
        text = banner_line(running[0])
        if len(running) > 1:
            text += f" (+{len(running) - 1} more)"
        return f"{text} -- Ctrl-] x cancels"

    def panel(self) -> list[str]:
        """Ctrl-] f: where files go, what moved, where the record is."""
        lines = ["consentry: file transfers", ""]
        if not self.hubs:
            lines.append("  No session is running.")
        for hub in self.hubs:
            lines.append(f"  Files engineers send you go to: {printable(hub.roots.incoming, 200)}")
            if hub.roots.shared is not None:
                lines.append("  Engineers may copy from (read-only, as /shared): "
                             f"{printable(hub.roots.shared, 200)}")
            else:
                lines.append("  Engineers may copy only files in that folder (nothing else "
                             "on this computer).")
            limits = hub.limits
            lines.append(f"  Limits: {format_size(limits.max_file_bytes)} per file, "
                         f"{format_size(limits.max_session_bytes)} per session "
                         f"({format_size(hub.session_bytes)} moved so far).")
            moved = [*hub.finished, *hub.running]
            if moved:
                lines.append("")
                lines += [f"  {describe(t)}" for t in moved[-8:]]
            lines.append("")
        running = self.running()
        if running:
            lines.append(f"  Press x to cancel the {len(running)} running transfer(s).")
        if self.hubs:
            lines.append("  Press w to stop file transfer for this session (the engineers "
                         "keep watching, and typing if you allowed it).")
        lines.append(f"  The record of every file is kept in "
                     f"{printable(self._state_dir / RECORD_FILE, 200)}")
        lines.append("  (consentry-agent transfers prints it). Press any key to go back.")
        return lines

