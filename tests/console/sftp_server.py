"""A real asyncssh SFTP server on 127.0.0.1:0 for the console's file tests,
standing in for the agent's (which has its own policy and tests): rooted in
a folder, or refusing the subsystem (no files right), or failing writes as
a full disk does."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import asyncssh

_HOST_KEY = asyncssh.generate_private_key("ssh-ed25519")


class _Open(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # the real session's authentication is not under test here


class _Policy(asyncssh.SFTPServer):
    """Refuses any path with "secret" in it, as the agent refuses a path
    outside what the customer shares."""

    def _refuse(self, path: bytes) -> None:
        if b"secret" in path:
            raise asyncssh.SFTPPermissionDenied("not shared by the customer \x1b[31m")

    def stat(self, path: bytes) -> os.stat_result | asyncssh.SFTPAttrs:
        self._refuse(path)
        result = super().stat(path)
        assert not isinstance(result, Awaitable)
        return result

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        self._refuse(path)
        return super().open(path, pflags, attrs)


class _DiskFull(_Policy):
    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        raise asyncssh.SFTPFailure("No space left on device")


@contextlib.asynccontextmanager
async def sftp_server(root: Path | None, *, disk_full: bool = False
                      ) -> AsyncIterator[asyncssh.SSHClientConnection]:
    """A client connection to a fresh server: SFTP rooted at `root`, or no
    SFTP at all when `root` is None (the agent without the files right)."""
    factory = None
    if root is not None:
        cls = _DiskFull if disk_full else _Policy
        chroot = bytes(root)
        factory = lambda chan: cls(chan, chroot=chroot)  # noqa: E731
    server = await asyncssh.listen("127.0.0.1", 0, server_host_keys=[_HOST_KEY],
                                   server_factory=_Open, sftp_factory=factory,
                                   allow_scp=False)
    port = server.sockets[0].getsockname()[1]
    try:
        conn = await asyncssh.connect("127.0.0.1", port, known_hosts=None, username="e",
                                      client_keys=None, agent_path=None)
        try:
            yield conn
        finally:
            conn.close()
            await conn.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
