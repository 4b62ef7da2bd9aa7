"""What a machine asks its driver to do. The driver performs a batch in order.

A `Record` that is not `quiet` must be durable before anything after it
happens: if it cannot be written, the driver performs nothing more of that
batch and tells the machine (`SessionMachine.audit_failed`), which undoes
the input that asked for the record and ends the session. Quiet records are
written while tearing down; a failure there is logged, as nothing is left
to refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Action", "Close", "Ended", "Forward", "IssueInvite", "IssueNameplate", "OpenRelay",
           "Record", "Refuse", "Seal", "Send", "StopRelay"]


@dataclass(frozen=True)
class Send:
    """Send control message `type` with `fields` to connection `to`."""

    to: str
    type: str
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Forward:
    """Relay one opaque binary frame to connection `to` (the slow path; the
    fast relay moves frames without the machine, see `OpenRelay`)."""

    to: str
    data: bytes


@dataclass(frozen=True)
class Record:
    """Append an audit event of this session (the driver adds the time).

    `sealable`: the customer gets the signed checkpoint that covers this
    event (a consent) when a later `Seal` of the same batch says so.
    `personal`: kept encrypted with the subject's personal data."""

    event: str
    body: Mapping[str, Any]
    session: str | None = None
    actor: str | None = None
    subject: str | None = None
    personal: Mapping[str, str] | None = None
    quiet: bool = False
    sealable: bool = False


@dataclass(frozen=True)
class Seal:
    """Send `to` the signed checkpoint covering the last sealable `Record`
    of this batch, as `consent_sealed`; `background`: beside the session,
    without holding anything up (else before the next action)."""

    to: str
    background: bool


@dataclass(frozen=True)
class OpenRelay:
    """Consent is recorded: binary frames may now go straight between the
    two connections of one seat, `agent` and `console` (counted in that
    seat's `Traffic`)."""

    agent: str = "agent_session"
    console: str = "console"


@dataclass(frozen=True)
class StopRelay:
    """Back to the slow path for teardown: nothing more is relayed between
    `agent` and `console` (None: between any of the session's pairs)."""

    agent: str | None = None
    console: str | None = None


@dataclass(frozen=True)
class IssueNameplate:
    """Give the agent's control connection a fresh nameplate (the old one was spent)."""

    to: str


@dataclass(frozen=True)
class IssueInvite:
    """Bind a fresh nameplate to this session (replacing its previous
    invitation) and send it to `to` as `invitation`."""

    to: str


@dataclass(frozen=True)
class Refuse:
    """Send `to` an `error` with `code` and `message`, then close it as a
    protocol failure (a connection outside the session's own pair)."""

    to: str
    code: str
    message: str


@dataclass(frozen=True)
class Close:
    """Close connection `to` normally, with `reason` (its `ended` went first)."""

    to: str
    reason: str


@dataclass(frozen=True)
class Ended:
    """The session has ended, once, with `reason` (its "mood"); the last
    action of the batch that ended it."""

    reason: str


Action = (Send | Forward | Record | Seal | OpenRelay | StopRelay | IssueNameplate | IssueInvite
          | Refuse | Close | Ended)
