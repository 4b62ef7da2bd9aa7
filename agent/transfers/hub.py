"""One session's file transfers: what is moving now, and what moved.

One `TransferHub` per running session, shared by all its engineers' SFTP
channels (beside the session's `SharedShell`). Each file an engineer opens
to write (upload) or to read (download) is one `Transfer`; when it ends —
the engineer closed it, the customer cancelled it, a limit or the disk
stopped it, the files right was withdrawn — `finish` runs exactly once: the
seat's gate is told (`on_file_transferred`: direction, bytes, outcome, never
the name), the customer's record gets its line, and the screen its update.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.sshd import Gate
from agent.transfers.disk import Roots
from agent.transfers.jail import CANCELLED, WITHDRAWN, Limits
from agent.transfers.record import Entry, TransferRecord

UPLOAD, DOWNLOAD = "upload", "download"
COMPLETE, CANCELLED_OUTCOME, REFUSED, FAILED = "complete", "cancelled", "refused", "failed"
# Refused attempts reported (to the record and the broker) per session: an
# engineer's client probing paths cannot flood either; past this they are
# still refused, just not recorded one by one.
MAX_REFUSALS_REPORTED = 20
# Finished transfers kept for the customer's files panel.
MAX_KEPT = 20


@dataclass(eq=False)
class Transfer:
    engineer: str  # display name, as the network gave it (escaped when shown)
    login: str
    direction: str
    name: str  # the engineer's view of it, from checked names only
    size: int  # downloads: the file's size; uploads: as far as written
    gate: Gate
    local_path: str = ""
    moved: int = 0
    outcome: str | None = None
    reason: str = ""
    # Set when the customer (or the withdrawn right) stops it; the SFTP
    # server then fails further reads and writes with this sentence.
    stopped: str | None = None
    # The SFTP server's clean-up when the transfer is stopped from outside
    # (close the file, remove a partial upload).
    on_stop: Callable[[], None] = lambda: None
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.outcome is None

    @property
    def percent(self) -> int | None:
        if self.direction == DOWNLOAD and self.size > 0:
            return min(100, self.moved * 100 // self.size)
        return None


class TransferHub:
    """One session's transfers, shared by its seats."""

    def __init__(self, session: str, roots: Roots, limits: Limits,
                 record: TransferRecord | None = None,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.session = session
        self.roots = roots
        self.limits = limits
        self.record = record
        self._now = now
        self.session_bytes = 0
        self.running: list[Transfer] = []
        self.finished: deque[Transfer] = deque(maxlen=MAX_KEPT)
        self.refusals = 0
        # Told of every change (start, progress, end): the customer's screen.
        self.listeners: list[Callable[[Transfer], None]] = []

    def start(self, transfer: Transfer) -> Transfer:
        self.running.append(transfer)
        self._tell(transfer)
        return transfer

    def moved(self, transfer: Transfer, count: int, size: int | None = None) -> None:
        transfer.moved += count
        self.session_bytes += count
        if size is not None:
            transfer.size = max(transfer.size, size)
        self._tell(transfer)

    def finish(self, transfer: Transfer, outcome: str, reason: str = "") -> None:
        """The transfer's end, once (later calls change nothing)."""
        if not transfer.running:
            return
        transfer.outcome = outcome
        transfer.reason = reason
        if transfer in self.running:
            self.running.remove(transfer)
        self.finished.append(transfer)
        if self.record is not None:
            self.record.add(Entry(
                time=self._now().isoformat(timespec="seconds"), session=self.session,
                engineer=transfer.engineer, login=transfer.login,
                direction=transfer.direction, name=transfer.name, bytes=transfer.moved,
                outcome=outcome, reason=reason, local_path=transfer.local_path,
            ))
        transfer.gate.on_file_transferred(transfer.direction, transfer.moved, outcome)
        self._tell(transfer)

    def refused(self, transfer: Transfer, reason: str) -> None:
        """An open the policy refused, reported as a transfer of no bytes
        (up to `MAX_REFUSALS_REPORTED` a session)."""
        self.refusals += 1
        if self.refusals > MAX_REFUSALS_REPORTED:
            return
        self.running.append(transfer)
        self.finish(transfer, REFUSED, reason)

    def stop(self, transfer: Transfer, reason: str) -> None:
        """Stop a running transfer from outside: the engineer's next read or
        write fails with `reason`."""
        if not transfer.running or transfer.stopped is not None:
            return
        transfer.stopped = reason
        transfer.on_stop()
        self.finish(transfer, CANCELLED_OUTCOME, reason)

    def cancel_all(self) -> int:
        """The customer's cancel: every running transfer stops. How many did."""
        running = list(self.running)
        for transfer in running:
            self.stop(transfer, CANCELLED)
        return len(running)

    def withdraw(self, gate: Gate) -> None:
        """The files right of `gate`'s seat is gone: its transfers stop."""
        for transfer in [t for t in self.running if t.gate is gate]:
            self.stop(transfer, WITHDRAWN)

    def _tell(self, transfer: Transfer) -> None:
        for listener in list(self.listeners):
            listener(transfer)
