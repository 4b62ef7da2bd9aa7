"""The admin audit API, on a logged-in console connection.

An admin's console sends `audit_query` (a filtered, keyset-paged listing,
newest first) or `audit_session_query` (one session's events, oldest first,
with the customer's signed consent receipts) while its connection is READY,
as often as it likes. Every read is itself an event: `audit_read` is appended
after the page is produced — so a page never contains its own read — and
before it is sent, so a read that cannot be logged is never served (the
append fails closed). An engineer who is not an admin is refused, and the
refusal is logged as `audit_read_refused`.

A console that follows the log asks every few seconds for what is newer than
its newest row (`after_seq`); that query leaves out the reader's own earlier
`audit_read` events, and one that finds nothing new discloses nothing and is
not logged. So an open audit browser adds one `audit_read` per refresh that
showed new events, not one per poll — without that, the log would grow by
its own reads forever (each read being a new event for the next poll).

`audit_verify` runs the whole-log check of `broker.audit.verify` (chain,
signed checkpoints, purge records) in a thread — it reads every event — and
answers `audit_verify_result`; it is logged as `audit_verified`, like the
`audit verify` command.

What leaves here is metadata plus the two personal fields an admin reviews
(the device alias and IP address), decrypted only while the data subject's
key still exists.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection

from broker.audit.interface import AuditEvent, AuditStore
from broker.audit.review import check_receipt
from broker.errors import AuditError
from broker.registry import Engineer
from broker.session import utcnow
from broker.wire.codes import ErrorCode
from broker.wire.errors import ProtocolError
from broker.wire.limits import MAX_SESSION_EVENTS
from broker.wire.messages import AUDIT_FILTERS, Message, b64decode, encode, parse_time

__all__ = ["answer_audit_request", "event_object"]

# The store allows event fields of up to 256 characters, and so does the
# schema of an event object; personal values are bounded here the same way.
_MAX_VALUE = 256
# `audit_verify_result.summary` (see broker.wire.messages).
_MAX_SUMMARY = 1000

if TYPE_CHECKING:  # the check itself is imported when one is asked for
    from broker.audit.verify import VerifyReport


def _capped(value: str | None) -> str | None:
    return None if value is None else value[:_MAX_VALUE]


def event_object(event: AuditEvent, *, with_receipt: bool = False) -> dict[str, Any]:
    """The wire form of one event (see `broker.wire.messages.check_event`)."""
    personal = event.personal or {}
    obj: dict[str, Any] = {
        "seq": event.seq, "time": event.time, "type": event.type,
        "session": event.session, "actor": event.actor, "subject": event.subject,
        "alias": _capped(personal.get("alias")), "ip": _capped(personal.get("ip")),
        "body": event.body,
    }
    if with_receipt and "receipt" in personal:
        try:
            receipt = json.loads(b64decode(personal["receipt"]))
        except (ProtocolError, ValueError):
            receipt = None  # we wrote it after verifying it; never fail a read over it
        if isinstance(receipt, dict):
            obj["receipt"] = receipt
        # Checked again now, not taken from when it was recorded: signature
        # (device key), hash in the chained body, and agreement with the body.
        checked = check_receipt(event)
        if checked is not None and checked["signature_valid"] is not None:
            obj["receipt_verified"] = (checked["signature_valid"] is True
                                       and checked["matches_log"] is True
                                       and checked["matches_event"] is True)
    return obj


def _fit(msg_type: str, events: list[dict[str, Any]], more: bool) -> tuple[str, int]:
    """Encode a reply, cutting it short (and setting `more`) until it fits
    MAX_ADMIN_FRAME; return the frame and how many events it holds."""
    while True:
        try:
            return encode(msg_type, events=events, more=more), len(events)
        except ProtocolError as exc:
            if exc.code != "too_big" or not events:
                raise
            # Keep the head: newest first for a page, oldest first for a
            # session, and either way the reader continues after the last one.
            events, more = events[: len(events) // 2], True


async def _name_devices(audit: AuditStore, events: list[AuditEvent],
                        objects: list[dict[str, Any]]) -> None:
    """Give each event of a device that records no alias of its own (a
    session's events) the alias the device reported when it last connected
    before them, as `audit show` names a session's device. One indexed read
    per device on the page; the alias only, never the IP address."""
    newest: dict[str, int] = {}
    for event, obj in zip(events, objects, strict=True):
        if obj["alias"] is None and event.subject is not None:
            newest[event.subject] = max(newest.get(event.subject, 0), event.seq)
    names: dict[str, str | None] = {}
    for subject, seq in newest.items():
        found, _ = await audit.query(subject=subject, type="agent_connected",
                                     before_seq=seq, limit=1)
        names[subject] = _capped((found[0].personal or {}).get("alias")) if found else None
    for event, obj in zip(events, objects, strict=True):
        if obj["alias"] is None and event.subject in names:
            obj["alias"] = names[event.subject]


async def _page(audit: AuditStore, msg: Message,
                reader: str) -> tuple[str, int, dict[str, Any]]:
    filters = {name: msg.get(name) for name in AUDIT_FILTERS if msg.get(name) is not None}
    following = filters.get("after_seq") is not None
    since, until = filters.get("since"), filters.get("until")
    events, more = await audit.query(
        since=None if since is None else parse_time(since),
        until=None if until is None else parse_time(until),
        actor=filters.get("engineer"), alias=filters.get("alias"),
        type=filters.get("event_type"), session=filters.get("session"),
        before_seq=filters.get("before_seq"), after_seq=filters.get("after_seq"),
        not_read_by=reader if following else None, limit=msg["limit"],
    )
    objects = [event_object(e) for e in events]
    await _name_devices(audit, events, objects)
    frame, returned = _fit("audit_page", objects, more)
    used: dict[str, Any] = {**filters, "limit": msg["limit"]}
    if "alias" in used:
        # The alias a customer chose is personal data: the event skeleton
        # records only that an alias search was made, never which alias.
        used["alias"] = True
    return frame, returned, used


async def _session(audit: AuditStore, msg: Message) -> tuple[str, int, dict[str, Any]]:
    # One more than fits a reply, to learn whether the session has more.
    events = await audit.session_events(msg["session"], limit=MAX_SESSION_EVENTS + 1)
    more = len(events) > MAX_SESSION_EVENTS
    objects = [event_object(e, with_receipt=True) for e in events[:MAX_SESSION_EVENTS]]
    frame, returned = _fit("audit_session", objects, more)
    return frame, returned, {"session": msg["session"]}


def _run_verify(db_path: Path, checkpoint_file: Path | None) -> tuple[bool, str, int | None]:
    """The whole-log check of `broker.audit.verify`, when this build has it;
    blocking (run it in a thread). Returns (ok, summary, first bad seq)."""
    try:
        from broker.audit.checkpoints import CHECKPOINT_FILE
        from broker.audit.signing import AUDIT_KEY_FILE, load_or_create_signing_key
        from broker.audit.verify import verify_log
    except ImportError:
        return False, "verify is not available on this broker", None
    data_dir = db_path.parent
    try:
        # The broker's own key: a copy kept away from the broker (`audit
        # verify --pubkey`) is stronger, and the summary says so.
        key = (load_or_create_signing_key(data_dir).verify_key
               if (data_dir / AUDIT_KEY_FILE).exists() else None)
        report = verify_log(db_path, public_key=key,
                            checkpoint_file=checkpoint_file or data_dir / CHECKPOINT_FILE)
    except (AuditError, OSError) as exc:
        return False, f"the check could not run: {exc}"[:_MAX_SUMMARY], None
    return _summarised(report, own_key=key is not None)


def _summarised(report: VerifyReport, *, own_key: bool) -> tuple[bool, str, int | None]:
    """What a verify request answers: intact or not, a bounded summary with
    the first problem, and the first bad seq."""
    summary = report.summary()
    problems = report.ordered_problems()
    if problems:
        summary += f"; first problem: {problems[0].message}"
    elif own_key:
        summary += " (checked with this broker's own audit key)"
    return report.ok, summary[:_MAX_SUMMARY], report.first_bad_seq


async def _verify_through_store(audit: AuditStore) -> tuple[bool, str, int | None]:
    """`_run_verify` for a log that is not a file (PostgreSQL): the chain and
    purge records through the store's reads (`broker.audit.verify_store`),
    with the broker's own key from its data directory (`audit.path`)."""
    from broker.audit.signing import AUDIT_KEY_FILE, load_or_create_signing_key
    from broker.audit.verify_store import verify_store

    try:
        key = (load_or_create_signing_key(audit.path).verify_key
               if (audit.path / AUDIT_KEY_FILE).exists() else None)
        report = await verify_store(audit, public_key=key)
    except (AuditError, OSError) as exc:
        return False, f"the check could not run: {exc}"[:_MAX_SUMMARY], None
    return _summarised(report, own_key=False)


async def _verify(audit: AuditStore, engineer: Engineer,
                  checkpoint_file: Path | None) -> str:
    if audit.path.is_dir():  # the data directory of a log kept in PostgreSQL
        ok, summary, first_bad = await _verify_through_store(audit)
    else:
        ok, summary, first_bad = await asyncio.to_thread(_run_verify, audit.path,
                                                         checkpoint_file)
    fields: dict[str, Any] = {"ok": ok, "summary": summary}
    if first_bad is not None:
        fields["first_bad_seq"] = first_bad
    # Recorded as `audit verify` records itself, and before the answer is
    # sent: a check that cannot be logged is not reported.
    await audit.append("audit_verified", now=utcnow(), actor=engineer.name, body={
        "ok": ok, "first_bad_seq": first_bad, "independent_key": False,
        "request": "audit_verify"})
    return encode("audit_verify_result", **fields)


async def answer_audit_request(
    audit: AuditStore, ws: ServerConnection, engineer: Engineer, msg: Message,
    *, checkpoint_file: Path | None = None,
) -> None:
    """Serve one `audit_query`, `audit_session_query` or `audit_verify`, or
    refuse it. `checkpoint_file` is where the broker appends its signed
    checkpoints (None: the default in the data directory).

    Raises `ProtocolError` (code ``forbidden``) for a non-admin, after the
    refusal is recorded; the caller sends the error and closes.
    """
    if engineer.role != "admin":
        await audit.append("audit_read_refused", now=utcnow(), actor=engineer.name,
                           body={"request": msg.type, "role": engineer.role})
        raise ProtocolError("the audit log is for admins only", ErrorCode.FORBIDDEN)
    if msg.type == "audit_verify":
        await ws.send(await _verify(audit, engineer, checkpoint_file))
        return
    if msg.type == "audit_query":
        frame, returned, used = await _page(audit, msg, engineer.name)
        if returned == 0 and msg.get("after_seq") is not None:
            await ws.send(frame)  # nothing new: nothing read, nothing to log
            return
    else:
        frame, returned, used = await _session(audit, msg)
    await audit.append("audit_read", now=utcnow(), actor=engineer.name,
                       body={"request": msg.type, "query": used, "returned": returned})
    await ws.send(frame)
