"""Engineer login signatures and attempt limits (fake clock)."""

from __future__ import annotations

import os

import asyncssh
import pytest

from broker.auth import AttemptLimiter, verify_login
from broker.wire.login import login_payload

NONCE = bytes(range(32))


@pytest.fixture(scope="module")
def key() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519", comment="alice@laptop")


@pytest.fixture(scope="module")
def public(key: asyncssh.SSHKey) -> str:
    return key.export_public_key().decode()


def sign(key: asyncssh.SSHKey, user: str = "alice", nonce: bytes = NONCE) -> bytes:
    return key.sign(login_payload(user, nonce), b"ssh-ed25519")


def test_valid_signature(key: asyncssh.SSHKey, public: str) -> None:
    assert verify_login(public, "alice", NONCE, sign(key)) is True
    assert verify_login(public.strip(), "alice", NONCE, sign(key)) is True


def test_wrong_user(key: asyncssh.SSHKey, public: str) -> None:
    assert verify_login(public, "bob", NONCE, sign(key)) is False
    assert verify_login(public, "alic", NONCE, sign(key)) is False


def test_wrong_nonce(key: asyncssh.SSHKey, public: str) -> None:
    assert verify_login(public, "alice", os.urandom(32), sign(key)) is False
    assert verify_login(public, "alice", NONCE[:-1], sign(key)) is False


def test_other_key(key: asyncssh.SSHKey, public: str) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519")
    assert verify_login(public, "alice", NONCE, sign(other)) is False
    other_public = other.export_public_key().decode()
    assert verify_login(other_public, "alice", NONCE, sign(key)) is False


def test_signature_without_context(key: asyncssh.SSHKey, public: str) -> None:
    # A signature over the bare nonce (e.g. from another protocol) is no login.
    assert verify_login(public, "alice", NONCE, key.sign(NONCE, b"ssh-ed25519")) is False


@pytest.mark.parametrize(
    "signature",
    [
        b"",
        b"garbage",
        b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x01x",
        b"\x00\x00\x00\x07ssh-rsa\x00\x00\x00\x01x",
        b"\xff" * 83,
    ],
)
def test_garbage_signature(public: str, signature: bytes) -> None:
    assert verify_login(public, "alice", NONCE, signature) is False


def test_truncated_or_extended_signature(key: asyncssh.SSHKey, public: str) -> None:
    sig = sign(key)
    assert verify_login(public, "alice", NONCE, sig[:-1]) is False
    assert verify_login(public, "alice", NONCE, sig + b"\x00") is False


@pytest.mark.parametrize("line", ["", "garbage", "ssh-ed25519 AAAA", "ssh-ed25519 !!!!"])
def test_garbage_public_key(key: asyncssh.SSHKey, line: str) -> None:
    assert verify_login(line, "alice", NONCE, sign(key)) is False


def test_unencodable_user(key: asyncssh.SSHKey, public: str) -> None:
    assert verify_login(public, "\ud800", NONCE, sign(key)) is False


def test_payload_binds_user_and_nonce() -> None:
    base = login_payload("alice", NONCE)
    assert base != login_payload("bob", NONCE)
    assert base != login_payload("alice", bytes(32))
    assert login_payload("ab", b"c" + NONCE) != login_payload("abc", NONCE)
    assert base.startswith(b"consentry-login-v1\x00")


# -- attempt limits -------------------------------------------------------


def test_limit_reached() -> None:
    limiter = AttemptLimiter(limit=3, window=60)
    assert [limiter.allow("alice", t) for t in (0.0, 1.0, 2.0)] == [True, True, True]
    assert limiter.allow("alice", 3.0) is False
    assert limiter.allow("alice", 59.9) is False
    assert limiter.allow("bob", 3.0) is True  # keys are independent


def test_window_slides() -> None:
    limiter = AttemptLimiter(limit=3, window=60)
    for t in (0.0, 1.0, 2.0):
        limiter.allow("alice", t)
    assert limiter.allow("alice", 60.0) is True  # the attempt at 0 has aged out
    assert limiter.allow("alice", 60.5) is False
    assert limiter.allow("alice", 61.0) is True
    assert limiter.allow("alice", 200.0) is True


def test_refusals_do_not_extend_the_lockout() -> None:
    limiter = AttemptLimiter(limit=2, window=10)
    limiter.allow("ip", 0.0)
    limiter.allow("ip", 0.0)
    for t in range(1, 10):
        assert limiter.allow("ip", float(t)) is False
    assert limiter.allow("ip", 10.0) is True


def test_keys_may_be_tuples() -> None:
    limiter = AttemptLimiter(limit=1, window=10)
    assert limiter.allow(("alice", "10.0.0.1"), 0.0) is True
    assert limiter.allow(("alice", "10.0.0.1"), 1.0) is False
    assert limiter.allow(("alice", "10.0.0.2"), 1.0) is True


def test_memory_is_bounded() -> None:
    limiter = AttemptLimiter(limit=5, window=60)
    for t in range(1000):
        limiter.allow("mallory", t / 100)
    assert len(limiter._seen["mallory"]) <= 5


def test_prune_drops_old_keys() -> None:
    limiter = AttemptLimiter(limit=3, window=60)
    limiter.allow("old", 0.0)
    limiter.allow("recent", 50.0)
    limiter.prune(70.0)
    assert set(limiter._seen) == {"recent"}
    limiter.prune(110.0)
    assert limiter._seen == {}
    # A pruned key starts afresh.
    assert limiter.allow("old", 111.0) is True


def test_only_failures_count_and_success_never_locks_out() -> None:
    limiter = AttemptLimiter(3, window=60)
    for second in range(100):  # a busy engineer: a hundred good logins
        assert not limiter.blocked("alice", float(second))
    for second in range(3):
        limiter.record("mallory", float(second))
    assert limiter.blocked("mallory", 3.0)
    assert not limiter.blocked("mallory", 61.0)  # the window passed


def test_made_up_names_cannot_grow_the_limiter_without_bound() -> None:
    limiter = AttemptLimiter(3, window=60, max_keys=100)
    for i in range(10_000):
        limiter.record(f"name{i}", 0.0)
    assert len(limiter._seen) <= 100
    assert limiter.blocked("name9999", 0.0) is False  # one failure so far
