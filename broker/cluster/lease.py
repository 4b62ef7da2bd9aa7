"""The pure rules of cluster membership: slots, nameplate prefixes, leases.

A node holds a *slot*, a small integer that no other live node holds; its
nameplates begin with the slot as two digits, so nameplates are unique
across the cluster with no shared write per nameplate, and any node can
tell from a nameplate which node it belongs to (the slot *is* the prefix). A slot is held under a
*lease* in the node table, renewed every `RENEW_EVERY_SECONDS`; the node
counts it lost (and stops issuing nameplates) a margin *before* the table
would let another node take it, so two live nodes never issue nameplates
with one prefix. Time is passed in (monotonic seconds).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "FIRST_SLOT",
    "LAST_SLOT",
    "LEASE_SECONDS",
    "RENEW_EVERY_SECONDS",
    "SLOT_DIGITS",
    "Lease",
    "nameplate_prefix",
    "slot_of",
]

# Two digits, and no leading zero (a code never starts with 0, so that a
# dropped or added digit is caught): slots 10..99, ninety nodes at most.
FIRST_SLOT, LAST_SLOT = 10, 99
SLOT_DIGITS = 2
# A node that cannot renew for this long is out (its slot may be taken).
LEASE_SECONDS = 15.0
RENEW_EVERY_SECONDS = 3.0
# The node stops counting its lease held this long before the table says
# it ends: a renewal in flight, a clock step, and a slow event loop between.
SAFETY_MARGIN_SECONDS = 3.0


def nameplate_prefix(slot: int) -> str:
    if not FIRST_SLOT <= slot <= LAST_SLOT:
        raise ValueError(f"slot {slot} is outside {FIRST_SLOT}..{LAST_SLOT}")
    return str(slot)


def slot_of(nameplate: str) -> int | None:
    """The slot a cluster nameplate names, or None for one no node issued."""
    head = nameplate[:SLOT_DIGITS]
    if len(nameplate) <= SLOT_DIGITS or not (head.isascii() and head.isdigit()):
        return None
    slot = int(head)
    return slot if FIRST_SLOT <= slot <= LAST_SLOT else None


@dataclass(frozen=True)
class Lease:
    """A slot as this node last got it: `asked_at` is when the claim or
    renewal that granted it was *sent* (the table counts from later, so
    counting from here errs on the side of losing it early)."""

    slot: int
    asked_at: float
    seconds: float = LEASE_SECONDS
    margin: float = SAFETY_MARGIN_SECONDS

    def held(self, now: float) -> bool:
        return now < self.asked_at + self.seconds - min(self.margin, self.seconds / 2)

    def renewed(self, asked_at: float) -> Lease:
        return Lease(self.slot, asked_at, self.seconds, self.margin)
