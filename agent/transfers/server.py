"""The agent's SFTP server: asyncssh's SFTP protocol over the customer's
file-system policy (`agent.transfers.jail`, `agent.transfers.disk`).

asyncssh's own `chroot` maps paths but follows any link it finds, so every
request is mapped here instead and nothing of asyncssh's default local-file
handling is used. Each request first checks the seat's files right (it may
have been withdrawn since the channel opened); each open file is a transfer
of the session's `TransferHub`, and its reads and writes stop once the
customer cancels it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncssh
from asyncssh import (
    FX_FAILURE,
    FX_NO_SUCH_FILE,
    FX_OP_UNSUPPORTED,
    FX_PERMISSION_DENIED,
    FXF_APPEND,
    FXF_CREAT,
    FXF_EXCL,
    FXF_READ,
    FXF_TRUNC,
    FXF_WRITE,
    SFTPAttrs,
    SFTPError,
    SFTPName,
)
from asyncssh.channel import SSHServerChannel

from agent.sshd import Gate
from agent.transfers import disk
from agent.transfers.hub import (
    COMPLETE,
    DOWNLOAD,
    FAILED,
    REFUSED,
    UPLOAD,
    Transfer,
    TransferHub,
)
from agent.transfers.jail import (
    CANCELLED,
    DISK_FULL,
    INCOMING,
    NO_LINKS,
    NO_OWNER,
    RESERVED,
    SHARED_NAME,
    WITHDRAWN,
    Place,
    Refusal,
    check_permissions,
    check_size,
    locate,
    writable,
)

# One read answers at most this much (asyncssh's clients ask for 16-256 KiB).
MAX_READ = 256 * 1024
# The owner shown in long listings: not the customer's login name, which is
# theirs to share (see `--share-user`).
SHOWN_OWNER = "customer"


@dataclass(frozen=True)
class Engineer:
    display: str
    login: str


@dataclass(eq=False)
class OpenFile:
    """An SFTP file handle: the descriptor, where it is, and its transfer."""

    fd: int
    place: Place
    transfer: Transfer
    writable: bool
    created: bool
    append: bool

    def fileno(self) -> int:
        # asyncssh's sparse-ranges extension asks the handle for its descriptor.
        return self.fd

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        # ... and seeks it for the data ranges (SEEK_DATA / SEEK_HOLE).
        return os.lseek(self.fd, offset, whence)


@contextlib.contextmanager
def _answer() -> Iterator[None]:
    """The policy's refusals as SFTP status replies."""
    try:
        yield
    except Refusal as refusal:
        raise SFTPError(refusal.code, refusal.text) from None


