"""The agent's SFTP server over real asyncssh on a socket pair, through
serve_shell: the policy holds against a real client."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from agent.sshd import Gate, Services, serve_shell
from agent.transfers.hub import TransferHub
from agent.transfers.jail import CANCELLED, WITHDRAWN, Limits
from agent.transfers.record import RECORD_FILE, read_record
from agent.transfers.server import Engineer
from agent.transfers.session import session_hub, sftp_factory


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.incoming = tmp / "transfers"
        self.share = tmp / "share"
        self.share.mkdir()
        self.state = tmp / "state"
        self.state.mkdir()
        self.outside = tmp / "outside"
        self.outside.mkdir()
        (self.outside / "secret").write_bytes(b"not for the engineer")
        self.moved: list[tuple[str, int, str]] = []


@pytest.fixture
async def sftp(tmp_path: Path) -> AsyncIterator[tuple[asyncssh.SFTPClient, Setup, Gate,
                                                      TransferHub]]:
    setup = Setup(tmp_path)
    hub = session_hub("s1", transfers_dir=setup.incoming, share=setup.share,
                      limits=Limits(max_file_bytes=8 * 1024 * 1024,
                                    max_session_bytes=20 * 1024 * 1024),
                      state_dir=setup.state)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = asyncssh.generate_private_key("ssh-ed25519")
    gate = Gate(control=False, files=True,
                on_file_transferred=lambda d, n, o: setup.moved.append((d, n, o)))
    services = Services(sftp=sftp_factory(hub, Engineer("Alice", "alice")))
    ours, theirs = socket.socketpair()
    server_task = asyncio.create_task(serve_shell(
        ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
        shell="/bin/sh", gate=gate, services=services))
    conn = await asyncssh.connect(
        sock=theirs, host="consentry-agent", username="alice", client_keys=[engineer],
        agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
        preferred_auth="publickey")
    server = await server_task
    client = await conn.start_sftp_client()
    try:
        yield client, setup, gate, hub
    finally:
        client.exit()
        conn.close()
        server.close()
        ours.close()
        theirs.close()


async def test_upload_and_download_arrive_byte_identical_and_never_executable(
        sftp: tuple, tmp_path: Path) -> None:
    client, setup, _gate, hub = sftp
    patch = os.urandom(300_000)
    local = tmp_path / "fix.sh"
    local.write_bytes(patch)
    local.chmod(0o755)
    await client.put(str(local), "fix.sh")
    landed = setup.incoming / "s1" / "fix.sh"
    assert landed.read_bytes() == patch
    assert stat.S_IMODE(landed.stat().st_mode) & 0o111 == 0
    assert stat.S_IMODE((setup.incoming / "s1").stat().st_mode) == 0o700
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="never made executable"):
        await client.chmod("fix.sh", 0o755)

    log = os.urandom(200_000)
    (setup.share / "app.log").write_bytes(log)
    fetched = tmp_path / "app.log"
    await client.get("/shared/app.log", str(fetched))
    assert fetched.read_bytes() == log
    assert setup.moved == [("upload", len(patch), "complete"),
                           ("download", len(log), "complete")]
    record = read_record(setup.state / RECORD_FILE)
    assert [(e["direction"], e["name"], e["outcome"]) for e in record] == [
        ("upload", "/fix.sh", "complete"), ("download", "/shared/app.log", "complete")]
    assert stat.S_IMODE((setup.state / RECORD_FILE).stat().st_mode) == 0o600
    assert hub.session_bytes == len(patch) + len(log)


async def test_escapes_are_refused(sftp: tuple, tmp_path: Path) -> None:
    client, setup, _gate, _hub = sftp
    incoming = setup.incoming / "s1"
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="would leave the transfer folder"):
        await client.get("../../outside/secret", str(tmp_path / "x"))
    with pytest.raises(asyncssh.SFTPNoSuchFile):
        await client.get(str(setup.outside / "secret"), str(tmp_path / "x"))
    os.symlink(setup.outside / "secret", incoming / "link")
    os.symlink(setup.outside, setup.share / "dirlink")
    for path in ("link", "/shared/dirlink/secret"):
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="leads outside"):
            await client.get(path, str(tmp_path / "x"))
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="links cannot be created"):
        await client.symlink("/etc/passwd", "mine")
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="read-only"):
        await client.put(__file__, "/shared/planted.py")
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="moved out"):
        await client.rename("/shared", "/elsewhere")
    os.mkfifo(incoming / "pipe")
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="not a regular file"):
        await client.get("pipe", str(tmp_path / "x"))
    with pytest.raises(asyncssh.SFTPPermissionDenied, match="control characters"):
        await client.put(__file__, "evil\x1b]0;x\x07.txt")
    assert not (tmp_path / "x").exists()
    names = await client.listdir("/")
    assert "shared" in names and "link" in names
    # Refused opens are reported (no name) as transfers that moved nothing.
    assert setup.moved and {(n, o) for _d, n, o in setup.moved} == {(0, "refused")}


async def test_the_customer_cancels_mid_transfer(sftp: tuple) -> None:
    client, setup, _gate, hub = sftp
    async with client.open("big.bin", "wb") as remote:
        await remote.write(b"x" * 65536)
        assert hub.running
        assert hub.cancel_all() == 1
        with pytest.raises(asyncssh.SFTPFailure, match=CANCELLED):
            await remote.write(b"y" * 65536)
    assert not (setup.incoming / "s1" / "big.bin").exists()  # the partial file went
    assert setup.moved == [("upload", 65536, "cancelled")]


async def test_withdrawing_the_files_right_stops_a_running_transfer(sftp: tuple) -> None:
    client, setup, gate, _hub = sftp
    (setup.share / "app.log").write_bytes(b"z" * 300_000)
    async with client.open("/shared/app.log", "rb") as remote:
        assert await remote.read(1000) == b"z" * 1000
        gate.files = False
        with pytest.raises(asyncssh.SFTPPermissionDenied, match=WITHDRAWN):
            await remote.read(1000)
    assert setup.moved == [("download", 1000, "cancelled")]


async def test_a_file_over_the_limit_is_refused(sftp: tuple, tmp_path: Path) -> None:
    client, setup, _gate, _hub = sftp
    big = tmp_path / "big"
    big.write_bytes(b"b" * (9 * 1024 * 1024))
    with pytest.raises(asyncssh.SFTPFailure, match="per file"):
        await client.put(str(big), "big")
    assert not (setup.incoming / "s1" / "big").exists()
    assert setup.moved[-1][2] == "refused"


async def test_the_customers_disk_full_is_said_as_such(
        sftp: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk cannot be made cheaply in a test; the write the server
    makes is the one place that meets it, so that write fails as a full
    disk does (ENOSPC), and everything above it is real."""
    client, setup, _gate, _hub = sftp
    patch = tmp_path / "fix.patch"
    patch.write_bytes(b"p" * 70_000)

    def full(_fd: int, _data: bytes, _offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)  # as agent.transfers.server calls it
    with pytest.raises(asyncssh.SFTPFailure, match="the customer's disk is full"):
        await client.put(str(patch), "fix.patch")
    assert setup.moved[-1][2] == "failed"
    assert not (setup.incoming / "s1" / "fix.patch").exists()  # no partial file left


