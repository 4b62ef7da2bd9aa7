"""The agent's state directory and its secrets stay private whatever the
umask: ~/.local/state made by the agent is 0700, never 0777."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.identity import load_identity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)  # the careless setting the issue found
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("open_umask")
def test_state_dirs_are_private_under_umask_000(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    state = home / ".local" / "state" / "consentry-agent"
    load_identity(state)
    for made in (home / ".local", home / ".local" / "state", state):
        assert _mode(made) == 0o700, made
    for secret in ("device.key", "device.id"):
        assert _mode(state / secret) == 0o600
    assert not [p.name for p in state.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.usefixtures("open_umask")
def test_an_existing_open_state_dir_is_closed_again(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(0o777)
    load_identity(state)
    assert _mode(state) == 0o700
