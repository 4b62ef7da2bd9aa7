"""The engineers of a shared session, from its audit events as the broker
sends them to an admin (`audit_session`): the TUI's session view shows this
roster above the timeline. Pure, no UI; every value is still network text
and is escaped where it is shown.

Events of a shared session name their seat (`seat` in the body) once a
second engineer came; the first engineer's earlier ones name none and are
seat ``console``. A session only one engineer ever had has no roster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Participant", "session_roster"]

FIRST_SEAT = "console"
# Closing events of a seat that was in the session, and how they read.
_DEPARTURES = {"engineer_left": "left", "engineer_removed": "removed by the customer"}
_SHARE_FIELDS = ("duration_s", "bytes_to_agent", "bytes_to_console")


@dataclass
class Participant:
    seat: str
    engineer: str
    joined: str | None = None
    granted: list[str] = field(default_factory=list)
    # (decision, receipt held and its signature checked: True/False/None)
    consents: list[tuple[str, bool | None]] = field(default_factory=list)
    rights_changes: list[tuple[str, list[str]]] = field(default_factory=list)  # (time, rights)
    left: str | None = None  # how: "left", "removed by the customer", "in it at the end"...
    left_reason: str | None = None
    share: dict[str, Any] = field(default_factory=dict)  # duration_s, bytes each way


def _seat(event: dict[str, Any]) -> str:
    seat = (event.get("body") or {}).get("seat")
    return seat if isinstance(seat, str) else FIRST_SEAT


def _list(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def session_roster(events: list[dict[str, Any]]) -> list[Participant]:
    """Each engineer, in the order they asked to join; empty unless shared."""
    if not any("seat" in (e.get("body") or {}) for e in events):
        return []
    seats: dict[str, Participant] = {}

    def seat(event: dict[str, Any]) -> Participant:
        name = _seat(event)
        if name not in seats:
            seats[name] = Participant(name, str(event.get("actor") or "?"))
        return seats[name]

    for event in events:
        kind, body = str(event.get("type")), event.get("body") or {}
        when = str(event.get("time") or "")
        if kind == "join_requested":
            seat(event)
        elif kind.startswith("consent_"):
            one = seat(event)
            verified = event.get("receipt_verified") if event.get("receipt") else None
            one.consents.append((str(body.get("decision") or kind[8:]), verified))
            if not body.get("upgrade") and body.get("decision") not in (None, "granted"):
                one.left, one.left_reason = "consent " + str(body["decision"]), None
        elif kind in ("session_started", "engineer_joined"):
            one = seat(event)
            one.joined, one.granted = when, _list(body.get("granted"))
        elif kind == "rights_changed":
            one = seat(event)
            one.granted = _list(body.get("granted"))
            one.rights_changes.append((when, one.granted))
        elif kind in _DEPARTURES:
            one = seat(event)
            one.left, one.left_reason = _DEPARTURES[kind], str(body.get("reason") or "")
            one.share = {k: body[k] for k in _SHARE_FIELDS if k in body}
        elif kind in ("join_abandoned", "pairing_failed") and "seat" in body:
            one = seat(event)
            one.left = "join abandoned" if kind == "join_abandoned" else "pairing failed"
            one.left_reason = str(body.get("reason") or "")
        elif kind == "session_ended":
            for share in body.get("participants") or []:
                if not isinstance(share, dict) or not isinstance(share.get("seat"), str):
                    continue
                one = seats.setdefault(share["seat"], Participant(
                    share["seat"], str(share.get("engineer") or "?")))
                if one.left is None:
                    one.left, one.left_reason = "in it at the end", str(share.get("left") or "")
                # A departure's own figures stand (the end measures to the end).
                one.share = one.share or {k: share[k] for k in _SHARE_FIELDS if k in share}
    return list(seats.values())
