"""The console's transfer client against a real SFTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from pathlib import Path

import pytest

from console.files import (
    FileTransfers,
    LocalDiskFull,
    LocalError,
    NoFilesRight,
    RemoteRefused,
    RemoteWriteFailed,
    local_error,
    safe_basename,
)
from tests.console.sftp_server import sftp_server


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


async def test_download_and_upload_arrive_byte_identical(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    (remote / "app.log").write_bytes(os.urandom(300_000))
    (local / "fix.patch").write_bytes(os.urandom(200_001))
    async with sftp_server(remote) as conn:
        files = FileTransfers(conn)
        seen: list[tuple[int, int]] = []
        got = await files.download("app.log", local, lambda d, t: seen.append((d, t)))
        assert got == local / "app.log" and sha(got) == sha(remote / "app.log")
        assert seen[0] == (0, 300_000) and seen[-1] == (300_000, 300_000)
        assert oct(got.stat().st_mode & 0o777) == "0o600"  # the customer's data
        sent = await files.upload(local / "fix.patch", "/")
        assert sent == "/fix.patch" and sha(remote / "fix.patch") == sha(local / "fix.patch")
        entries, cut = await files.listdir("/")
        assert [(e.name, e.size) for e in entries] == [("app.log", 300_000),
                                                       ("fix.patch", 200_001)]
        assert not cut
        await files.close()
    assert tree(local) == ["app.log", "fix.patch"]  # no temporary file left


async def test_listing_escapes_names_and_puts_folders_first(tmp_path: Path) -> None:
    (tmp_path / "zlogs").mkdir()
    (tmp_path / "a\x1b[2Jevil").write_bytes(b"x")
    async with sftp_server(tmp_path) as conn:
        entries, _ = await FileTransfers(conn).listdir(".")
    assert [e.is_dir for e in entries] == [True, False]
    assert entries[1].name == "a\x1b[2Jevil"
    assert "\x1b" not in entries[1].display and "evil" in entries[1].display


async def test_without_the_files_right_the_engineer_is_told_to_ask(tmp_path: Path) -> None:
    async with sftp_server(None) as conn:
        with pytest.raises(NoFilesRight, match="has not allowed file transfer"):
            await FileTransfers(conn).listdir(".")


async def test_refused_and_missing_paths_are_explained(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    async with sftp_server(tmp_path) as conn:
        files = FileTransfers(conn)
        with pytest.raises(RemoteRefused, match="No such file") as missing:
            await files.download("nope\x1b]0;x\x07.log", tmp_path / "out")
        assert "\x1b" not in str(missing.value) and "\x07" not in str(missing.value)
        with pytest.raises(RemoteRefused, match="refused secret: not shared") as refused:
            await files.download("secret", tmp_path / "out")
        assert "\x1b" not in str(refused.value)  # the agent's message, escaped
    assert not (tmp_path / "out").exists()


async def test_customer_disk_full_is_not_the_engineers(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    patch = tmp_path / "fix.patch"
    patch.write_bytes(b"p" * 100_000)
    async with sftp_server(remote, disk_full=True) as conn:
        with pytest.raises(RemoteWriteFailed, match="customer's computer could not store"):
            await FileTransfers(conn).upload(patch, "fix.patch")
    assert tree(remote) == []  # the partial upload was removed
    mine = local_error(OSError(errno.ENOSPC, "No space left on device"), "/tmp/x")
    assert isinstance(mine, LocalDiskFull) and str(mine).startswith("Your own disk is full")


async def test_nothing_is_clobbered_on_either_side(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    (remote / "app.log").write_bytes(b"new")
    (remote / "fix.patch").write_bytes(b"theirs")
    (local / "app.log").write_bytes(b"mine")
    (local / "fix.patch").write_bytes(b"patch")
    async with sftp_server(remote) as conn:
        files = FileTransfers(conn)
        with pytest.raises(LocalError, match="already exists"):
            await files.download("app.log", local)
        with pytest.raises(RemoteRefused, match="already exists"):
            await files.upload(local / "fix.patch", ".")
    assert (local / "app.log").read_bytes() == b"mine"
    assert (remote / "fix.patch").read_bytes() == b"theirs"


async def test_a_cancelled_download_leaves_no_file(tmp_path: Path) -> None:
    remote, local = tmp_path / "remote", tmp_path / "local"
    remote.mkdir()
    local.mkdir()
    (remote / "big.log").write_bytes(os.urandom(8_000_000))
    async with sftp_server(remote) as conn:
        files = FileTransfers(conn)
        started = asyncio.Event()

        def progress(done: int, _total: int) -> None:
            if done > 0:
                started.set()

        task = asyncio.create_task(files.download("big.log", local, progress))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert tree(local) == []
        # and the channel still works afterwards
        await files.download("big.log", local)
    assert sha(local / "big.log") == sha(remote / "big.log")


def test_remote_names_cannot_climb_out_or_hide_escapes() -> None:
    assert safe_basename("/var/log/app.log") == "app.log"
    for bad in ("..", "logs/..", "a\x1bb", "/", "a\\b"):
        with pytest.raises(LocalError):
            safe_basename(bad)
