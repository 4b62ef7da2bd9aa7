"""The consent decision, without I/O: what is asked, which keys answer it,
and when silence becomes a refusal. Time is passed in.

Default deny: Enter, `n`, any unexpected key held long enough for the timer
to run out, or a request for more than this agent allows — all end in no
access. Only an explicit `a`, `c` or `v` grants anything, and never more than
was asked or than the agent's own `max_rights`.

An engineer already connected may ask for control or for files (an
*upgrade*). The same rules hold; only `c` grants control, only `f` grants
files, and `v` keeps the session as it is, which is recorded as a refusal
of the request.
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
    # True when the engineer is already connected and asks for one more
    # right, `adds` (control or files); `wants` is then every right the seat
    # would hold, the ones it has kept.
    upgrade: bool = False
    adds: str = Right.CONTROL
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
    if request.upgrade:
        # The one key that names the right asked for grants it, with what the
        # seat holds already; only if all of that is allowed here.
        accept = "f" if request.adds == Right.FILES else "c"
        if key == accept and set(request.wants) <= set(can):
            return Decision("granted", tuple(r for r in RIGHTS if r in request.wants))
        return None
    if key == "a" and len(can) > 1:
        return Decision("granted", can)
    if key == "c" and Right.CONTROL in can:
        return Decision("granted", (Right.VIEW, Right.CONTROL))
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


def _kept_text(rights: tuple[str, ...]) -> str:
    """What the seat holds now, in words: what a "no" keeps."""
    held = [r.value for r in RIGHTS if r in rights]
    return "view only" if len(held) == 1 else " and ".join(held) if len(held) == 2 else \
        ", ".join(held)


def _upgrade_lines(request: ConsentRequest, seconds_left: float,
                   max_rights: str | tuple[str, ...]) -> list[str]:
    files = request.adds == Right.FILES
    can = set(request.wants) <= set(offer(request, max_rights))
    kept = _kept_text(tuple(r for r in request.wants if r != request.adds))
    what = ("files (to copy files to and from a folder on this computer; you see "
            "each one)" if files else "control (to type in the session you are watching)")
    lines = [
        "The support engineer connected to this computer now asks "
        + ("to copy files." if files else "for control."),
        "",
        f"  Engineer:  {printable(request.engineer_display)} "
        f"({printable(request.engineer_login)}, {printable(request.engineer_role)})",
        f"  Key:       {printable(request.key_fingerprint)}",
        f"  Pairing:   {request.sas}",
        f"  Asks for:  {what}",
        "",
    ]
    if can:
        key = "[f] allow files" if files else "[c] allow control"
        lines.append(f"  {key}   [n/v/Enter] no, keep {kept}")
    else:
        lines += _not_allowed(request, tuple(offer(request, max_rights)))
        lines.append(f"  [n/v/Enter] keep {kept}")
    lines.append(f"  No answer in {int(seconds_left + 0.999)} s means no.")
    return lines
