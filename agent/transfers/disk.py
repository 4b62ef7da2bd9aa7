"""The customer's disk, as the engineer's SFTP view may touch it.

A `Place` (see `agent.transfers.jail`) is found on disk in two steps:

1. Its path is resolved (`os.path.realpath`) and must still be inside the
   area's root: a link that leads outside — however many hops, relative or
   absolute — is refused, one that stays inside is followed.
2. The resolved path is then walked from the root one name at a time, each
   opened relative to its parent's descriptor with `O_NOFOLLOW`: a link that
   appears between the check and the use (someone swapping a folder for a
   link) makes the walk fail instead of leading anywhere.

A file is opened only if it is a regular file, checked before opening
(`lstat`, so a device or FIFO is never opened at all) and again on the open
descriptor (`fstat`), with `O_NONBLOCK` so even a FIFO swapped in meanwhile
cannot block the agent. Files the engineer writes are created `UPLOAD_MODE`
and an existing file they overwrite loses any execute bit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from asyncssh import FX_FAILURE, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED

from agent.transfers.jail import (
    DISK_FULL,
    EXEC_BITS,
    FOLDER_MODE,
    INCOMING,
    MOVE_OUT,
    SHARED,
    UPLOAD_MODE,
    Place,
    Refusal,
    decode_name,
    link_outside,
    no_such,
    not_regular,
    writable,
)

# A listing is bounded: a folder of a million files is not sent whole.
MAX_LISTING = 10_000

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


@dataclass(frozen=True)
class Roots:
    """Where the areas are on disk (resolved once, when the session starts)."""

    incoming: str
    shared: str | None = None

    @classmethod
    def make(cls, incoming: Path, shared: Path | None) -> Roots:
        return cls(os.path.realpath(incoming),
                   os.path.realpath(shared) if shared is not None else None)

    def root(self, place: Place) -> str:
        if place.area == SHARED:
            if self.shared is None:  # pragma: no cover - `locate` never makes one
                raise Refusal(FX_NO_SUCH_FILE, no_such(place.virtual))
            return self.shared
        return self.incoming


@contextlib.contextmanager
def os_errors(place: Place) -> Iterator[None]:
    """What the disk said, as a sentence for the engineer."""
    try:
        yield
    except Refusal:
        raise
    except OSError as exc:
        raise refusal_for(exc, place) from None


def refusal_for(exc: OSError, place: Place) -> Refusal:
    where = place.virtual
    code = exc.errno
    if code in (errno.ENOENT, errno.ENOTDIR):
        return Refusal(FX_NO_SUCH_FILE, no_such(where))
    if code == errno.ELOOP:
        return Refusal(FX_PERMISSION_DENIED, link_outside(where))
    if code in (errno.ENOSPC, errno.EDQUOT):
        return Refusal(FX_FAILURE, DISK_FULL)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return Refusal(FX_PERMISSION_DENIED,
                       f"refused: the customer's computer does not allow this ({where})")
    if code == errno.EEXIST:
        return Refusal(FX_FAILURE, f"failed: {where} already exists")
    if code == errno.EISDIR:
        return Refusal(FX_FAILURE, f"failed: {where} is a folder")
    if code == errno.ENOTEMPTY:
        return Refusal(FX_FAILURE, f"failed: the folder {where} is not empty")
    if code in (errno.ENXIO, errno.ENODEV):
        return Refusal(FX_PERMISSION_DENIED, not_regular(where))
    reason = os.strerror(code) if code else "error"
    return Refusal(FX_FAILURE, f"failed on the customer's computer: {reason} ({where})")


def _resolve(roots: Roots, place: Place, *, follow_last: bool) -> tuple[str, tuple[str, ...]]:
    """The area's root and the names below it where `place` really is."""
    root = roots.root(place)
    if not place.parts:
        return root, ()
    if follow_last:
        target = os.path.realpath(os.path.join(root, *place.parts))
    else:
        parent = os.path.realpath(os.path.join(root, *place.parts[:-1]))
        target = os.path.join(parent, place.parts[-1])
    if target == root:
        return root, ()
    prefix = root.rstrip("/") + "/"
    if not target.startswith(prefix):
        raise Refusal(FX_PERMISSION_DENIED, link_outside(place.virtual))
    return root, tuple(target[len(prefix):].split("/"))


