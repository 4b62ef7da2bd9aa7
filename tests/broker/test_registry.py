"""The engineer registry: validation, storage, file safety."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import asyncssh
import pytest

from broker.errors import RegistryError
from broker.registry import Engineer, Registry

NOW = dt.datetime(2025, 1, 31, 10, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))


def ed25519_pub(comment: str = "alice@laptop") -> tuple[asyncssh.SSHKey, str]:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key, key.export_public_key("openssh").decode()


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "data" / "registry.db")


def test_add_get_list_remove(registry: Registry) -> None:
    key, pub = ed25519_pub()
    alice = registry.add("alice", pub, display="Alice Example", now=NOW)
    _, bob_pub = ed25519_pub("bob")
    registry.add("bob", bob_pub, role="admin", now=NOW)

    assert alice == Engineer(
        name="alice",
        display="Alice Example",
        role="engineer",
        public_key=" ".join(pub.split()[:2]),  # comment dropped
        added="2025-01-31T09:00:00Z",  # stored in UTC
    )
    assert alice.fingerprint == key.get_fingerprint("sha256")
    assert alice.fingerprint.startswith("SHA256:")
    assert registry.get("alice") == alice
    assert registry.get("carol") is None
    assert [e.name for e in registry.list()] == ["alice", "bob"]
    bob = registry.get("bob")
    assert bob is not None
    assert (bob.role, bob.display) == ("admin", "bob")  # display defaults to the name

    assert registry.remove("alice") is True
    assert registry.remove("alice") is False
    assert [e.name for e in registry.list()] == ["bob"]


def test_only_public_keys_are_stored_and_the_file_is_private(
    registry: Registry, tmp_path: Path
) -> None:
    key, pub = ed25519_pub("secret-comment@host")
    registry.add("alice", pub, now=NOW)
    assert stat.S_IMODE(registry.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(registry.path.parent.stat().st_mode) == 0o700
    data = registry.path.read_bytes()
    assert b"secret-comment" not in data
    private_blob = key.export_private_key("openssh").splitlines()[1]
    assert private_blob not in data


def test_a_whole_pub_file_is_accepted(registry: Registry) -> None:
    _, pub = ed25519_pub()
    alice = registry.add("alice", "\n\n  " + pub + "\n# trailing junk\n", now=NOW)
    assert alice.public_key == " ".join(pub.split()[:2])


@pytest.mark.parametrize(
    "name", ["", "Alice", "-alice", ".alice", "a b", "alice\n", "a" * 33, "ålice", "al/ce"]
)
def test_bad_names_are_refused(registry: Registry, name: str) -> None:
    _, pub = ed25519_pub()
    with pytest.raises(RegistryError, match="invalid engineer name"):
        registry.add(name, pub, now=NOW)


def test_good_names(registry: Registry) -> None:
    for name in ("a", "0", "alice.smith", "bob_2", "x-y", "a" * 32):
        _, pub = ed25519_pub(name)
        registry.add(name, pub, now=NOW)
    assert len(registry.list()) == 6


def test_rsa_keys_are_refused(registry: Registry) -> None:
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    with pytest.raises(RegistryError, match="only Ed25519 keys are accepted"):
        registry.add("alice", rsa.export_public_key("openssh").decode(), now=NOW)


def test_ecdsa_keys_are_refused(registry: Registry) -> None:
    ecdsa = asyncssh.generate_private_key("ecdsa-sha2-nistp256")
    with pytest.raises(RegistryError, match="only Ed25519 keys are accepted"):
        registry.add("alice", ecdsa.export_public_key("openssh").decode(), now=NOW)


@pytest.mark.parametrize("text", ["", "   \n", "ssh-ed25519 not-base64!", "hello world"])
def test_garbage_keys_are_refused(registry: Registry, text: str) -> None:
    with pytest.raises(RegistryError, match="public key"):
        registry.add("alice", text, now=NOW)


def test_a_private_key_is_refused_with_advice(registry: Registry) -> None:
    key, _ = ed25519_pub()
    with pytest.raises(RegistryError, match=r"private key; give the public key"):
        registry.add("alice", key.export_private_key("openssh").decode(), now=NOW)
    assert registry.list() == []


def test_duplicate_name_is_refused(registry: Registry) -> None:
    _, pub1 = ed25519_pub()
    _, pub2 = ed25519_pub()
    registry.add("alice", pub1, now=NOW)
    with pytest.raises(RegistryError, match="already registered"):
        registry.add("alice", pub2, now=NOW)


def test_the_same_key_under_two_names_is_refused(registry: Registry) -> None:
    _, pub = ed25519_pub()
    registry.add("alice", pub, now=NOW)
    with pytest.raises(RegistryError, match="already registered to 'alice'"):
        registry.add("bob", pub.replace("alice@laptop", "bob@laptop"), now=NOW)


@pytest.mark.parametrize(
    "display", ["\x1b[31mEvil", "Alice\nBob", "bidi\u202eevil", "", "   ", "x" * 65]
)
def test_unsafe_display_names_are_refused(registry: Registry, display: str) -> None:
    _, pub = ed25519_pub()
    with pytest.raises(RegistryError, match="display name"):
        registry.add("alice", pub, display=display, now=NOW)


def test_unknown_role_is_refused(registry: Registry) -> None:
    _, pub = ed25519_pub()
    with pytest.raises(RegistryError, match="invalid role"):
        registry.add("alice", pub, role="root", now=NOW)


def test_naive_time_is_refused(registry: Registry) -> None:
    _, pub = ed25519_pub()
    with pytest.raises(RegistryError, match="timezone-aware"):
        registry.add("alice", pub, now=dt.datetime(2025, 1, 1))


def test_registry_persists_across_instances(tmp_path: Path) -> None:
    _, pub = ed25519_pub()
    Registry(tmp_path / "r.db").add("alice", pub, now=NOW)
    assert Registry(tmp_path / "r.db").get("alice") is not None
