"""The consent decision, without I/O: what is asked, which keys answer it,
and when silence becomes a refusal. Time is passed in.

Default deny: Enter, `n`, any unexpected key held long enough for the timer
to run out, or a request for more than this agent allows — all end in no
access. Only an explicit `c` or `v` grants anything, and never more than
was asked or than the agent's own `max_rights`.

An engineer already watching may ask for control (an *upgrade*). The same
rules hold; only `c` grants it, and `v` keeps the session as it is (view
only), which is recorded as a refusal of the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.wire.codes import RIGHTS, Right
from broker.wire.text import printable

__all__ = ["ConsentRequest", "Decision", "decide", "prompt_lines", "remaining"]


@dataclass(frozen=True)
class ConsentRequest:
    session: str
    engineer_login: str
    engineer_display: str
    engineer_role: str
    key_fingerprint: str
    wants: tuple[str, ...]
    sas: str
    # True when the engineer is already connected (viewing) and asks for control.
    upgrade: bool = False
    # Who is already connected, when this engineer asks to join a session
    # that is running (names as the network gave them: escaped when shown).
    joining: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    decision: str  # "granted" | "denied" | "timeout"
    granted: tuple[str, ...] = ()


DENY = Decision("denied")
TIMEOUT = Decision("timeout")


def offer(request: ConsentRequest, max_rights: str) -> tuple[str, ...]:
    """The most that may be granted: what was asked, capped by the agent."""
    if Right.CONTROL in request.wants and max_rights == Right.CONTROL:
        return RIGHTS
    return (Right.VIEW,)


def decide(key: str, request: ConsentRequest, max_rights: str) -> Decision | None:
    """Map a key press to a decision, or None if the key means nothing here."""
    key = key.lower()
    if key in ("n", "\r", "\n"):
        return DENY
    if key == "v":
        # In an upgrade, "view only" is what the customer has already granted:
        # keeping it is a no to the request.
        return DENY if request.upgrade else Decision("granted", (Right.VIEW,))
    if key == "c" and Right.CONTROL in offer(request, max_rights):
        return Decision("granted", RIGHTS)
    return None


def remaining(started: float, now: float, timeout: float) -> float:
    """Seconds left before silence counts as a refusal (never negative)."""
    return max(0.0, timeout - (now - started))


def _rights_text(rights: tuple[str, ...]) -> str:
    return "view and control (type)" if Right.CONTROL in rights else "view only"


def prompt_lines(request: ConsentRequest, seconds_left: float, max_rights: str) -> list[str]:
    """The prompt, line by line, with every network string shown literally."""
    if request.upgrade:
        return _upgrade_lines(request, seconds_left, max_rights)
    can_control = Right.CONTROL in offer(request, max_rights)
    if request.joining:
        others = ", ".join(printable(name, 40) for name in request.joining)
        first = ("Another support engineer asks to join the session already running "
                 f"with {others}.")
    else:
        first = "A support engineer asks to connect to this computer."
    lines = [
        first,
        "",
        f"  Engineer:  {printable(request.engineer_display)} "
        f"({printable(request.engineer_login)}, {printable(request.engineer_role)})",
        f"  Key:       {printable(request.key_fingerprint)}",
        f"  Pairing:   {request.sas}   (the engineer sees the same on their screen)",
        f"  Asks for:  {_rights_text(request.wants)}",
    ]
    if Right.CONTROL in request.wants and not can_control:
        lines.append("  This computer allows view only, so control cannot be granted.")
    lines.append("")
    keys = ["[c] allow view and control"] if can_control else []
    keys += ["[v] view only", "[n/Enter] deny"]
    lines.append("  " + "   ".join(keys))
    lines.append(f"  No answer in {int(seconds_left + 0.999)} s means deny.")
    return lines


def _upgrade_lines(request: ConsentRequest, seconds_left: float, max_rights: str) -> list[str]:
    can_control = Right.CONTROL in offer(request, max_rights)
    lines = [
        "The support engineer watching this computer now asks for control.",
        "",
        f"  Engineer:  {printable(request.engineer_display)} "
        f"({printable(request.engineer_login)}, {printable(request.engineer_role)})",
        f"  Key:       {printable(request.key_fingerprint)}",
        f"  Pairing:   {request.sas}",
        "  Asks for:  control (to type in the session you are watching)",
        "",
    ]
    if can_control:
        lines.append("  [c] allow control   [n/v/Enter] no, keep view only")
    else:
        lines.append("  This computer allows view only, so control cannot be granted.")
        lines.append("  [n/v/Enter] keep view only")
    lines.append(f"  No answer in {int(seconds_left + 0.999)} s means no.")
    return lines
