"""Pin the agent's host key for OpenSSH: a known_hosts entry for the session.

`consentry-console proxy` learns the agent's host key under the pairing (the
PAKE-protected exchange the customer confirmed), so OpenSSH itself needs no
trust-on-first-use: the proxy writes the key to the known_hosts file that
`ssh -o UserKnownHostsFile=` names, before the first SSH byte is carried, and
`StrictHostKeyChecking=yes` then holds ssh to exactly that key.

The entry's name is `consentry-CODE` (see `entry_name`): the host name the
engineer gives ssh, so no HostKeyAlias is needed. The file is rewritten
atomically (a temporary file renamed over it, mode 0600), under a lock, so
two proxies started at once each keep the other's entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from broker.atomic_file import replace_atomically
from console.errors import UsageError

PREFIX = "consentry-"
DEFAULT_FILE = Path("~/.ssh/consentry_known_hosts")
# Each entry is marked so old ones can be dropped: a session's key is fresh,
# so an entry outlives its use; a month is far longer than any session.
MARK = "consentry-pinned:"
STALE_AFTER = 30 * 24 * 3600.0
_NAME_RE = re.compile(r"consentry-[0-9-]{1,40}")


def entry_name(code_text: str) -> str:
    """`consentry-` and the code as the engineer typed it, whether or not
    they typed the prefix: the host name ssh looks the key up under.

    ssh's `%n` hands the proxy the host name as typed (`consentry-4821-193-775`);
    a bare code (`4821-193-775`, with `HostKeyAlias=consentry-4821-193-775`) is
    given the prefix.
    """
    text = code_text.strip().lower()
    name = text if text.startswith(PREFIX) else PREFIX + text
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"give the code as digits and dashes (e.g. {PREFIX}4821-193-775): "
                         "it is also the host name ssh checks the customer's key under")
    return name


def code_part(code_text: str) -> str:
    """The code itself, without the `consentry-` host name prefix."""
    text = code_text.strip()
    return text[len(PREFIX):] if text.lower().startswith(PREFIX) else text


def pin_host_key(path: Path, name: str, key_line: str, *, now: float | None = None) -> None:
    """Make `name key_line` the one entry for `name` in the known_hosts file
    `path` (created, with its folder, if missing); other hosts' entries stay,
    except this program's own entries older than `STALE_AFTER`."""
    now = time.time() if now is None else now
    path = path.expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with _locked(path):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        kept = [line for line in lines if not _replaced(line, name, now)]
        kept.append(f"{name} {key_line} {MARK}{int(now)}")
        _write_atomically(path, "".join(line + "\n" for line in kept))


def _replaced(line: str, name: str, now: float) -> bool:
    fields = line.split()
    if len(fields) < 3 or line.lstrip().startswith("#"):
        return False
    if name in fields[0].split(","):
        return True
    marks = [field for field in fields[3:] if field.startswith(MARK)]
    if not marks:
        return False  # not ours: never touched
    try:
        pinned = float(marks[0][len(MARK):])
    except ValueError:
        return False
    return now - pinned > STALE_AFTER


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    replace_atomically(path, text.encode("utf-8"))  # 0600, complete or not at all
