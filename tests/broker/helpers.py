"""Helpers shared by the broker's tests."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def raw(tmp_path: Path) -> sqlite3.Connection:
    """The audit database opened directly, as an attacker or a bug would."""
    return sqlite3.connect(tmp_path / "audit.db", isolation_level=None)


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`consentry-broker ARGS --data-dir data` in `cwd`, as a subprocess.
    stdin from /dev/null: not a terminal, as under cron or a script."""
    return subprocess.run([sys.executable, "-m", "broker", *args, "--data-dir", "data"],
                          cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
                          stdin=subprocess.DEVNULL)


# Runs a test that takes the `log` fixture on each audit backend: the
# embedded SQLite log and the cluster's PostgreSQL one (tests/conftest.py
# starts the server the first time a test needs it).
BACKENDS = ("sqlite", "postgresql")
both_backends = pytest.mark.parametrize("log", BACKENDS, indirect=True)
