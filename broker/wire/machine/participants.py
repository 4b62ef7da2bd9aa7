"""Who is in a session: what the broker knows of the agent and the engineer,
each engineer's seat (what they asked, what is granted), and the traffic
counters. Values only; the session machine changes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from broker.wire.codes import Right

__all__ = ["AgentFacts", "EngineerFacts", "Seat", "SessionTimeouts", "Traffic"]


class EngineerFacts(Protocol):
    """What the session needs to know of the engineer (`broker.registry.Engineer` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def display(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def public_key(self) -> str: ...
    @property
    def fingerprint(self) -> str: ...


class SessionTimeouts(Protocol):
    """The broker's session limits in seconds (`broker.config.Timeouts` fits)."""

    @property
    def idle(self) -> float: ...
    @property
    def max_session(self) -> float: ...
    @property
    def handshake(self) -> float: ...
    @property
    def resume_window(self) -> float: ...


@dataclass(frozen=True)
class AgentFacts:
    """What the waiting agent told the broker in `hello`."""

    device_id: str
    device_key: bytes
    alias: str


@dataclass
class Traffic:
    """Bytes relayed and when, kept by whoever moves them: the machine for
    frames it is handed, the driver's fast relay for the rest (the hot path
    never calls the machine). Never the bytes themselves."""

    to_agent: int = 0
    to_console: int = 0
    last_activity: float = 0.0
    # After a resume, each end first replays what its peer lacks: the bytes
    # of that replay the broker had already relayed (and counted) before the
    # link broke are not counted again, so totals count each byte once.
    skip_to_agent: int = 0
    skip_to_console: int = 0

    def count(self, size: int, *, to_agent: bool, now: float) -> None:
        if to_agent:
            self.to_agent += self.fresh(size, to_agent=True)
        else:
            self.to_console += self.fresh(size, to_agent=False)
        self.last_activity = now

    def fresh(self, size: int, *, to_agent: bool) -> int:
        """How many of `size` bytes just relayed were not counted before."""
        if to_agent:
            skipped = min(size, self.skip_to_agent)
            self.skip_to_agent -= skipped
        else:
            skipped = min(size, self.skip_to_console)
            self.skip_to_console -= skipped
        return size - skipped

    def replaying(self, *, agent_has: int, console_has: int) -> None:
        """A resume: the agent replays from `console_has`, the console from
        `agent_has`; what was counted past those offsets is not counted again."""
        self.skip_to_agent = max(0, self.to_agent - agent_has)
        self.skip_to_console = max(0, self.to_console - console_has)


@dataclass
class Seat:
    """One engineer's place in the session: their two connections (the
    console, and the agent_session the agent opened for them), what they
    asked, what is granted, their own traffic and receipts."""

    console: str
    wants: tuple[str, ...]
    granted: tuple[str, ...] = ()
    agent_session: str = "agent_session"
    engineer: EngineerFacts | None = None
    token: str = ""
    created: float = 0.0
    # join_request went to the agent for this seat (its code is spent).
    requested: bool = False
    active_since: float | None = None
    # Why this seat left, once it has (the session may go on without it),
    # and when: its share of the session ends there, not at the session's end.
    left: str | None = None
    left_at: float | None = None
    traffic: Traffic = field(default_factory=Traffic)
    # A request for control or files is with the customer; a second one is
    # not forwarded. `asking` is what the receipt answering it must ask for.
    control_pending: bool = False
    asking: tuple[Right, ...] = ()
    # SHA-256 of every consent receipt recorded for this seat.
    receipts: set[str] = field(default_factory=set)
    # Engineer input the agent says it dropped (`input_dropped`): its claim,
    # held to what can be true (see `_on_input_dropped`).
    input_dropped: int = 0
    # Chat lines the agent says were said at this seat (`chat_lines`): its
    # engineer's, and the customer's while it was connected. Counts only.
    chat_engineer: int = 0
    chat_customer: int = 0
    # A link of this seat broke (its connection is held): since when, which
    # side broke first (the end reason if it never comes back), and the
    # connection resuming now with the offsets the two ends said they hold.
    interrupted_at: float | None = None
    interrupted_side: str | None = None
    resuming: str | None = None
    resume_started: float = 0.0
    resume_received: dict[str, int] = field(default_factory=dict)