@contextlib.contextmanager
def _parent(root: str, names: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """The open folder holding the last of `names` (walked without following
    links), and that last name; for the root itself, the root and ".". """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in names[:-1]:
            inner = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = inner
        yield fd, names[-1] if names else "."
    finally:
        os.close(fd)


def _check_regular(st: os.stat_result, place: Place) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise Refusal(FX_FAILURE, f"failed: {place.virtual} is a folder")
    if not stat.S_ISREG(st.st_mode):
        raise Refusal(FX_PERMISSION_DENIED, not_regular(place.virtual))


def open_read(roots: Roots, place: Place) -> tuple[int, int]:
    """A regular file opened for reading, and its size."""
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=True)
        with _parent(root, names) as (folder, name):
            before = os.stat(name, dir_fd=folder, follow_symlinks=False)
            _check_regular(before, place)
            fd = os.open(name, os.O_RDONLY | _FILE_FLAGS, dir_fd=folder)
        try:
            after = os.fstat(fd)
            _check_regular(after, place)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
                raise Refusal(FX_FAILURE, f"failed: {place.virtual} changed while opening")
        except BaseException:
            os.close(fd)
            raise
        return fd, after.st_size


@dataclass(frozen=True)
class OpenedForWrite:
    fd: int
    created: bool
    size: int


def open_write(roots: Roots, place: Place, *, read: bool, create: bool, truncate: bool,
               exclusive: bool, append: bool) -> OpenedForWrite:
    """A regular file in the incoming folder opened for writing (created
    `UPLOAD_MODE` if it is new; an existing one loses any execute bit)."""
    writable(place)
    if not place.parts:
        raise Refusal(FX_FAILURE, f"failed: {place.virtual} is a folder")
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=True)
        if not names:
            raise Refusal(FX_FAILURE, f"failed: {place.virtual} is a folder")
        with _parent(root, names) as (folder, name):
            try:
                before: os.stat_result | None = os.stat(name, dir_fd=folder,
                                                        follow_symlinks=False)
            except FileNotFoundError:
                before = None
            if before is not None:
                _check_regular(before, place)
                if before.st_nlink > 1:
                    # Writing would change the same file under its other names.
                    raise Refusal(FX_PERMISSION_DENIED,
                                  f"refused: {place.virtual} also has another name on the "
                                  "customer's computer (a hard link)")
            flags = (os.O_RDWR if read else os.O_WRONLY) | _FILE_FLAGS
            flags |= ((os.O_CREAT if create else 0) | (os.O_TRUNC if truncate else 0)
                      | (os.O_EXCL if exclusive else 0) | (os.O_APPEND if append else 0))
            fd = os.open(name, flags, UPLOAD_MODE, dir_fd=folder)
        try:
            after = os.fstat(fd)
            _check_regular(after, place)
            if after.st_mode & EXEC_BITS:
                os.fchmod(fd, stat.S_IMODE(after.st_mode) & ~EXEC_BITS)
        except BaseException:
            os.close(fd)
            raise
        return OpenedForWrite(fd, before is None, after.st_size)


def discard(roots: Roots, place: Place, fd: int) -> None:
    """Remove the file the engineer was sending (cancelled, refused or
    failed part way), if its name still is that file."""
    with contextlib.suppress(OSError, Refusal):
        ours = os.fstat(fd)
        root, names = _resolve(roots, place, follow_last=False)
        with _parent(root, names) as (folder, name):
            there = os.stat(name, dir_fd=folder, follow_symlinks=False)
            if (there.st_dev, there.st_ino) == (ours.st_dev, ours.st_ino):
                os.unlink(name, dir_fd=folder)


