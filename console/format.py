"""Small, pure formatting for the TUI. Every string that came from the
network becomes a `rich.text.Text` here — never a markup string — after
`printable` has made control characters visible."""

from __future__ import annotations

from typing import TYPE_CHECKING

from broker.wire.codes import RIGHTS, Right
from broker.wire.text import printable

if TYPE_CHECKING:  # types only: formatting needs no relay, and a plain join no rich
    from rich.text import Text

    from broker.client.relay import LinkEvent


def literal(value: object, max_len: int = 200, style: str = "") -> Text:
    """A network string, shown exactly as received: no markup, no escapes acting."""
    from rich.text import Text  # the TUI's only: the plain join never imports rich

    return Text(printable("" if value is None else value, max_len), style=style)


def clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def entries(count: int) -> str:
    """ "1 entry", "3 entries": a listing's count in words."""
    return f"{count} {'entry' if count == 1 else 'entries'}"


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def asked_rights(*, control: bool, files: bool) -> tuple[Right, ...]:
    """What a join asks for: view always, control and files as chosen."""
    return (Right.VIEW, *((Right.CONTROL,) if control else ()), *((Right.FILES,) if files else ()))


def rights(granted: tuple[str, ...] | list[str]) -> str:
    if not granted:
        return "-"
    return " + ".join(r for r in RIGHTS if r in granted) if len(granted) > 1 else "view only"


def granted_text(granted: tuple[str, ...] | list[str]) -> str:
    """The rights an engineer holds, in words: "view only", "view and
    control", "view, control, files" (known rights only, in order)."""
    known = [r.value for r in RIGHTS if r in granted]
    if len(known) <= 1:
        return "view only"
    if len(known) == 2:
        return " and ".join(known)
    return ", ".join(known)


def link_text(event: LinkEvent) -> str | None:
    """What the engineer is told about the session's link (the plain
    terminal, the TUI and the OpenSSH proxy say the same), or None."""
    if event.kind == "retrying":
        return f"connection lost — reconnecting ({event.seconds:.0f} s)…"
    if event.kind == "peer_lost":
        return (f"the customer's connection was lost; waiting up to {event.seconds:.0f} s "
                "for it to come back")
    if event.kind == "resumed":
        return f"resumed (the connection was down {event.seconds:.1f} s)"
    return None
