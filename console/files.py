"""File transfer, the engineer's side: SFTP on a new channel of the
session's own end-to-end SSH connection. No UI in here: the plain
terminal's prompt (`console.files_prompt`) and the TUI's files pane share it.

What the agent sends (names, error messages) is untrusted network text:
`RemoteEntry.display` and every error's text are escaped with `printable`;
`RemoteEntry.name` is the raw name, for sending back to the agent only.

Local files are never clobbered and never left half written under their
final name: a download goes to a hidden temporary file beside the target
(mode 0600: it is the customer's data) and is hard-linked to the final name
only once complete, which fails, rather than overwrites, if that name
appeared meanwhile. An upload refuses to replace a file on the customer's
computer (SFTP exclusive create) and removes what it wrote if it did not
finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import posixpath
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from broker.wire.text import printable
from console.errors import ConsoleError

# Bytes asked for or sent per SFTP request (asyncssh's own default block).
CHUNK = 64 * 1024
# Entries of one remote folder shown at most: a folder with more is cut,
# and said to be, rather than held in memory without bound.
MAX_LISTING = 5000
# How the engineer gets the right: asked for when joining (`--files`, the
# TUI's files switch) or later in the session, as control is.
ASK_HINT = "Ctrl-] f in a plain join, or the files pane's Ask button, asks the customer for it"

ProgressFn = Callable[[int, int], None]  # (bytes done, bytes in all)


class TransferError(ConsoleError):
    """A transfer or listing that did not happen; the text is for the engineer."""


class NoFilesRight(TransferError):
    """The agent refused the SFTP subsystem: no `files` right in this session."""


class RemoteRefused(TransferError):
    """The customer's computer refused a path (permission, no such file)."""


class RemoteWriteFailed(TransferError):
    """The customer's computer could not store an upload (often: its disk is full)."""


class LocalDiskFull(TransferError):
    """The engineer's own disk (or quota) is full."""


class LocalError(TransferError):
    """A local file could not be read or written (exists, permission...)."""


NO_RIGHT_TEXT = f"The customer has not allowed file transfer in this session ({ASK_HINT})."


def shown(name: str, max_len: int = 200) -> str:
    """A remote name or message, escaped for any screen."""
    return printable(name, max_len)


@dataclass(frozen=True)
class RemoteEntry:
    name: str  # raw, as the agent sent it: only ever sent back to it
    size: int
    is_dir: bool

    @property
    def display(self) -> str:
        return shown(self.name, 120)


def local_error(exc: OSError, what: str) -> TransferError:
    """The engineer's own file system failed: disk full is said as such."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return LocalDiskFull(f"Your own disk is full: {what} could not be written "
                             "(nothing was left under that name). Free some space and "
                             "try again.")
    reason = exc.strerror or str(exc)
    return LocalError(f"{what}: {reason}.")


def remote_error(exc: asyncssh.SFTPError, path: str, *, writing: bool = False) -> TransferError:
    """The agent's SFTP answer, in words; its own message is shown escaped."""
    name = shown(path, 120)
    reason = shown(exc.reason or "", 200)
    if isinstance(exc, asyncssh.SFTPNoSuchFile):
        return RemoteRefused(f"No such file or folder on the customer's computer: {name}"
                             + (f" ({reason})." if reason else "."))
    if isinstance(exc, asyncssh.SFTPPermissionDenied):
        return RemoteRefused(f"The customer's computer refused {name}"
                             + (f": {reason}." if reason else "."))
    if writing and isinstance(exc, asyncssh.SFTPFailure):
        return RemoteWriteFailed(
            f"The customer's computer could not store {name} (its disk may be full)"
            + (f": {reason}." if reason else ".") + " Nothing was kept there.")
    return RemoteRefused(f"The customer's computer could not do that with {name}"
                         + (f": {reason}." if reason else "."))


def _lost(exc: BaseException) -> TransferError:
    return TransferError("The session's connection closed during the transfer; nothing was "
                         "kept under the file's name.")


def safe_basename(remote: str) -> str:
    """The last part of a remote path, as a local file name, or an error:
    the agent's name must not climb out of the folder or hide escapes."""
    base = posixpath.basename(remote.rstrip("/"))
    if base in ("", ".", "..") or printable(base, 255) != base or "\\" in base:
        raise LocalError(f"Give a local name for {shown(remote, 120)}: it cannot be used "
                         "as a file name here.")
    return base


def download_target(remote: str, local: Path) -> Path:
    """Where a download of `remote` goes: `local`, or the remote name inside
    it when it is a folder; refused if something is already there."""
    target = local / safe_basename(remote) if local.is_dir() else local
    if os.path.lexists(target):
        raise LocalError(f"{target} already exists; it was left as it is. Give another "
                         "name, or move it away first.")
    return target


