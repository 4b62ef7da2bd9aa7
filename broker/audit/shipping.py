"""`serve --checkpoint-command CMD`: every checkpoint line also goes to the
stdin of one long-running command — `logger -t consentry` (remote syslog),
`ssh host 'cat >> cp.jsonl'` (an append-only store) — a witness outside this
machine, which `audit verify --witness` and `serve --witness` then read.

What happens when the command misbehaves (decided so appends never wait):

* lines wait in a bounded queue (`QUEUE_LINES`); the checkpointer only
  queues, it never waits for the command;
* the queue full (the command slow, dead or stuck): the *oldest* lines are
  dropped and counted in the operational log — the newest checkpoint covers
  everything before it, so it is the one worth keeping;
* the command exits, or cannot be started: an error is logged and it is
  started again after 1 s, doubling to `MAX_RESTART_DELAY`; a line whose
  write failed is sent again (a witness may hold a line twice), but lines
  already in the pipe when the command exited are lost with it — the next
  checkpoint covers what they covered;
* the command stops reading for `STALL_SECONDS`: it is killed and restarted
  as if it had died;
* at shutdown the queue gets `STOP_SECONDS` to drain, then stdin is closed and
  the command is given the same time to exit before it is killed.

The command runs through ``/bin/sh -c``, its stdout discarded and its stderr
the broker's own (so its complaints land in the operational log).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging

from broker.audit.checkpoint_record import Checkpoint

__all__ = ["CheckpointShipper"]

# ~300 bytes a line: about 300 KiB held at most, hours of checkpoints.
QUEUE_LINES = 1024
STALL_SECONDS = 30.0
MAX_RESTART_DELAY = 60.0
STOP_SECONDS = 5.0

log = logging.getLogger("consentry.audit.shipping")


class CheckpointShipper:
    """Feeds checkpoint lines to one command; `offer` is the checkpointer's listener."""

    def __init__(self, command: str, *, queue_lines: int = QUEUE_LINES,
                 stall_seconds: float = STALL_SECONDS,
                 max_restart_delay: float = MAX_RESTART_DELAY) -> None:
        self.command = command
        self._queue: collections.deque[bytes] = collections.deque(maxlen=queue_lines)
        self._stall = stall_seconds
        self._max_delay = max_restart_delay
        self._ready = asyncio.Event()
        self._drained = asyncio.Event()  # set whenever the queue empties
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self.dropped = 0
        self.sent = 0

    def offer(self, checkpoint: Checkpoint) -> None:
        """Queue one line; never blocks (the oldest line goes if the queue is full)."""
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
            log.error("checkpoint command is not keeping up: dropped the oldest queued "
                      "checkpoint line (%d dropped so far)", self.dropped)
        self._queue.append(checkpoint.line())
        self._drained.clear()
        self._ready.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="checkpoint-command")

    async def stop(self, timeout: float = STOP_SECONDS) -> None:
        """Give the queue `timeout` to drain, then close stdin and end the command."""
        task, self._task = self._task, None
        if task is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), timeout)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        proc, self._proc = self._proc, None
        if proc is not None:
            await _end(proc, timeout)

    async def _run(self) -> None:
        delay = 1.0
        while True:
            try:
                proc = self._proc = await asyncio.create_subprocess_shell(
                    self.command, stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.DEVNULL)
            except OSError as exc:
                log.error("cannot start the checkpoint command: %s; retrying in %.0f s",
                          exc, delay)
            else:
                sent = self.sent
                await self._feed(proc)
                if self.sent > sent:
                    delay = 1.0  # it worked for a while: restart soon
                if proc.returncode is None:
                    proc.kill()
                code = await proc.wait()
                self._proc = None
                log.error("the checkpoint command stopped (exit status %s); restarting it "
                          "in %.0f s, %d line(s) waiting", code, delay, len(self._queue))
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._max_delay)

    async def _feed(self, proc: asyncio.subprocess.Process) -> None:
        """Write queued lines until the command dies or stalls."""
        assert proc.stdin is not None
        while True:
            while not self._queue:
                self._ready.clear()
                waiter = asyncio.ensure_future(self._ready.wait())
                exited = asyncio.ensure_future(proc.wait())
                await asyncio.wait([waiter, exited], return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                exited.cancel()
                if proc.returncode is not None:
                    return
            line = self._queue[0]
            try:
                proc.stdin.write(line)
                await asyncio.wait_for(proc.stdin.drain(), self._stall)
            except TimeoutError:
                log.error("the checkpoint command has not read its input for %.0f s; "
                          "killing it", self._stall)
                return
            except (ConnectionError, OSError):
                return  # it died; the line stays queued for the next one
            if self._queue and self._queue[0] is line:
                self._queue.popleft()
            if not self._queue:
                self._drained.set()
            self.sent += 1


async def _end(proc: asyncio.subprocess.Process, timeout: float) -> None:
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    try:
        await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