async def test_a_connection_lost_mid_upload_is_a_failed_transfer(tmp_path: Path) -> None:
    setup = Setup(tmp_path)
    hub = session_hub("s1", transfers_dir=setup.incoming, share=None, limits=Limits(),
                      state_dir=setup.state)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    engineer = asyncssh.generate_private_key("ssh-ed25519")
    gate = Gate(control=False, files=True,
                on_file_transferred=lambda d, n, o: setup.moved.append((d, n, o)))
    ours, theirs = socket.socketpair()
    server_task = asyncio.create_task(serve_shell(
        ours, host_key=host_key, engineer_key=engineer.export_public_key().decode().strip(),
        shell="/bin/sh", gate=gate,
        services=Services(sftp=sftp_factory(hub, Engineer("Alice", "alice")))))
    conn = await asyncssh.connect(
        sock=theirs, host="consentry-agent", username="alice", client_keys=[engineer],
        agent_path=None, config=None, known_hosts=([host_key.convert_to_public()], [], []),
        preferred_auth="publickey")
    server = await server_task
    client = await conn.start_sftp_client()
    remote = await client.open("half.bin", "wb")
    await remote.write(b"h" * 1000)
    conn.abort()
    async with asyncio.timeout(10):
        while not setup.moved:
            await asyncio.sleep(0.05)
    assert setup.moved == [("upload", 1000, "failed")]
    assert not (setup.incoming / "s1" / "half.bin").exists()
    server.close()
    ours.close()
    theirs.close()
