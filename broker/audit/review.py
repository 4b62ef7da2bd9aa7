"""One session as an auditor reads it: a pure summary of its audit events.

`session_report` turns a session's events (oldest first, personal fields
decrypted) into one JSON-ready dict: who joined which device, what was asked
and granted, each consent receipt decoded with its signature checked, every
change of rights, how and when it ended, for how long, and the bytes each
way. No I/O here: `consentry-broker audit show` and anything else that
reviews a session (the console, a report) share the same reading.

A consent receipt is checked three ways, each reported separately because
each answers a different question:

- ``signature_valid``: the receipt was signed by the device key the broker
  verified it with (kept beside the receipt in the subject's encrypted
  personal data). None when that key or the receipt is no longer held
  (erased, expired, or recorded before the key was kept).
- ``matches_log``: its SHA-256 is the ``receipt_sha256`` in the event body.
  The body is covered by the hash chain and the personal data is not (so it
  can be erased), so this is what ties the receipt to the tamper-evident log.
- ``matches_event``: what it says (session, engineer, key, rights, decision)
  is what the event body says.

A shared session (the customer invited more engineers) is one session id
whose events name their seat (`seat` in the body) once a second engineer
came; the first engineer's events before that name none and are seat
``console``. Its report also lists ``participants``, one per seat in the
order they asked to join: each engineer's join, consent receipts, rights
changes, requests for control, how they left (left, removed, lost, or a
join that never became a seat) and, from `session_ended`'s
``participants`` (or their own closing event), their time and bytes each
way. The session-wide fields (outcome, granted, consents) stay the first
engineer's and the totals, as for a session only one engineer ever had;
for that session ``participants`` is empty.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from broker.audit.store import AuditEvent
from broker.wire.errors import ProtocolError
from broker.wire.messages import b64decode
from broker.wire.receipt import verify_receipt

__all__ = ["check_receipt", "session_report"]

# Fields of a consent event body that the receipt must agree with.
_RECEIPT_FIELDS = ("engineer", "key_fingerprint", "asked", "granted", "decision")
# What the device told the broker about itself (from `agent_connected`).
_DEVICE_FIELDS = ("alias", "ip", "hostname", "os_user")


def _as_list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def check_receipt(event: AuditEvent) -> dict[str, Any] | None:
    """The consent receipt of one ``consent_*`` event, decoded and checked;
    None if the event is not a consent event.

    Returns ``{"held", "receipt", "signature_valid", "matches_log",
    "matches_event", "problem"}``; `receipt` is the signed JSON object as the
    device wrote it (or None when not held or not decodable).
    """
    if not event.type.startswith("consent_"):
        return None
    personal = event.personal or {}
    result: dict[str, Any] = {
        "held": "receipt" in personal, "receipt": None, "signature_valid": None,
        "matches_log": None, "matches_event": None, "problem": None,
    }
    if "receipt" not in personal:
        result["problem"] = ("the receipt is no longer held (personal data erased or "
                             "expired); the event body still records the decision")
        return result
    try:
        data = b64decode(personal["receipt"])
        decoded = json.loads(data)
    except (ProtocolError, ValueError, RecursionError):
        result["problem"] = "the stored receipt cannot be decoded"
        return result
    result["receipt"] = decoded if isinstance(decoded, dict) else None
    result["matches_log"] = hashlib.sha256(data).hexdigest() == event.body.get("receipt_sha256")
    if isinstance(decoded, dict):
        result["matches_event"] = (
            decoded.get("session") == event.session
            and all(decoded.get(k) == event.body.get(k) for k in _RECEIPT_FIELDS)
        )
    key, signature = personal.get("device_key"), personal.get("receipt_signature")
    if key is None or signature is None:
        result["problem"] = "the device key was not recorded, so the signature cannot be checked"
        return result
    try:
        verify_receipt(data, b64decode(signature), b64decode(key))
    except ProtocolError as exc:
        result["signature_valid"] = False
        result["problem"] = str(exc)
    else:
        result["signature_valid"] = True
    if result["matches_log"] is False:
        result["problem"] = "the receipt differs from the one whose hash the log recorded"
    elif result["matches_event"] is False:
        result["problem"] = "the receipt does not say what the event body says"
    return result


# The signed material of a consent, as stored (base64): enough for anyone to
# check the receipt's signature again without this code.
_SIGNED_FIELDS = ("receipt", "receipt_signature", "device_key")


def _consent(event: AuditEvent) -> dict[str, Any]:
    body = event.body
    personal = event.personal or {}
    return {
        "seq": event.seq, "time": event.time, "decision": body.get("decision"),
        "upgrade": bool(body.get("upgrade")), "engineer": body.get("engineer", event.actor),
        "key_fingerprint": body.get("key_fingerprint"),
        "asked": _as_list(body.get("asked")), "granted": _as_list(body.get("granted")),
        "receipt_time": body.get("receipt_time"), **(check_receipt(event) or {}),
        "signed": {k: personal[k] for k in _SIGNED_FIELDS if k in personal},
    }


# The first engineer's seat: the one whose early events name no seat.
FIRST_SEAT = "console"
# A seat's closing events once it was in the session, and what they mean.
_DEPARTURES = {"engineer_left": "left", "engineer_removed": "removed"}
# A seat's closing events before it was (its join never became a seat).
_JOIN_ENDS = ("join_abandoned", "pairing_failed")
_SHARE_FIELDS = ("duration_s", "bytes_to_agent", "bytes_to_console", "input_dropped_bytes",
                 "chat_lines")


def _seat_of(event: AuditEvent) -> str:
    seat = event.body.get("seat")
    return seat if isinstance(seat, str) else FIRST_SEAT


def _new_participant(seat: str, engineer: str | None) -> dict[str, Any]:
    return {"seat": seat, "engineer": engineer, "requested": None, "wants": [],
            "joined": None, "granted": [], "consents": [], "rights_changes": [],
            "control_requests": [], "left": None, "left_reason": None, "outcome": "requested",
            **{key: None for key in _SHARE_FIELDS}}


def _participants(events: list[AuditEvent]) -> list[dict[str, Any]]:
    """Each engineer of a shared session, in the order they asked to join;
    empty for a session that only ever had one engineer."""
    shared = any("seat" in e.body for e in events) or any(
        e.type == "session_ended" and "participants" in e.body for e in events)
    if not shared:
        return []
    seats: dict[str, dict[str, Any]] = {}

    def seat(event: AuditEvent) -> dict[str, Any]:
        name = _seat_of(event)
        if name not in seats:
            seats[name] = _new_participant(name, event.actor)
        return seats[name]

    for event in events:
        body = event.body
        if event.type == "join_requested":
            one = seat(event)
            one["requested"], one["wants"] = event.time, _as_list(body.get("wants"))
        elif event.type.startswith("consent_"):
            one = seat(event)
            consent = _consent(event)
            one["consents"].append(consent)
            if not consent["upgrade"] and consent["decision"] != "granted":
                one["outcome"], one["left"] = consent["decision"], event.time
                one["left_reason"] = consent["decision"]
        elif event.type in ("session_started", "engineer_joined"):
            one = seat(event)
            one["joined"], one["outcome"] = event.time, "joined"
            one["granted"] = _as_list(body.get("granted"))
        elif event.type == "rights_changed":
            one = seat(event)
            one["granted"] = _as_list(body.get("granted"))
            one["rights_changes"].append({
                "seq": event.seq, "time": event.time, "granted": one["granted"],
                "by": body.get("by"), "upgrade": bool(body.get("upgrade"))})
        elif event.type == "control_requested":
            seat(event)["control_requests"].append({"seq": event.seq, "time": event.time})
        elif event.type in _DEPARTURES:
            one = seat(event)
            one["outcome"], one["left"] = _DEPARTURES[event.type], event.time
            one["left_reason"] = body.get("reason")
            one.update({key: body[key] for key in _SHARE_FIELDS if key in body})
        elif event.type in _JOIN_ENDS and ("seat" in body or FIRST_SEAT not in seats
                                           or seats[FIRST_SEAT]["joined"] is None):
            one = seat(event)
            one["outcome"] = "abandoned" if event.type == "join_abandoned" else "pairing_failed"
            one["left"], one["left_reason"] = event.time, body.get("reason")
        elif event.type == "session_ended":
            for share in body.get("participants") or []:
                if not isinstance(share, dict) or not isinstance(share.get("seat"), str):
                    continue
                one = seats.setdefault(share["seat"],
                                       _new_participant(share["seat"], share.get("engineer")))
                if one["left"] is None:  # still in it when the session ended
                    one["outcome"], one["left"] = "ended", event.time
                    one["left_reason"] = share.get("left") or body.get("reason")
                # What a departure recorded when they went stands (the end's
                # list measures a departed seat's time up to the end).
                one.update({key: share[key] for key in _SHARE_FIELDS
                            if key in share and one[key] is None})
    return list(seats.values())


def session_report(
    session: str, events: list[AuditEvent], device: AuditEvent | None = None
) -> dict[str, Any]:
    """Everything the log says about one session.

    `events` are the session's events, oldest first; `device` is the
    device's latest ``agent_connected`` event before the session, whose
    personal data names it (alias, IP, and hostname / OS user if shared).
    """
    report: dict[str, Any] = {
        "session": session, "events": len(events), "engineer": None, "subject": None,
        "device": None, "wants": [], "requested": None, "started": None, "ended": None,
        "outcome": "unknown", "end_reason": None, "duration_s": None,
        "bytes_to_agent": None, "bytes_to_console": None, "granted": [],
        "consents": [], "rights_changes": [], "control_requests": [],
        "participants": _participants(events), "invitations": 0, "refused_joins": [],
    }
    if device is not None:
        personal = device.personal or {}
        report["device"] = {
            "connected_seq": device.seq, "connected": device.time,
            **{k: personal.get(k) for k in _DEVICE_FIELDS if k in personal},
            "erased": device.personal is None,
        }
    for event in events:
        body = event.body
        report["engineer"] = report["engineer"] or event.actor
        report["subject"] = report["subject"] or event.subject
        if event.type == "invite_issued":
            report["invitations"] += 1
            continue
        if event.type == "join_refused":
            report["refused_joins"].append({"seq": event.seq, "time": event.time,
                                            "engineer": event.actor,
                                            "reason": body.get("reason")})
            continue
        if _seat_of(event) != FIRST_SEAT:
            continue  # another engineer's: in their participant entry
        if event.type == "join_requested":
            report["requested"] = event.time
            report["wants"] = _as_list(body.get("wants"))
            report["outcome"] = "requested"
        elif event.type.startswith("consent_"):
            consent = _consent(event)
            report["consents"].append(consent)
            if not consent["upgrade"]:
                decision = consent["decision"] or event.type.removeprefix("consent_")
                report["outcome"] = decision
                if decision != "granted":
                    # A refusal ends the join there; the broker records no
                    # separate end event for it.
                    report["ended"], report["end_reason"] = event.time, decision
        elif event.type == "session_started":
            report["started"] = event.time
            report["granted"] = _as_list(body.get("granted"))
            report["outcome"] = "active"
        elif event.type == "rights_changed":
            report["granted"] = _as_list(body.get("granted"))
            report["rights_changes"].append({
                "seq": event.seq, "time": event.time, "granted": report["granted"],
                "by": body.get("by"), "upgrade": bool(body.get("upgrade")),
            })
        elif event.type == "control_requested":
            report["control_requests"].append({"seq": event.seq, "time": event.time})
        elif event.type == "pairing_failed":
            report["outcome"] = "pairing_failed"
            report["end_reason"] = body.get("reason")
            report["ended"] = event.time
        elif event.type in ("session_ended", "join_abandoned"):
            report["ended"] = event.time
            report["end_reason"] = body.get("reason")
            report["outcome"] = "ended" if event.type == "session_ended" else "abandoned"
            for key in ("duration_s", "bytes_to_agent", "bytes_to_console"):
                if key in body:
                    report[key] = body[key]
    return report
