"""The customer's local record of transfers, and `consentry-agent transfers`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.__main__ import main
from agent.transfers.record import RECORD_FILE, Entry, TransferRecord


def test_the_record_is_private_and_printed_readably(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = TransferRecord(tmp_path / RECORD_FILE)
    record.add(Entry(time="2026-12-02T20:00:00+00:00", session="s1", engineer="Alice",
                     login="alice", direction="upload", name="/fix\x1b[2J.sh", bytes=1200,
                     outcome="complete", local_path="/home/c/consentry-transfers/s1/fix.sh"))
    assert stat.S_IMODE((tmp_path / RECORD_FILE).stat().st_mode) == 0o600
    assert main(["transfers", "--state-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Alice sent to this computer: /fix\\x1b[2J.sh (1.2 KB) - complete" in out
    assert "\x1b" not in out
