"""Writing a file so readers see either the old one or the whole new one.

Shared by the broker (certificates, keys) and the agent (its device key):
no server code here, so clients may import it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = ["create_exclusively", "replace_atomically", "replace_atomically_from"]


def replace_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace `path` with a file of `data` and `mode` (see below)."""
    replace_atomically_from(path, (data,), mode=mode)


def replace_atomically_from(path: Path, chunks: Iterable[bytes], *,
                            mode: int = 0o600) -> None:
    """Replace `path` with a file of `chunks` and `mode`; raise OSError on failure.

    mkstemp makes the temporary file under a fresh random name with O_EXCL
    and mode 0600 whatever the umask (a planted file or symlink is never
    reused); it is fsynced, and widened to `mode` only once complete, before
    the rename.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            for data in chunks:  # a large file is written as it is made
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if mode != 0o600:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def create_exclusively(path: Path, data: bytes) -> bool:
    """Create `path` (mode 0600) holding `data` unless it exists; whether
    this call made it. Written whole under a temporary name, made durable,
    then linked into place: link() fails if the name exists, so of several
    processes creating it at once exactly one wins and nobody reads a
    half-written file. OSError on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
