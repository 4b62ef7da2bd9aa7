"""Which new connections the broker takes, decided before TLS costs anything.

A connection is *pending* from its TCP accept until the broker has accepted
the peer's introduction (an agent's `hello`, a console's login proof, an
agent session's `attach`): until then anyone who reaches the port can hold
it, for up to the TLS, WebSocket and first-message timeouts. Each one holds
a file descriptor and a few tens of KiB, so a flood of idle sockets could
otherwise exhaust either and lock out real agents. Three rules:

- one source (an IPv4 address, an IPv6 /64) holds at most
  `MAX_PENDING_PER_SOURCE` pending connections; a newer one from it takes
  the place of its oldest (closed at once), so a flood from an address
  cannot shut out an honest client behind the same address (an engineer
  whose right key must always get in) - it can only churn its own sockets;
- all sources together hold at most `pending_cap` pending connections;
  when that is full, the oldest pending connection makes room for the new
  one, so a flood must keep replacing its own sockets faster than a real
  client finishes its handshake (milliseconds) to keep anyone out;
- descriptors: the broker raises its soft open-file limit to the hard limit
  at start and never lets connections take the last `RESERVED_DESCRIPTORS`,
  which stay for the audit database, the checkpoint file, the registry a
  login reads and the sessions already established. Past that, a new
  connection is closed at once (it cannot be served anyway).

The decisions here are pure (`Admission`): the listener (`broker.listener`)
does the I/O and tells it what happened.
"""

from __future__ import annotations

import ipaddress
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "MAX_PENDING_PER_SOURCE",
    "RESERVED_DESCRIPTORS",
    "Admission",
    "Decision",
    "Ticket",
    "open_descriptors",
    "raise_open_file_limit",
    "source_of",
]

# Pending connections one source may hold at once. A real client is pending
# for one TLS handshake and one message - milliseconds - so even an office
# of agents behind one NAT reconnecting together after a broker restart
# gets through in a few retries; a single address can no longer pin more
# than this many descriptors for the ~30 s an unfinished handshake may last.
MAX_PENDING_PER_SOURCE = 32

# Descriptors connections never take: the audit database with its WAL and
# shared-memory files, the registry opened per login (one per worker thread,
# up to 32), the checkpoint file and any command it feeds, log files, and
# the event loop's own. 64 covers them with room to spare.
RESERVED_DESCRIPTORS = 64

# Of the descriptors left for connections, the share pending ones may hold:
# the rest stays for connections that got in (waiting agents, sessions).
PENDING_SHARE = 0.5

# IPv6 hands a whole /64 to one subscriber: counting per address would let
# one host appear as 2**64 sources.
_IPV6_SOURCE_PREFIX = 64


def source_of(address: str) -> str:
    """The key one source's connections are counted under."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address  # not an IP (a Unix socket): count it as given
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        net = ipaddress.IPv6Network((ip, _IPV6_SOURCE_PREFIX), strict=False)
        return str(net)
    return str(ip)


@dataclass(eq=False)
class Ticket:
    """One admitted connection, from accept until its socket is closed."""

    source: str
    pending: bool = True
    closed: bool = False
    # How to drop this connection if a newer one needs its place.
    drop: Callable[[], None] = field(default=lambda: None, repr=False)


class Decision(Enum):
    ADMIT = "admit"
    REFUSE_FULL = "refuse_full"  # no descriptor left for another connection


@dataclass
class Admission:
    """Counts of the connections the broker holds, and what to do with a new one.

    `capacity` is how many connections may be open at once (descriptors
    left after the reserve); pending ones may take `pending_cap` of them.
    """

    capacity: int
    per_source: int = MAX_PENDING_PER_SOURCE
    pending_share: float = PENDING_SHARE
    open: int = 0
    # Pending tickets in admission order (dicts keep it): the first is the
    # oldest, the one dropped to make room.
    _pending: dict[Ticket, None] = field(default_factory=dict)
    # Each source's pending tickets, oldest first.
    _by_source: dict[str, dict[Ticket, None]] = field(default_factory=dict)
    closed_total: int = 0
    refused: dict[Decision, int] = field(default_factory=lambda: dict.fromkeys(
        (Decision.REFUSE_FULL,), 0))
    evicted: int = 0

    @property
    def pending_cap(self) -> int:
        return max(1, int(self.capacity * self.pending_share))

    @property
    def pending(self) -> int:
        return len(self._pending)

    def decide(self, source: str) -> tuple[Decision, Ticket | None]:
        """Decide on a connection from `source`: ADMIT with the pending
        ticket to drop first (None if there is room), or a refusal."""
        own = self._by_source.get(source)
        if own is not None and len(own) >= self.per_source:
            return Decision.ADMIT, next(iter(own))  # the source's own oldest
        if self.open >= self.capacity and not self._pending:
            self.refused[Decision.REFUSE_FULL] += 1
            return Decision.REFUSE_FULL, None
        full = self.open >= self.capacity or len(self._pending) >= self.pending_cap
        return Decision.ADMIT, next(iter(self._pending)) if full else None

    def admit(self, source: str) -> Ticket:
        ticket = Ticket(source)
        self.open += 1
        self._pending[ticket] = None
        self._by_source.setdefault(source, {})[ticket] = None
        return ticket

    def established(self, ticket: Ticket) -> None:
        """The peer introduced itself: it no longer counts against its source."""
        if ticket.pending and not ticket.closed:
            self._unpend(ticket)

    def evict(self, ticket: Ticket) -> None:
        """Drop a pending connection to make room (it is closed, then released)."""
        if ticket.pending and not ticket.closed:
            self.evicted += 1
            self._unpend(ticket)
            ticket.drop()

    def release(self, ticket: Ticket) -> None:
        """The connection's socket is closed. Safe to call more than once."""
        if ticket.closed:
            return
        if ticket.pending:
            self._unpend(ticket)
        ticket.closed = True
        self.open -= 1
        self.closed_total += 1

    def _unpend(self, ticket: Ticket) -> None:
        ticket.pending = False
        self._pending.pop(ticket, None)
        own = self._by_source[ticket.source]
        own.pop(ticket, None)
        if not own:
            del self._by_source[ticket.source]


def capacity_for(soft_limit: int, in_use: int, reserve: int = RESERVED_DESCRIPTORS) -> int:
    """Connections that fit under `soft_limit` with `in_use` descriptors
    already open (listening sockets, databases) and `reserve` kept free."""
    return max(0, soft_limit - in_use - reserve)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return (soft, hard).

    The soft limit is often 1,024 while the hard one is far higher: each
    held agent takes a descriptor, so the broker takes what it is allowed.
    An unlimited hard limit is capped at the kernel's `nr_open` (the most a
    process may ever have; asking for more fails).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else _kernel_nr_open()
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, hard  # keep what we have; capacity follows the real limit
    return target, hard


def _kernel_nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 20  # Linux's default nr_open


def open_descriptors() -> int:
    """How many descriptors this process has open now (Linux, macOS)."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(where)) - 1  # listing it opened one
        except OSError:
            continue
    return 0
