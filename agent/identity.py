"""The device's own identity: a stable random id and an Ed25519 signing key.

Kept in the agent's state directory (0700) in files of mode 0600; the key
signs consent receipts so the broker's record of a consent can be checked
against the customer's device, and the customer keeps a copy of each receipt.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from agent.errors import SetupError
from broker.atomic_file import replace_atomically
from broker.audit.checkpoint_record import parse_checkpoint
from broker.errors import AuditError

_KEY_FILE = "device.key"
_ID_FILE = "device.id"
_RECEIPTS = "receipts.jsonl"
# Beside the receipts: the broker's signed checkpoints covering the events
# that recorded them, one canonical line each - a witness file as it is
# (`consentry-broker audit verify --witness checkpoints.jsonl`).
_CHECKPOINTS = "checkpoints.jsonl"


def _append_private(path: Path, line: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file holding `data`
    (`broker.atomic_file.replace_atomically`)."""
    replace_atomically(path, data)


def make_private_dir(path: Path) -> None:
    """Create `path` and any missing parent 0700, whatever the umask.

    `mkdir(parents=True)` gives the parents it makes (~/.local/state, say)
    the umask's mode: 0777 under umask 000. Directories that already exist
    are left as they are, except the state directory itself, which is ours.
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


@dataclass(frozen=True)
class DeviceIdentity:
    state_dir: Path
    device_id: str
    key: nacl.signing.SigningKey

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    def keep_receipt(self, receipt: bytes, signature: bytes) -> None:
        """Append a signed receipt to the customer's own copy."""
        path = self.state_dir / _RECEIPTS
        line = json.dumps({"receipt": receipt.decode(), "signature": signature.hex()}) + "\n"
        _append_private(path, line.encode())

    def keep_checkpoint(self, text: str, seq: int) -> bool:
        """Keep the broker's signed checkpoint covering consent event `seq`.

        Only its shape is checked here (the audit key's signature is for
        whoever verifies the log); one that is not a checkpoint, or does not
        cover `seq`, is not kept (False)."""
        try:
            checkpoint = parse_checkpoint(text)
        except AuditError:
            return False
        if checkpoint.seq < seq:
            return False
        _append_private(self.state_dir / _CHECKPOINTS, checkpoint.line())
        return True


def load_identity(state_dir: Path) -> DeviceIdentity:
    """Load the device identity, creating it on first run."""
    try:
        make_private_dir(state_dir)
        key_path, id_path = state_dir / _KEY_FILE, state_dir / _ID_FILE
        if not key_path.exists():
            write_private(key_path, bytes(nacl.signing.SigningKey.generate()))
        if not id_path.exists():
            write_private(id_path, secrets.token_hex(16).encode())
        if key_path.stat().st_mode & 0o077:
            raise SetupError(f"{key_path} is readable by other users; run: chmod 600 {key_path}")
        key = nacl.signing.SigningKey(key_path.read_bytes())
        device_id = id_path.read_text().strip()
    except OSError as exc:
        raise SetupError(f"cannot use the agent state directory {state_dir}: {exc}") from exc
    except (ValueError, TypeError) as exc:
        raise SetupError(f"the device key in {state_dir} is damaged: {exc}") from exc
    return DeviceIdentity(state_dir, device_id, key)
