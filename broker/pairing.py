"""Nameplates: the public half of a join code, as a pure bookkeeping object.

A nameplate routes a console's ``join`` to one waiting agent. It is unique
among waiting agents, single-use (claimed once, then gone), expires after
`CODE_LIFETIME_SECONDS`, and drawn sparsely (`NAMEPLATE_SPARSITY`), so a
join with a made-up nameplate almost never reaches anyone. Time is passed
in, so tests use a fake clock.

In a cluster each node's nameplates begin with its `prefix` (its slot,
`broker.cluster.lease`): unique across nodes with no shared write, and
saying which node a join belongs on. The sparsity is the drawn digits'.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from broker.wire.limits import CODE_LIFETIME_SECONDS, MAX_NAMEPLATE_DIGITS, NAMEPLATE_SPARSITY

__all__ = ["Nameplate", "NameplateBook"]


@dataclass(frozen=True)
class Nameplate:
    value: str
    owner: str
    expires_at: float


class NameplateBook:
    """Which agent waits behind which nameplate."""

    def __init__(self, lifetime: float = CODE_LIFETIME_SECONDS, prefix: str = "") -> None:
        self.lifetime = lifetime
        self.prefix = prefix
        self._by_value: dict[str, Nameplate] = {}
        self._by_owner: dict[str, Nameplate] = {}

    def __len__(self) -> int:
        return len(self._by_value)

    def _digits(self) -> int:
        # Sparse: the space holds NAMEPLATE_SPARSITY values per waiting agent
        # (counting the one being drawn), so a made-up nameplate - a sweep, a
        # typo - finds a waiting agent with odds of at most 1 in 1,000, and a
        # draw rarely collides. Four digits while up to 9 agents wait, five up
        # to 90, ... eight (the most) up to 90,000; denser only beyond that.
        waiting = len(self._by_value) + 1
        digits = 1
        most = MAX_NAMEPLATE_DIGITS - len(self.prefix)
        while waiting * NAMEPLATE_SPARSITY > 9 * 10 ** (digits - 1) and digits < most:
            digits += 1
        return digits

    def allocate(self, owner: str, now: float) -> Nameplate:
        """Give `owner` a fresh nameplate, replacing any it held."""
        self.release(owner)
        self.expire(now)
        digits = self._digits()
        low = 10 ** (digits - 1)
        while True:
            value = self.prefix + str(low + secrets.randbelow(9 * low))
            if value not in self._by_value:
                break
        plate = Nameplate(value, owner, now + self.lifetime)
        self._by_value[value] = plate
        self._by_owner[owner] = plate
        return plate

    def claim(self, value: str, now: float) -> str | None:
        """Consume a nameplate: return its owner, or None if unknown or expired."""
        plate = self._by_value.get(value)
        if plate is None:
            return None
        self._remove(plate)
        if now >= plate.expires_at:
            return None
        return plate.owner

    def current(self, owner: str) -> Nameplate | None:
        return self._by_owner.get(owner)

    def clear(self) -> None:
        """Forget every nameplate (the node's prefix is no longer its own)."""
        self._by_value.clear()
        self._by_owner.clear()

    def release(self, owner: str) -> None:
        plate = self._by_owner.get(owner)
        if plate is not None:
            self._remove(plate)

    def expire(self, now: float) -> list[str]:
        """Drop expired nameplates; return the owners that need a new one."""
        stale = [p for p in self._by_value.values() if now >= p.expires_at]
        for plate in stale:
            self._remove(plate)
        return [p.owner for p in stale]

    def _remove(self, plate: Nameplate) -> None:
        self._by_value.pop(plate.value, None)
        if self._by_owner.get(plate.owner) is plate:
            del self._by_owner[plate.owner]
