"""Engineer login: Ed25519 challenge-response, and attempt limits.

The decision functions are pure; the server feeds them the registry entry,
the nonce it sent and the current time.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

import asyncssh

from broker.wire.limits import LOGIN_WINDOW_SECONDS
from broker.wire.login import login_payload

__all__ = ["AttemptLimiter", "verify_login"]


def verify_login(public_key_line: str, user: str, nonce: bytes, signature: bytes) -> bool:
    """True if `signature` is the registered key's signature of this login."""
    try:
        key = asyncssh.import_public_key(public_key_line)
        return bool(key.verify(login_payload(user, nonce), signature))
    except (asyncssh.KeyImportError, ValueError, TypeError):
        return False


class AttemptLimiter:
    """At most `limit` attempts per key within a sliding window.

    Bounded in memory: each key keeps at most `limit` timestamps, and keys
    whose window has passed are dropped when `prune` runs.
    """

    def __init__(self, limit: int, window: float = LOGIN_WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self._seen: dict[Hashable, deque[float]] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        """Record an attempt for `key` and say whether it is within the limit."""
        stamps = self._seen.setdefault(key, deque(maxlen=self.limit))
        while stamps and now - stamps[0] >= self.window:
            stamps.popleft()
        if len(stamps) >= self.limit:
            return False
        stamps.append(now)
        return True

    def prune(self, now: float) -> None:
        for key in [k for k, s in self._seen.items() if not s or now - s[-1] >= self.window]:
            del self._seen[key]
