"""The agent is a full-screen program for a person: started without a
terminal it says so in one line, with the usage exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AGENT = Path(sys.executable).parent / "consentry-agent"


def test_input_not_a_terminal_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(AGENT), "--state-dir", str(tmp_path / "state"), "--broker", "wss://127.0.0.1:9"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("consentry-agent: ") and "terminal" in lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "state").exists()  # nothing done before it could be used