class TransferServer(asyncssh.SFTPServer):
    """One engineer's SFTP channel to the session's transfer folder."""

    def __init__(self, chan: SSHServerChannel[bytes], gate: Gate, hub: TransferHub,
                 engineer: Engineer) -> None:
        super().__init__(chan)
        self._gate = gate
        self._hub = hub
        self._engineer = engineer
        self._open: set[OpenFile] = set()

    # -- checks ---------------------------------------------------------------

    def _right(self) -> None:
        if not self._gate.files:
            self._hub.withdraw(self._gate)
            raise Refusal(FX_PERMISSION_DENIED, WITHDRAWN)

    def _place(self, path: bytes) -> Place:
        self._right()
        place = locate(path, shared=self._hub.roots.shared is not None)
        return place

    def _live(self, handle: object) -> OpenFile:
        if not isinstance(handle, OpenFile):  # pragma: no cover - asyncssh passes ours
            raise Refusal(FX_FAILURE, "failed: not an open file")
        self._right()
        if handle.transfer.stopped is not None:
            raise Refusal(FX_FAILURE, handle.transfer.stopped)
        if not handle.transfer.running:
            raise Refusal(FX_FAILURE, handle.transfer.reason or "failed: the transfer ended")
        return handle

    def _transfer(self, direction: str, place: Place, size: int) -> Transfer:
        local = ""
        if direction == UPLOAD:
            local = os.path.join(self._hub.roots.incoming, *place.parts)
        return Transfer(self._engineer.display, self._engineer.login, direction,
                        place.virtual, size, self._gate, local_path=local)

    # -- files ------------------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: SFTPAttrs) -> object:
        with _answer():
            place = self._place(path)
            write = bool(pflags & (FXF_WRITE | FXF_APPEND))
            direction = UPLOAD if write else DOWNLOAD
            try:
                return self._open_file(place, pflags, write)
            except Refusal as refusal:
                if refusal.code != FX_NO_SUCH_FILE:
                    # A policy refusal is shown and recorded, as a transfer
                    # that moved nothing (the broker hears direction and outcome).
                    self._hub.refused(self._transfer(direction, place, 0), refusal.text)
                raise

    def _open_file(self, place: Place, pflags: int, write: bool) -> OpenFile:
        roots = self._hub.roots
        limits = self._hub.limits
        if write:
            if place.area == INCOMING and place.parts == (SHARED_NAME,) \
                    and roots.shared is not None:  # pragma: no cover - locate maps it
                raise Refusal(FX_PERMISSION_DENIED, RESERVED)
            opened = disk.open_write(
                roots, place, read=bool(pflags & FXF_READ), create=bool(pflags & FXF_CREAT),
                truncate=bool(pflags & FXF_TRUNC), exclusive=bool(pflags & FXF_EXCL),
                append=bool(pflags & FXF_APPEND))
            transfer = self._transfer(UPLOAD, place, opened.size if not pflags & FXF_TRUNC
                                      else 0)
            handle = OpenFile(opened.fd, place, transfer, True, opened.created,
                              bool(pflags & FXF_APPEND))
        else:
            fd, size = disk.open_read(roots, place)
            try:
                check_size(size, self._hub.session_bytes, limits)
            except Refusal:
                os.close(fd)
                raise
            transfer = self._transfer(DOWNLOAD, place, size)
            handle = OpenFile(fd, place, transfer, False, False, False)
        transfer.on_stop = lambda: self._release(handle, discard=True)
        self._open.add(handle)
        self._hub.start(transfer)
        return handle

    def _release(self, handle: OpenFile, *, discard: bool) -> None:
        """Close the descriptor (once); a partial upload of a file this
        transfer created is removed."""
        if handle.fd < 0:
            return
        if discard and handle.writable and handle.created:
            disk.discard(self._hub.roots, handle.place, handle.fd)
        with contextlib.suppress(OSError):
            os.close(handle.fd)
        handle.fd = -1
        self._open.discard(handle)

    def _fail(self, handle: OpenFile, outcome: str, reason: str) -> Refusal:
        self._release(handle, discard=True)
        self._hub.finish(handle.transfer, outcome, reason)
        return Refusal(FX_FAILURE, reason)

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        with _answer():
            handle = self._live(file_obj)
            data = os.pread(handle.fd, min(size, MAX_READ), offset)
            if handle.transfer.direction == DOWNLOAD and data:
                try:
                    check_size(0, self._hub.session_bytes + len(data), self._hub.limits)
                except Refusal as refusal:
                    raise self._fail(handle, REFUSED, refusal.text) from None
                self._hub.moved(handle.transfer, len(data))
            return data

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
        with _answer():
            handle = self._live(file_obj)
            if not handle.writable:
                raise Refusal(FX_PERMISSION_DENIED, "refused: the file was opened for reading")
            transfer = handle.transfer
            start = os.fstat(handle.fd).st_size if handle.append else offset
            end = start + len(data)
            try:
                check_size(end, self._hub.session_bytes + len(data), self._hub.limits)
            except Refusal as refusal:
                raise self._fail(handle, REFUSED, refusal.text) from None
            try:
                written = os.pwrite(handle.fd, data, offset)
            except OSError as exc:
                reason = disk.refusal_for(exc, handle.place).text
                raise self._fail(handle, FAILED, reason) from None
            if written < len(data):  # a short write on a regular file: the disk is full
                raise self._fail(handle, FAILED, DISK_FULL)
            self._hub.moved(transfer, written, size=end)
            return written

    def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, OpenFile):  # pragma: no cover
            return
        transfer = file_obj.transfer
        if transfer.running:
            if self.channel.is_closing():
                # The handle was left open when the connection went.
                self._fail(file_obj, FAILED, "failed: the engineer's connection closed")
                return
            if transfer.direction == DOWNLOAD and transfer.moved < transfer.size:
                self._release(file_obj, discard=False)
                self._hub.finish(transfer, "cancelled", "stopped by the engineer")
                return
            self._release(file_obj, discard=False)
            self._hub.finish(transfer, COMPLETE)
        self._release(file_obj, discard=False)

    def fstat(self, file_obj: object) -> os.stat_result:
        with _answer():
            handle = self._live(file_obj)
            return os.fstat(handle.fd)

    def fsetstat(self, file_obj: object, attrs: SFTPAttrs) -> None:
        with _answer():
            handle = self._live(file_obj)
            self._check_attrs(attrs)
            if not handle.writable:
                raise Refusal(FX_PERMISSION_DENIED, "refused: the file was opened for reading")
            if attrs.size is not None:
                check_size(attrs.size, self._hub.session_bytes, self._hub.limits)
                os.ftruncate(handle.fd, attrs.size)
            if attrs.atime is not None and attrs.mtime is not None:
                os.utime(handle.fd, (attrs.atime, attrs.mtime))

    def fsync(self, file_obj: object) -> None:
        with _answer():
            os.fsync(self._live(file_obj).fd)

    def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        with _answer():
            return os.statvfs(self._live(file_obj).fd)

    def open56(self, path: bytes, desired_access: int, flags: int,
               attrs: SFTPAttrs) -> object:  # pragma: no cover - the server speaks v3
        raise SFTPError(FX_OP_UNSUPPORTED, "SFTP version 3 only")

    # -- names and folders -------------------------------------------------------

    def _attrs_of(self, place: Place, *, follow: bool) -> os.stat_result:
        return disk.status(self._hub.roots, place, follow=follow)

    def stat(self, path: bytes) -> os.stat_result:
        with _answer():
            return self._attrs_of(self._place(path), follow=True)

    def lstat(self, path: bytes) -> os.stat_result:
        with _answer():
            return self._attrs_of(self._place(path), follow=False)

    def scandir(self, path: bytes) -> AsyncIterator[SFTPName]:
        # A plain function (asyncssh calls it without awaiting, at opendir):
        # a refused or missing folder fails the opendir itself.
        with _answer():
            place = self._place(path)
            entries = disk.listing(self._hub.roots, place)
            this = self._attrs_of(place, follow=True)
            shared = self._hub.roots.shared
            if place.area == INCOMING and not place.parts and shared is not None:
                entries = [(n, s) for n, s in entries if n != SHARED_NAME]
                entries.append((SHARED_NAME, os.stat(shared)))
        names = [SFTPName(b".", attrs=SFTPAttrs.from_local(this)),
                 SFTPName(b"..", attrs=SFTPAttrs.from_local(this))]
        names += [SFTPName(name.encode(), attrs=SFTPAttrs.from_local(st))
                  for name, st in entries]
        return _iterate(names)

    def format_user(self, uid: int | None) -> str:
        return SHOWN_OWNER

    def format_group(self, gid: int | None) -> str:
        return SHOWN_OWNER

    def mkdir(self, path: bytes, attrs: SFTPAttrs) -> None:
        with _answer():
            disk.make_folder(self._hub.roots, self._place(path))

    def rmdir(self, path: bytes) -> None:
        with _answer():
            disk.remove(self._hub.roots, self._place(path), folder=True)

    def remove(self, path: bytes) -> None:
        with _answer():
            disk.remove(self._hub.roots, self._place(path), folder=False)

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        with _answer():
            disk.rename(self._hub.roots, self._place(oldpath), self._place(newpath),
                        replace=False)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        with _answer():
            disk.rename(self._hub.roots, self._place(oldpath), self._place(newpath),
                        replace=True)

    def realpath(self, path: bytes) -> bytes:
        with _answer():
            return self._place(path).virtual.encode()

    def readlink(self, path: bytes) -> bytes:
        with _answer():
            return disk.link_target(self._hub.roots, self._place(path)).encode()

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPError(FX_PERMISSION_DENIED, NO_LINKS)

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        raise SFTPError(FX_PERMISSION_DENIED, NO_LINKS)

    def _check_attrs(self, attrs: SFTPAttrs) -> None:
        if attrs.uid is not None or attrs.gid is not None or attrs.owner or attrs.group:
            raise Refusal(FX_PERMISSION_DENIED, NO_OWNER)
        check_permissions(attrs.permissions)

    def setstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        with _answer():
            place = writable(self._place(path))
            self._check_attrs(attrs)
            if attrs.size is not None:
                raise Refusal(FX_OP_UNSUPPORTED,
                              "refused: open the file to change its size")
            if attrs.atime is not None and attrs.mtime is not None:
                disk.set_times(self._hub.roots, place, attrs.atime, attrs.mtime)

    def lsetstat(self, path: bytes, attrs: SFTPAttrs) -> None:
        self.setstat(path, attrs)

    def statvfs(self, path: bytes) -> os.statvfs_result:
        with _answer():
            return disk.space(self._hub.roots, self._place(path))

    def exit(self) -> None:
        for handle in list(self._open):
            self.close(handle)
        # The client closed the SFTP session: say it ended well, as
        # OpenSSH's sftp-server does by exiting 0. OpenSSH's scp checks ssh's
        # exit status, and a channel closed without one makes it 255 (an
        # error) after a transfer that went through.
        chan = self.channel
        with contextlib.suppress(OSError, asyncssh.Error):
            chan.exit(0)


async def _iterate(names: list[SFTPName]) -> AsyncIterator[SFTPName]:
    for name in names:
        yield name


__all__ = ["CANCELLED", "Engineer", "TransferServer"]
