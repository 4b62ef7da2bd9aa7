"""Loading the engineer's key: real OpenSSH key files, with and without a passphrase."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from broker.auth import verify_login
from broker.wire.login import login_payload
from console.errors import IdentityError
from console.identity import PassphraseNeeded, load_file_identity


def _write(tmp_path: Path, alg: str = "ssh-ed25519", passphrase: str | None = None) -> Path:
    key = asyncssh.generate_private_key(alg)
    path = tmp_path / "id"
    key.write_private_key(str(path), passphrase=passphrase)
    return path


async def test_plain_key_signs_a_login_the_broker_accepts(tmp_path: Path) -> None:
    identity = load_file_identity("alice", _write(tmp_path), prompt=None)
    nonce = b"n" * 32
    signature = await identity.sign(login_payload("alice", nonce))
    assert identity.public_line.startswith("ssh-ed25519 ")
    assert len(identity.public_line.split()) == 2
    assert verify_login(identity.public_line, "alice", nonce, signature)
    assert identity.fingerprint.startswith("SHA256:")


def test_passphrase_is_asked_only_when_needed(tmp_path: Path) -> None:
    asked: list[Path] = []
    path = _write(tmp_path, passphrase="correct horse")

    def prompt(p: Path) -> str:
        asked.append(p)
        return "correct horse"

    identity = load_file_identity("alice", path, prompt)
    assert asked == [path]
    assert identity.user == "alice"


def test_wrong_passphrase_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, passphrase="correct horse")
    with pytest.raises(IdentityError, match="wrong passphrase"):
        load_file_identity("alice", path, lambda _p: "battery staple")


def test_encrypted_key_without_a_terminal_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, passphrase="correct horse")
    with pytest.raises(PassphraseNeeded, match="needs its passphrase"):
        load_file_identity("alice", path, prompt=None)


def test_only_ed25519(tmp_path: Path) -> None:
    path = _write(tmp_path, alg="ecdsa-sha2-nistp256")
    with pytest.raises(IdentityError, match="Ed25519"):
        load_file_identity("alice", path, prompt=None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="no SSH key at"):
        load_file_identity("alice", tmp_path / "nope", prompt=None)
