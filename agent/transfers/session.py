"""A session's file transfers, set up from the customer's configuration:
its incoming folder, its hub, and the SFTP server for each engineer's seat."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import asyncssh
from asyncssh.channel import SSHChannel, SSHServerChannel

from agent.identity import make_private_dir
from agent.sshd import Gate, SftpFactory
from agent.transfers.disk import Roots
from agent.transfers.hub import TransferHub
from agent.transfers.jail import Limits
from agent.transfers.record import RECORD_FILE, TransferRecord
from agent.transfers.server import Engineer, TransferServer

log = logging.getLogger("consentry.agent")

# Where files engineers send go, one folder per session, unless the
# customer chooses another place (`--transfers-dir`).
DEFAULT_TRANSFERS_DIR = Path("~/consentry-transfers")
_SAFE_FOLDER_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def incoming_folder(base: Path, session: str) -> Path:
    """The session's own folder under `base` (the broker's session id, when
    it is a plain name; a digest of it otherwise)."""
    name = session if _SAFE_FOLDER_NAME.fullmatch(session) else (
        hashlib.sha256(session.encode()).hexdigest()[:16])
    return Path(os.path.expanduser(base)) / name


def session_hub(session: str, *, transfers_dir: Path | None, share: Path | None,
                limits: Limits, state_dir: Path) -> TransferHub:
    folder = incoming_folder(transfers_dir or DEFAULT_TRANSFERS_DIR, session)
    return TransferHub(session, Roots.make(folder, share), limits,
                       TransferRecord(state_dir / RECORD_FILE))


def sftp_factory(hub: TransferHub, engineer: Engineer) -> SftpFactory:
    """The seat's `Services.sftp`: the incoming folder is made (0700) the
    first time an engineer with the files right opens SFTP."""

    def factory(chan: SSHChannel[bytes], gate: Gate) -> asyncssh.SFTPServer:
        folder = Path(hub.roots.incoming)
        try:
            make_private_dir(folder)
            hub.roots = Roots.make(folder, Path(hub.roots.shared) if hub.roots.shared else None)
        except OSError as exc:
            log.warning("cannot create the transfer folder %s: %s", folder, exc)
        assert isinstance(chan, SSHServerChannel)  # asyncssh types it as the base class
        return TransferServer(chan, gate, hub, engineer)

    return factory
