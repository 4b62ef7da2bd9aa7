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
    """Counts attempts per key within a sliding window, up to `limit`.

    What a count means is its user's business (`broker.throttle`): login
    failures only ever delay a refusal, so the holder of the right key is
    never locked out; join misses refuse further joins for a while.

    Bounded in memory: each key keeps at most `limit` timestamps, and at most
    `max_keys` keys are tracked (stale ones pruned first, then the oldest), so
    a flood of made-up user names cannot grow it without end.
    """

    def __init__(self, limit: int, window: float = LOGIN_WINDOW_SECONDS,
                 max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._seen: dict[Hashable, deque[float]] = {}

    def _recent(self, key: Hashable, now: float) -> deque[float] | None:
        stamps = self._seen.get(key)
        if stamps is not None:
            while stamps and now - stamps[0] >= self.window:
                stamps.popleft()
        return stamps

    def count(self, key: Hashable, now: float) -> int:
        """Attempts recorded for `key` within the window (at most `limit`)."""
        stamps = self._recent(key, now)
        return 0 if stamps is None else len(stamps)

    def blocked(self, key: Hashable, now: float) -> bool:
        """True while `key` has used up its failures for this window."""
        stamps = self._recent(key, now)
        return stamps is not None and len(stamps) >= self.limit

    def record(self, key: Hashable, now: float) -> None:
        """Count one failed attempt for `key`."""
        stamps = self._recent(key, now)
        if stamps is None:
            if len(self._seen) >= self.max_keys:
                self.prune(now)
                while len(self._seen) >= self.max_keys:
                    del self._seen[next(iter(self._seen))]  # oldest first
            stamps = self._seen[key] = deque(maxlen=self.limit)
        stamps.append(now)

    def allow(self, key: Hashable, now: float) -> bool:
        """Record an attempt for `key` and say whether it is within the limit."""
        if self.blocked(key, now):
            return False
        self.record(key, now)
        return True

    def prune(self, now: float) -> None:
        for key in [k for k, s in self._seen.items() if not s or now - s[-1] >= self.window]:
            del self._seen[key]
