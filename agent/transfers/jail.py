"""The engineer's view of the customer's files, as pure decisions (no I/O).

The engineer's SFTP client sees a small virtual tree and nothing else:

    /          the session's incoming folder (read-write): what the engineer
               sends lands here, and what the customer puts here is theirs
               to hand over
    /shared/   the folder the customer shares with `--share DIR`, read-only
               (only when one is given)

Every path the client sends is decoded (UTF-8, strictly), normalised
lexically inside that tree (a `..` that would climb above `/` is refused,
an absolute path such as `/etc/passwd` is simply a name inside the
folder) and checked name by name: no control characters, no over-long
names. What is left is a `Place`: an area and the names below its root.
Where a place is on disk, and whether a link there leads outside, is for
`agent.transfers.disk`, which opens it without following any link the
check did not see.

The refusals carry the SFTP status code and the sentence the engineer's
console shows; both are part of the interface (see the texts below).
"""

from __future__ import annotations

from dataclasses import dataclass

from asyncssh import FX_FAILURE, FX_PERMISSION_DENIED

from agent.transfers.sizes import format_size
from broker.wire.text import printable

INCOMING = "incoming"
SHARED = "shared"
# The name under which the customer's shared folder appears at the root.
SHARED_NAME = "shared"

# What a file system allows for one name, and a bound for the whole path.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096
MAX_DEPTH = 64

# The customer's limits (settable in the agent's configuration): per file,
# either way, and for everything one session moves.
MAX_FILE_BYTES = 2 * 1024**3
MAX_SESSION_BYTES = 10 * 1024**3

# Files the engineer sends are private to the customer and never executable;
# folders they make, likewise private.
UPLOAD_MODE = 0o600
FOLDER_MODE = 0o700
EXEC_BITS = 0o111

# The sentences an engineer sees, once each (the console shows them as they are).
LEAVES_FOLDER = "refused: '..' would leave the transfer folder"
NOT_UTF8 = "refused: file names must be valid UTF-8"
CONTROL_CHARACTERS = "refused: file names with control characters are not allowed"
NAME_TOO_LONG = "refused: the name is too long"
PATH_TOO_LONG = "refused: the path is too long or too deep"
NO_LINKS = "refused: links cannot be created on the customer's computer"
NO_EXEC = "refused: files on the customer's computer are never made executable"
NO_OWNER = "refused: owners cannot be changed"
READ_ONLY = "refused: /shared is read-only"
MOVE_OUT = "refused: files cannot be moved out of their folder"
RESERVED = "refused: /shared is the customer's shared folder"
CANCELLED = "cancelled by the customer"
WITHDRAWN = "cancelled: the customer withdrew the file transfer right"
DISK_FULL = "failed: the customer's disk is full"


def no_such(virtual: str) -> str:
    return f"no such file or folder: {virtual}"


def link_outside(virtual: str) -> str:
    return f"refused: {virtual} is a link that leads outside the transfer folder"


def not_regular(virtual: str) -> str:
    return (f"refused: {virtual} is not a regular file (devices, pipes and sockets "
            "are never opened)")


def too_big(limit: int) -> str:
    return f"refused: larger than the customer allows ({format_size(limit)} per file)"


def session_full(limit: int) -> str:
    return (f"refused: this session has moved as much as the customer allows "
            f"({format_size(limit)} per session)")


class Refusal(Exception):
    """A request the policy refuses: an SFTP status code and a sentence."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


@dataclass(frozen=True)
class Limits:
    max_file_bytes: int = MAX_FILE_BYTES
    max_session_bytes: int = MAX_SESSION_BYTES


@dataclass(frozen=True)
class Place:
    """A validated place in the engineer's view: an area and the names
    below its root (empty for the root itself)."""

    area: str
    parts: tuple[str, ...]

    @property
    def virtual(self) -> str:
        """The path as the engineer sees it (built from checked names only)."""
        names = ((SHARED_NAME,) if self.area == SHARED else ()) + self.parts
        return "/" + "/".join(names)

    @property
    def writable(self) -> bool:
        return self.area == INCOMING

    @property
    def name(self) -> str:
        return self.parts[-1] if self.parts else ""


def check_name(name: str) -> None:
    """A name the customer's disk may hold and a terminal may show."""
    if len(name.encode()) > MAX_NAME_BYTES:
        raise Refusal(FX_FAILURE, NAME_TOO_LONG)
    if printable(name, 4 * MAX_NAME_BYTES) != name:
        raise Refusal(FX_PERMISSION_DENIED, CONTROL_CHARACTERS)


def decode_name(raw: bytes) -> str | None:
    """A name found on disk as the engineer may see it, or None when it is
    one the policy would refuse (it is then left out of listings)."""
    try:
        name = raw.decode("utf-8", "strict")
        check_name(name)
    except (UnicodeDecodeError, Refusal):
        return None
    return name


def locate(path: bytes, *, shared: bool) -> Place:
    """Where a client path leads in the engineer's view, or a `Refusal`.

    Relative paths start at `/` (the engineer's working folder is the root).
    `shared` says whether the customer shares a folder (`/shared`)."""
    if len(path) > MAX_PATH_BYTES:
        raise Refusal(FX_FAILURE, PATH_TOO_LONG)
    try:
        text = path.decode("utf-8", "strict")
    except UnicodeDecodeError:
        raise Refusal(FX_PERMISSION_DENIED, NOT_UTF8) from None
    names: list[str] = []
    for name in text.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if not names:
                raise Refusal(FX_PERMISSION_DENIED, LEAVES_FOLDER)
            names.pop()
            continue
        check_name(name)
        names.append(name)
    if len(names) > MAX_DEPTH:
        raise Refusal(FX_FAILURE, PATH_TOO_LONG)
    if shared and names and names[0] == SHARED_NAME:
        return Place(SHARED, tuple(names[1:]))
    return Place(INCOMING, tuple(names))


def writable(place: Place) -> Place:
    """`place`, if the engineer may change what is there."""
    if not place.writable:
        raise Refusal(FX_PERMISSION_DENIED, READ_ONLY)
    return place


def check_permissions(permissions: int | None) -> None:
    """A mode the engineer asks for (open, setstat): never an executable one.
    Any other mode is ignored: files stay `UPLOAD_MODE`, folders `FOLDER_MODE`."""
    if permissions is not None and permissions & EXEC_BITS:
        raise Refusal(FX_PERMISSION_DENIED, NO_EXEC)


def check_size(end: int, session_after: int, limits: Limits) -> None:
    """A transfer reaching `end` bytes of one file, and the session then
    having moved `session_after` bytes: within the customer's limits?"""
    if end > limits.max_file_bytes:
        raise Refusal(FX_FAILURE, too_big(limits.max_file_bytes))
    if session_after > limits.max_session_bytes:
        raise Refusal(FX_FAILURE, session_full(limits.max_session_bytes))