class FileTransfers:
    """SFTP over a session's SSH connection, opened on first use.

    Each coroutine may be cancelled (the engineer pressed cancel): the
    transfer stops, its partial file is removed, and CancelledError goes on."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> asyncssh.SFTPClient:
        async with self._lock:
            if self._sftp is None:
                try:
                    self._sftp = await self._conn.start_sftp_client()
                except asyncssh.ChannelOpenError as exc:
                    raise NoFilesRight(NO_RIGHT_TEXT) from exc
                except (asyncssh.Error, OSError) as exc:
                    raise _lost(exc) from exc
            return self._sftp

    def forget(self) -> None:
        """Drop the SFTP channel (after the right was withdrawn, say): the
        next use opens a new one, and is refused if the right is gone."""
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.exit()

    async def close(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            sftp.exit()
            with contextlib.suppress(Exception):
                await sftp.wait_closed()

    async def home(self) -> str:
        """The folder the agent starts in (its transfer folder)."""
        sftp = await self._client()
        try:
            return await sftp.realpath(".")
        except asyncssh.SFTPError as exc:
            raise remote_error(exc, ".") from exc

    async def listdir(self, path: str = ".") -> tuple[list[RemoteEntry], bool]:
        """A remote folder: folders first, then files, by name; and whether
        it had more than `MAX_LISTING` entries (cut)."""
        sftp = await self._client()
        entries: list[RemoteEntry] = []
        cut = False
        try:
            async for item in sftp.scandir(path):
                name = item.filename if isinstance(item.filename, str) else \
                    item.filename.decode("utf-8", "replace")
                if name in (".", ".."):
                    continue
                if len(entries) >= MAX_LISTING:
                    cut = True
                    break
                mode = item.attrs.permissions or 0
                entries.append(RemoteEntry(name, item.attrs.size or 0, stat.S_ISDIR(mode)))
        except asyncssh.SFTPError as exc:
            raise remote_error(exc, path) from exc
        except (asyncssh.Error, OSError) as exc:
            raise _lost(exc) from exc
        entries.sort(key=lambda e: (not e.is_dir, e.name))
        return entries, cut

    async def download(self, remote: str, local: Path,
                       on_progress: ProgressFn = lambda _d, _t: None) -> Path:
        """Fetch `remote` to `local` (a folder: the remote name in it).
        Returns the file written. Never replaces an existing file."""
        target = download_target(remote, local)
        sftp = await self._client()
        try:
            attrs = await sftp.stat(remote)
        except asyncssh.SFTPError as exc:
            raise remote_error(exc, remote) from exc
        except (asyncssh.Error, OSError) as exc:
            raise _lost(exc) from exc
        if attrs.permissions is not None and not stat.S_ISREG(attrs.permissions):
            raise RemoteRefused(f"{shown(remote, 120)} is not a plain file on the customer's "
                                "computer (a folder or something special); nothing was fetched.")
        total = attrs.size or 0
        try:
            fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                            suffix=".part")
        except OSError as exc:
            raise local_error(exc, str(target)) from exc
        tmp = Path(tmp_name)
        done = 0
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    async with sftp.open(remote, "rb") as src:
                        on_progress(0, total)
                        while True:
                            block = await src.read(CHUNK, done)
                            assert isinstance(block, bytes)  # opened "rb"
                            if not block:
                                break
                            try:
                                out.write(block)
                            except OSError as exc:
                                raise local_error(exc, str(target)) from exc
                            done += len(block)
                            on_progress(done, max(total, done))
                except asyncssh.SFTPError as exc:
                    raise remote_error(exc, remote) from exc
                except (asyncssh.Error, ConnectionError) as exc:
                    raise _lost(exc) from exc
                try:
                    out.flush()
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise local_error(exc, str(target)) from exc
            try:
                os.link(tmp, target)  # atomic, and never over an existing file
            except FileExistsError as exc:
                raise LocalError(f"{target} appeared while the file was fetched; it was left "
                                 "as it is and nothing was kept.") from exc
            except OSError as exc:
                raise local_error(exc, str(target)) from exc
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        return target

    async def upload(self, local: Path, remote: str,
                     on_progress: ProgressFn = lambda _d, _t: None) -> str:
        """Send `local` to `remote` (a folder, or ending in "/": the local
        name in it). Returns the remote path written. Never replaces a file
        on the customer's computer, and removes a partial one."""
        try:
            src = local.open("rb")
        except OSError as exc:
            raise local_error(exc, str(local)) from exc
        with src:
            try:
                st = os.fstat(src.fileno())
            except OSError as exc:
                raise local_error(exc, str(local)) from exc
            if not stat.S_ISREG(st.st_mode):
                raise LocalError(f"{local} is not a plain file; only files can be sent.")
            total = st.st_size
            sftp = await self._client()
            try:
                if remote.endswith("/") or remote in ("", ".") or await sftp.isdir(remote):
                    remote = posixpath.join(remote or ".", local.name)
            except asyncssh.SFTPError as exc:
                raise remote_error(exc, remote) from exc
            except (asyncssh.Error, OSError) as exc:
                raise _lost(exc) from exc
            try:
                dst = await sftp.open(remote, "xb")
            except asyncssh.SFTPFailure as exc:
                if await _exists(sftp, remote):
                    raise RemoteRefused(f"{shown(remote, 120)} already exists on the "
                                        "customer's computer; it was left as it is. Give "
                                        "another name.") from exc
                raise remote_error(exc, remote, writing=True) from exc
            except asyncssh.SFTPError as exc:
                raise remote_error(exc, remote) from exc
            except (asyncssh.Error, OSError) as exc:
                raise _lost(exc) from exc
            done = 0
            complete = False
            try:
                on_progress(0, total)
                while True:
                    try:
                        block = src.read(CHUNK)
                    except OSError as exc:
                        raise local_error(exc, str(local)) from exc
                    if not block:
                        break
                    await dst.write(block, done)
                    done += len(block)
                    on_progress(done, max(total, done))
                await dst.close()
                complete = True
            except asyncssh.SFTPError as exc:
                raise remote_error(exc, remote, writing=True) from exc
            except (asyncssh.Error, ConnectionError) as exc:
                raise _lost(exc) from exc
            finally:
                if not complete:
                    with contextlib.suppress(Exception):
                        await dst.close()
                    # Not a half file left under the name the customer sees.
                    with contextlib.suppress(Exception):
                        await asyncio.shield(sftp.remove(remote))
        return remote


async def _exists(sftp: asyncssh.SFTPClient, path: str) -> bool:
    try:
        await sftp.lstat(path)
    except (asyncssh.Error, OSError):
        return False
    return True
