"""`serve --checkpoint-command`: checkpoint lines on a real command's stdin,
a command that dies restarted, a stuck one never holding up the log."""

from __future__ import annotations

from pathlib import Path

import nacl.signing

from broker.audit.checkpoint_record import Checkpoint, make_checkpoint
from broker.audit.shipping import CheckpointShipper

from .test_audit_integrity import wait_for

KEY = nacl.signing.SigningKey.generate()


def checkpoint(seq: int) -> Checkpoint:
    return make_checkpoint(KEY, seq=seq, hash="b" * 64, time="2026-01-01T00:00:00Z",
                           prev="0" * 64)


async def test_lines_reach_the_command(tmp_path: Path) -> None:
    out = tmp_path / "cp.jsonl"
    shipper = CheckpointShipper(f"cat >> '{out}'")
    shipper.start()
    try:
        for seq in range(3):
            shipper.offer(checkpoint(seq))
    finally:
        await shipper.stop()
    assert out.read_bytes() == b"".join(checkpoint(s).line() for s in range(3))


async def test_a_command_that_exits_is_restarted(tmp_path: Path) -> None:
    out = tmp_path / "cp.jsonl"
    # Takes one line (sh reads a pipe byte by byte, so no more) and exits:
    # every further line needs a new process.
    shipper = CheckpointShipper(f"read -r line && printf '%s\\n' \"$line\" >> '{out}'")
    shipper.start()
    try:
        shipper.offer(checkpoint(1))
        await wait_for(lambda: out.exists() and out.read_text().count("\n") == 1, "line 1")
        await wait_for(lambda: shipper._proc is None, "the command to exit")
        shipper.offer(checkpoint(2))
        await wait_for(lambda: out.read_text().count("\n") == 2, "line 2, after a restart")
    finally:
        await shipper.stop()
    assert [checkpoint(1).line(), checkpoint(2).line()] == [
        line + b"\n" for line in out.read_bytes().splitlines()[:2]]


def test_a_full_queue_drops_the_oldest_and_never_blocks() -> None:
    shipper = CheckpointShipper("true", queue_lines=2)  # never started: nothing reads
    for seq in range(5):
        shipper.offer(checkpoint(seq))
    assert shipper.dropped == 3
    assert list(shipper._queue) == [checkpoint(3).line(), checkpoint(4).line()]
