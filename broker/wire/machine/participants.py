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

    def count(self, size: int, *, to_agent: bool, now: float) -> None:
        if to_agent:
            self.to_agent += size
        else:
            self.to_console += size
        self.last_activity = now


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
