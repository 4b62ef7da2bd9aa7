"""Every machine-readable code of the protocol, defined once.

`ErrorCode` is what an `error` frame (and a `ProtocolError`) carries,
`EndReason` why a session or one engineer's join ended (`ended`, `end`,
`pairing_failed` and the closing audit event), `Right` what a consent grants.
They are StrEnums, so each member equals the string on the wire: the format
is unchanged, but a typo in the code is an AttributeError, not a silent
mismatch (tests/wire/test_codes.py scans the sources for stray literals).
"""

from __future__ import annotations

from enum import StrEnum, unique

__all__ = ["AGENT_END_REASONS", "CONSOLE_END_REASONS", "PAIRING_FAILURES", "REQUESTABLE",
           "RIGHTS", "UPGRADE", "EndReason", "ErrorCode", "Right", "ordered", "upgrade_for"]


@unique
class ErrorCode(StrEnum):
    """The `code` of an `error` frame: why the broker (or a peer) refused."""

    PROTOCOL_ERROR = "protocol_error"
    BAD_JSON = "bad_json"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    UNKNOWN_FIELD = "unknown_field"
    MISSING_FIELD = "missing_field"
    TOO_BIG = "too_big"
    UNEXPECTED_MESSAGE = "unexpected_message"
    UNEXPECTED_BINARY = "unexpected_binary"
    TIMEOUT = "timeout"
    BAD_RECEIPT = "bad_receipt"
    BAD_RIGHTS = "bad_rights"
    UNKNOWN_CODE = "unknown_code"
    UNKNOWN_SESSION = "unknown_session"
    SESSION_FULL = "session_full"
    RATE_LIMITED = "rate_limited"
    LOGIN_FAILED = "login_failed"
    DEVICE_KEY_MISMATCH = "device_key_mismatch"
    FORBIDDEN = "forbidden"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    # A node of a cluster without its lease (broker.cluster): it issues no
    # codes and takes no joins; the agent retries (the balancer picks a node).
    NODE_UNAVAILABLE = "node_unavailable"
    RESUME_REFUSED = "resume_refused"  # the peer did not accept the proof
    RESUME_TIMEOUT = "resume_timeout"  # the resume's exchange did not finish in time
    INTERNAL_ERROR = "internal_error"  # the broker's own bug, logged for the operator


@unique
class EndReason(StrEnum):
    """Why a session, or one engineer's part in it, ended (its "mood")."""

    CUSTOMER_ENDED = "customer_ended"
    ENGINEER_LEFT = "engineer_left"
    ENGINEER_REMOVED = "engineer_removed"
    SHELL_EXITED = "shell_exited"
    AGENT_QUIT = "agent_quit"
    WRONG_CODE = "wrong_code"
    KEY_MISMATCH = "key_mismatch"
    DENIED = "denied"
    TIMEOUT = "timeout"
    IDLE_TIMEOUT = "idle_timeout"
    MAX_DURATION = "max_duration"
    AGENT_LOST = "agent_lost"
    CONSOLE_LOST = "console_lost"
    AGENT_UNREACHABLE = "agent_unreachable"
    PROTOCOL_ERROR = "protocol_error"
    AUDIT_UNAVAILABLE = "audit_unavailable"
    BROKER_SHUTDOWN = "broker_shutdown"
    # Written only by crash recovery, for sessions a dead broker left open.
    BROKER_CRASHED = "broker_crashed"


@unique
class Right(StrEnum):
    """What a consent grants an engineer."""

    VIEW = "view"
    CONTROL = "control"
    # Copy files to and from the folder the customer shares; orthogonal to
    # control (view and files without control is a valid grant).
    FILES = "files"


# Every right, in the order they are asked for; view always comes first.
RIGHTS: tuple[Right, ...] = (Right.VIEW, Right.CONTROL, Right.FILES)
# What a request for control asks for (a seat's files right, if it holds
# one, is kept: see `upgrade_for`).
UPGRADE: tuple[Right, ...] = (Right.VIEW, Right.CONTROL)


def ordered(rights: object) -> tuple[Right, ...]:
    """The known rights among `rights`, in canonical order (unknown dropped)."""
    given = {str(r) for r in rights} if isinstance(rights, (list, tuple, set, frozenset)) else set()
    return tuple(r for r in RIGHTS if r.value in given)


# What an engineer may ask for later in a running session (`request_control`
# with its `right`): control, as before, or files.
REQUESTABLE: tuple[Right, ...] = (Right.CONTROL, Right.FILES)


def upgrade_for(granted: object, right: str = Right.CONTROL) -> tuple[Right, ...]:
    """What a request for `right` asks for at a seat holding `granted`: view
    and that right, plus every right the seat holds, so an upgrade never
    takes a right away."""
    held = ordered(granted)
    return tuple(r for r in RIGHTS if r == Right.VIEW or r == right or r in held)

# The reasons an agent may give in its `end`, and a console in its.
AGENT_END_REASONS = frozenset({EndReason.CUSTOMER_ENDED, EndReason.SHELL_EXITED,
                               EndReason.AGENT_QUIT})
# console_lost from the console itself: it knows it cannot go on (its own
# terminal failed), so the session need not wait a resume window for it.
CONSOLE_END_REASONS = frozenset({EndReason.ENGINEER_LEFT, EndReason.CONSOLE_LOST})

# Why pairing failed, as the agent reports it in `pairing_failed`; each is
# also the session's end reason, so the engineer is told which it was.
PAIRING_FAILURES: tuple[EndReason, ...] = (EndReason.WRONG_CODE, EndReason.KEY_MISMATCH)