def status(roots: Roots, place: Place, *, follow: bool) -> os.stat_result:
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=follow)
        if not names:
            return os.stat(root)
        with _parent(root, names) as (folder, name):
            return os.stat(name, dir_fd=folder, follow_symlinks=False)


def listing(roots: Roots, place: Place) -> list[tuple[str, os.stat_result]]:
    """The names in a folder the engineer may see (names the policy would
    refuse are left out), with what `lstat` says of each."""
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=True)
        with _parent(root, names) as (folder, name):
            fd = os.open(name, _DIR_FLAGS, dir_fd=folder)
        try:
            found: list[tuple[str, os.stat_result]] = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    shown = decode_name(os.fsencode(entry.name))
                    if shown is None:
                        continue
                    with contextlib.suppress(OSError):
                        found.append((shown, entry.stat(follow_symlinks=False)))
                    if len(found) >= MAX_LISTING:
                        break
            return found
        finally:
            os.close(fd)


def make_folder(roots: Roots, place: Place) -> None:
    writable(place)
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=False)
        if not names:
            raise Refusal(FX_FAILURE, f"failed: {place.virtual} already exists")
        with _parent(root, names) as (folder, name):
            os.mkdir(name, FOLDER_MODE, dir_fd=folder)


def remove(roots: Roots, place: Place, *, folder: bool) -> None:
    writable(place)
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=False)
        if not names:
            raise Refusal(FX_PERMISSION_DENIED,
                          f"refused: {place.virtual} is the transfer folder itself")
        with _parent(root, names) as (parent, name):
            if folder:
                os.rmdir(name, dir_fd=parent)
            else:
                if stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    raise Refusal(FX_FAILURE, f"failed: {place.virtual} is a folder")
                os.unlink(name, dir_fd=parent)


def rename(roots: Roots, old: Place, new: Place, *, replace: bool) -> None:
    """Within the incoming folder only."""
    if old.area != INCOMING or new.area != INCOMING:
        raise Refusal(FX_PERMISSION_DENIED, MOVE_OUT)
    if not old.parts or not new.parts:
        raise Refusal(FX_PERMISSION_DENIED,
                      "refused: the transfer folder itself cannot be moved")
    with os_errors(old):
        root, old_names = _resolve(roots, old, follow_last=False)
        _root, new_names = _resolve(roots, new, follow_last=False)
        if not old_names or not new_names:
            raise Refusal(FX_PERMISSION_DENIED,
                          "refused: the transfer folder itself cannot be moved")
        with _parent(root, old_names) as (src, src_name), \
                _parent(root, new_names) as (dst, dst_name):
            if not replace:
                try:
                    os.stat(dst_name, dir_fd=dst, follow_symlinks=False)
                except FileNotFoundError:
                    pass
                else:
                    raise Refusal(FX_FAILURE, f"failed: {new.virtual} already exists")
            os.rename(src_name, dst_name, src_dir_fd=src, dst_dir_fd=dst)


def set_times(roots: Roots, place: Place, atime: int, mtime: int) -> None:
    writable(place)
    with os_errors(place):
        root, names = _resolve(roots, place, follow_last=True)
        with _parent(root, names) as (folder, name):
            os.utime(name, (atime, mtime), dir_fd=folder, follow_symlinks=False)


def space(roots: Roots, place: Place) -> os.statvfs_result:
    with os_errors(place):
        return os.statvfs(roots.root(place))


def link_target(roots: Roots, place: Place) -> str:
    """Where a link leads, in the engineer's view (only if it stays inside)."""
    with os_errors(place):
        _root, names = _resolve(roots, place, follow_last=True)
        base = "/shared" if place.area == SHARED else ""
        return base + "/" + "/".join(names) if names else base or "/"
