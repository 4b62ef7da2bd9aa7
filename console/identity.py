"""The engineer's SSH identity: an OpenSSH Ed25519 key from a file (with a
passphrase if it has one) or from a running ssh-agent.

asyncssh is imported where a key is read, not with this module: a plain
join checks the key file (`needs_passphrase`) and starts its connection
before it pays for asyncssh (`console.__main__`).
"""

from __future__ import annotations

import base64
import binascii
import getpass
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from console.errors import IdentityError

if TYPE_CHECKING:
    import asyncssh

PassphrasePrompt = Callable[[Path], str]


class PassphraseNeeded(IdentityError):
    """The key is encrypted and no passphrase was supplied."""


def tty_passphrase(path: Path) -> str:
    return getpass.getpass(f"Passphrase for {path}: ")


@dataclass(frozen=True)
class Identity:
    user: str
    keypair: asyncssh.SSHKeyPair

    @property
    def public_line(self) -> str:
        """``ssh-ed25519 AAAA...``, without a comment."""
        from asyncssh.public_key import decode_ssh_public_key

        key = decode_ssh_public_key(self.keypair.public_data)
        return " ".join(key.export_public_key("openssh").decode().split()[:2])

    @property
    def fingerprint(self) -> str:
        from asyncssh.public_key import decode_ssh_public_key

        return decode_ssh_public_key(self.keypair.public_data).get_fingerprint("sha256")

    async def sign(self, data: bytes) -> bytes:
        """An SSH signature blob; ssh-agent keys sign asynchronously."""
        sign_async = getattr(self.keypair, "sign_async", None)
        if sign_async is not None:
            return bytes(await sign_async(data))
        return bytes(self.keypair.sign(data))


def check_key_file(path: Path) -> None:
    if not path.is_file():
        raise IdentityError(f"no SSH key at {path}; pass --identity with your private key file")


_OPENSSH_PEM = (b"-----BEGIN OPENSSH PRIVATE KEY-----", b"-----END OPENSSH PRIVATE KEY-----")
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def needs_passphrase(path: Path) -> bool | None:
    """Whether the key in `path` is encrypted, read from its header without
    asyncssh: True or False for an OpenSSH private key file, None for any
    other (or unreadable) file, which `load_file_identity` then judges.

    The OpenSSH format names its cipher in clear right after its magic
    (PROTOCOL.key): "none" for a key without a passphrase."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    begin, end = _OPENSSH_PEM
    if begin not in text or end not in text:
        return None
    body = text.split(begin, 1)[1].split(end, 1)[0]
    try:
        blob = base64.b64decode(b"".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    if not blob.startswith(_OPENSSH_MAGIC):
        return None
    rest = blob[len(_OPENSSH_MAGIC):]
    if len(rest) < 4:
        return None
    length = int.from_bytes(rest[:4], "big")
    if length > 64 or len(rest) < 4 + length:
        return None
    return rest[4:4 + length] != b"none"


def load_file_identity(user: str, path: Path, prompt: PassphrasePrompt | None) -> Identity:
    """Read a private key file, asking for its passphrase only if it has one."""
    import asyncssh

    check_key_file(path)
    try:
        keypairs = asyncssh.load_keypairs([str(path)], ignore_encrypted=False)
    except asyncssh.KeyImportError as exc:
        if "passphrase" not in str(exc).lower():
            raise IdentityError(f"cannot read the SSH key {path}: {exc}") from exc
        if prompt is None:
            raise PassphraseNeeded(f"the SSH key {path} needs its passphrase") from exc
        try:
            keypairs = asyncssh.load_keypairs([str(path)], passphrase=prompt(path))
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc2:
            raise IdentityError(f"wrong passphrase for {path}") from exc2
    except asyncssh.KeyEncryptionError as exc:
        raise IdentityError(f"wrong passphrase for {path}") from exc
    except OSError as exc:
        raise IdentityError(f"cannot read the SSH key {path}: {exc.strerror}") from exc
    return _ed25519(user, keypairs, str(path))


async def load_agent_identity(user: str, public_file: Path | None) -> Identity:
    """Use a key held by ssh-agent: the one matching `public_file`, or the
    first Ed25519 key."""
    import asyncssh

    if not os.environ.get("SSH_AUTH_SOCK"):
        raise IdentityError("--ssh-agent was given but no ssh-agent is running (SSH_AUTH_SOCK)")
    try:
        async with asyncssh.connect_agent() as agent:
            keypairs = await agent.get_keys()
    except (OSError, asyncssh.Error) as exc:
        raise IdentityError(f"cannot talk to ssh-agent: {exc}") from exc
    if public_file is not None and public_file.with_suffix(".pub").is_file():
        wanted = asyncssh.read_public_key(str(public_file.with_suffix(".pub"))).public_data
        keypairs = [k for k in keypairs if k.public_data == wanted]
    return _ed25519(user, keypairs, "ssh-agent")


def _ed25519(user: str, keypairs: Sequence[asyncssh.SSHKeyPair], where: str) -> Identity:
    for keypair in keypairs:
        if keypair.algorithm == b"ssh-ed25519":
            return Identity(user, keypair)
    raise IdentityError(f"no Ed25519 key in {where}; consentry accepts Ed25519 keys only")
