"""What an engineer signs to log in: bound to the user, the broker's nonce
and a context string, so a signature is good for this one login only."""

from __future__ import annotations

LOGIN_CONTEXT = b"consentry-login-v1\x00"
NONCE_BYTES = 32


def login_payload(user: str, nonce: bytes) -> bytes:
    return LOGIN_CONTEXT + user.encode() + b"\x00" + nonce
