"""The consent decision, without I/O: what is asked, which keys answer it,
and when silence becomes a refusal. Time is passed in.

Default deny: Enter, `n`, any unexpected key held long enough for the timer
to run out, or a request for more than this agent allows — all end in no
access. Only an explicit `a`, `c` or `v` grants anything, and never more than
was asked or than the agent's own `max_rights`.

An engineer already watching may ask for control (an *upgrade*). The same
rules hold; only `c` grants it, and `v` keeps the session as it is (view
only), which is recorded as a refusal of the request.
"""

from __future__ import annotations

from dataclasses import dataclass

from broker.wire.codes import RIGHTS, Right
from broker.wire.text import printable

__all__ = ["ConsentRequest", "Decision", "allowed", "decide", "offer", "parse_max_rights",
           "prompt_lines", "remaining"]


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


def allowed(max_rights: str | tuple[str, ...]) -> tuple[Right, ...]:
    """The rights this computer allows, from `--max-rights` (a comma list;
    `control` alone keeps its old meaning, view and control). View is
    always allowed; anything unknown allows nothing more (fail closed)."""
    names = max_rights.split(",") if isinstance(max_rights, str) else list(max_rights)
    given = {n.strip() for n in names}
    return tuple(r for r in RIGHTS if r == Right.VIEW or r.value in given)


def parse_max_rights(text: str) -> tuple[Right, ...] | None:
    """`--max-rights` checked: None when it names anything but known rights."""
    names = [n.strip() for n in text.split(",")]
    if not names or any(n not in RIGHTS for n in names):
        return None
    return allowed(text)


def offer(request: ConsentRequest, max_rights: str | tuple[str, ...]) -> tuple[str, ...]:
    """The most that may be granted: what was asked, capped by the agent."""
    cap = allowed(max_rights)
    return tuple(r for r in RIGHTS if r == Right.VIEW or (r in request.wants and r in cap))


def decide(key: str, request: ConsentRequest,
           max_rights: str | tuple[str, ...]) -> Decision | None:
    """Map a key press to a decision, or None if the key means nothing here."""
    key = key.lower()
    can = offer(request, max_rights)
    if key in ("n", "\r", "\n"):
        return DENY
    if key == "v":
        # In an upgrade, "view only" is what the customer has already granted:
        # keeping it is a no to the request.
        return DENY if request.upgrade else Decision("granted", (Right.VIEW,))
    if key == "a" and len(can) > 1 and not request.upgrade:
        return Decision("granted", can)
    if key == "c" and Right.CONTROL in can:
        # View and control; in an upgrade, the files the seat holds are kept
        # (they are part of what an upgrade asks for).
        keep = (Right.FILES,) if request.upgrade and Right.FILES in can else ()
        return Decision("granted", (Right.VIEW, Right.CONTROL, *keep))
    return None


def remaining(started: float, now: float, timeout: float) -> float:
    """Seconds left before silence counts as a refusal (never negative)."""
    return max(0.0, timeout - (now - started))


def _rights_text(rights: tuple[str, ...]) -> str:
    return "view and control (type)" if Right.CONTROL in rights else "view only"


def _not_allowed(request: ConsentRequest, can: tuple[str, ...]) -> list[str]:
    """A line for each right asked that this computer does not allow."""
    lines = []
    if Right.CONTROL in request.wants and Right.CONTROL not in can:
        lines.append("  This computer does not allow control, so control cannot be granted.")
    if Right.FILES in request.wants and Right.FILES not in can:
        lines.append("  This computer does not allow copying files, so files cannot be granted.")
    return lines


def prompt_lines(request: ConsentRequest, seconds_left: float,
                 max_rights: str | tuple[str, ...]) -> list[str]:
    """The prompt, line by line, with every network string shown literally."""
    if request.upgrade:
        return _upgrade_lines(request, seconds_left, max_rights)
    can = offer(request, max_rights)
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
    if Right.FILES in request.wants:
        lines.append("  Files:     copy files to and from a folder on this computer "
                     "(you see each one)")
    lines += _not_allowed(request, can)
    lines.append("")
    keys = []
    if Right.FILES in can:
        # With view and control only, [c] already says it all.
        keys.append("[a] allow all of this")
    if Right.CONTROL in can:
        keys.append("[c] allow view and control" + (" (no files)" if Right.FILES in can else ""))
    keys += ["[v] view only", "[n/Enter] deny"]
    lines.append("  " + "   ".join(keys))
    lines.append(f"  No answer in {int(seconds_left + 0.999)} s means deny.")
    return lines


def _upgrade_lines(request: ConsentRequest, seconds_left: float,
                   max_rights: str | tuple[str, ...]) -> list[str]:
    can_control = Right.CONTROL in offer(request, max_rights)
    kept = "view and files" if Right.FILES in request.wants else "view only"
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
        lines.append(f"  [c] allow control   [n/v/Enter] no, keep {kept}")
    else:
        lines.append("  This computer does not allow control, so control cannot be granted.")
        lines.append(f"  [n/v/Enter] keep {kept}")
    lines.append(f"  No answer in {int(seconds_left + 0.999)} s means no.")
    return lines
