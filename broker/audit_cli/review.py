"""Reviewing one session: `audit show SESSION` (a timeline with its consent
receipts, human or --json). The read is itself logged (`audit_read`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

from broker.audit.interface import AuditEvent, AuditStore
from broker.audit.review import session_report
from broker.audit_cli.common import add_database_url, add_parser, cli_actor, now, open_log
from broker.errors import AuditError
from broker.wire.text import printable

# Body keys shown on a timeline line, in this order; the rest is in --json.
_DETAIL_KEYS = ("seat", "wants", "decision", "asked", "granted", "by", "upgrade", "reason",
                "direction", "bytes", "outcome", "chat_lines",
                "duration_s", "bytes_to_agent", "bytes_to_console", "key_fingerprint")
# A file's direction in the story: as seen from the customer's computer.
_DIRECTION_WORDS = {"upload": "to the customer", "download": "from the customer"}


async def load_session(audit: AuditStore, session: str) -> dict[str, Any]:
    """The session's report (`broker.audit.review.session_report`) plus its
    timeline: every event, oldest first, without personal fields."""
    events = await audit.session_events(session)
    device: AuditEvent | None = None
    if events and events[0].subject is not None:
        # The device's own words about itself (alias, IP) were recorded when
        # it connected, before the join: its latest such event names it.
        found, _ = await audit.query(subject=events[0].subject, type="agent_connected",
                                     before_seq=events[0].seq, limit=1)
        device = found[0] if found else None
    report = session_report(session, events, device)
    report["timeline"] = [{
        "seq": e.seq, "time": e.time, "type": e.type, "actor": e.actor, "subject": e.subject,
        "body": e.body, "hash": e.hash,
    } for e in events]
    return report


def _words(values: object) -> str:
    if not isinstance(values, list) or not values:
        return "nothing"
    return ", ".join(printable(v, 20) for v in values)


def _chat(counts: object) -> str:
    """The chat line's counts as words ("" when nobody chatted): the audit
    has only counts, never what was said."""
    if not isinstance(counts, dict):
        return ""
    engineer, customer = counts.get("engineer"), counts.get("customer")
    if not (isinstance(engineer, int) and isinstance(customer, int)) or engineer + customer <= 0:
        return ""
    return f"; chat: {engineer} lines from the engineer side, {customer} from the customer"


def _bytes(count: object) -> str:
    if not isinstance(count, int):
        return "?"
    value = float(count)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _yes_no(value: object, yes: str, no: str, unknown: str) -> str:
    return yes if value is True else no if value is False else unknown


def _consent_lines(consent: dict[str, Any]) -> list[str]:
    what = "control request" if consent["upgrade"] else "consent"
    lines = [
        f"  {what:<15} {printable(consent['decision'], 20)} at {printable(consent['time'])}"
        f" (seq {consent['seq']}): asked {_words(consent['asked'])}; granted "
        f"{_words(consent['granted'])}",
        f"  {'':<15} engineer {printable(consent['engineer'], 64)}, key "
        f"{printable(consent['key_fingerprint'], 80)}",
    ]
    if consent.get("held"):
        lines.append(
            f"  {'':<15} receipt: signature "
            + _yes_no(consent["signature_valid"], "VALID (device key)", "INVALID",
                      "not checkable")
            + ", " + _yes_no(consent["matches_log"], "matches the hash in the log",
                             "DOES NOT match the hash in the log", "hash not compared")
            + ", " + _yes_no(consent["matches_event"], "agrees with the event",
                             "DISAGREES with the event", "not compared"))
    if consent.get("problem"):
        lines.append(f"  {'':<15} note: {printable(consent['problem'], 200)}")
    return lines


def _receipt_words(consent: dict[str, Any]) -> str:
    if not consent.get("held"):
        return "receipt not held"
    return ("receipt signature " + _yes_no(consent["signature_valid"], "VALID", "INVALID",
                                           "not checkable")
            + _yes_no(consent["matches_log"] is not False and consent["matches_event"]
                      is not False, "", " (DOES NOT match the log or the event)", ""))


_LEFT_WORDS = {"left": "left", "removed": "removed by the customer", "ended": "in it at the end",
               "abandoned": "join abandoned", "pairing_failed": "pairing failed",
               "denied": "consent denied", "timeout": "consent not answered"}


def _participant_lines(one: dict[str, Any]) -> list[str]:
    """One engineer of a shared session: join, receipts, rights, how they left, bytes."""
    head = f"  {printable(one['seat'], 20):<15} {printable(one['engineer'] or '?', 64)}"
    lines = [head + (f": asked {_words(one['wants'])} at {printable(one['requested'])}"
                     if one["requested"] else "")]
    pad = f"  {'':<15} "
    for consent in one["consents"]:
        what = "control request" if consent["upgrade"] else "consent"
        lines.append(f"{pad}{what} {printable(consent['decision'], 20)} at "
                     f"{printable(consent['time'])} (seq {consent['seq']}), "
                     + _receipt_words(consent))
    if one["joined"]:
        lines.append(f"{pad}joined {printable(one['joined'])}")
    for change in one["rights_changes"]:
        lines.append(f"{pad}rights now {_words(change['granted'])} at "
                     f"{printable(change['time'])} (by {printable(change['by'] or '?', 20)})")
    if one["left"]:
        line = (f"{pad}{_LEFT_WORDS.get(one['outcome'], printable(one['outcome'], 20))} at "
                f"{printable(one['left'])} ({printable(one['left_reason'] or '?', 40)})")
        if one["duration_s"] is not None:
            line += (f", after {printable(one['duration_s'], 20)} s; "
                     f"{_bytes(one['bytes_to_agent'])} to the agent, "
                     f"{_bytes(one['bytes_to_console'])} to the console"
                     + _chat(one.get("chat_lines")))
        lines.append(line)
    return lines


def format_report(report: dict[str, Any]) -> str:
    """The report for a terminal; everything recorded from the network made inert."""
    lines = [f"Session {printable(report['session'], 64)}"]
    device = report.get("device")
    if device:
        named = ", ".join(f"{key} {printable(json.dumps(device[key], ensure_ascii=False), 80)}"
                          for key in ("alias", "ip", "hostname", "os_user") if key in device)
        if device.get("erased"):
            named = "personal data erased or expired"
        lines.append(f"  {'device':<15} {named} (connected {printable(device['connected'])})")
    lines.append(f"  {'subject':<15} {printable(report['subject'] or '-', 64)}")
    lines.append(f"  {'engineer':<15} {printable(report['engineer'] or '-', 64)}")
    participants = report.get("participants") or []
    if participants:
        lines.append(f"  {'engineers':<15} {len(participants)} in this shared session "
                     f"(invitations issued: {report.get('invitations', 0)})")
        for one in participants:
            lines += _participant_lines(one)
    # The story in the order it happened.
    consents = {consent["seq"]: consent for consent in report["consents"]}
    for one in participants:
        consents.update({consent["seq"]: consent for consent in one["consents"]})
    for event in report["timeline"]:
        body, when = event["body"], printable(event["time"])
        seat = f" [{printable(body['seat'], 20)}]" if isinstance(body.get("seat"), str) else ""
        if event["type"] == "join_requested":
            lines.append(f"  {'requested':<15} {when}: {_words(body.get('wants'))}"
                         + (f" by {printable(event['actor'] or '?', 64)}{seat}" if seat else ""))
        elif event["seq"] in consents:
            lines += _consent_lines(consents[event["seq"]])
        elif event["type"] == "session_started":
            lines.append(f"  {'started':<15} {when} with {_words(body.get('granted'))}")
        elif event["type"] == "rights_changed":
            lines.append(f"  {'rights':<15} {when}: now {_words(body.get('granted'))} "
                         f"(by {printable(body.get('by') or '?', 20)})" + seat)
        elif event["type"] == "control_requested":
            lines.append(f"  {'asked':<15} {when}: the engineer asked for "
                         f"{_words(body.get('asked'))}" + seat)
        elif event["type"] == "file_transferred":
            # Never a name: the log has none (a name may be personal data).
            direction = _DIRECTION_WORDS.get(str(body.get("direction")), "?")
            lines.append(f"  {'file':<15} {when}: {_bytes(body.get('bytes'))} {direction}, "
                         f"{printable(body.get('outcome') or '?', 20)}" + seat)
        elif event["type"] == "invite_issued":
            lines.append(f"  {'invited':<15} {when}: the customer issued a code for "
                         "another engineer")
        elif event["type"] == "engineer_joined":
            lines.append(f"  {'joined':<15} {when}: {printable(event['actor'] or '?', 64)}"
                         f" with {_words(body.get('granted'))}" + seat)
        elif event["type"] in ("engineer_left", "engineer_removed"):
            lines.append(f"  {event['type'].removeprefix('engineer_'):<15} {when}: "
                         f"{printable(event['actor'] or '?', 64)} "
                         f"({printable(body.get('reason') or '?', 40)})" + seat)
        elif event["type"] == "join_refused":
            lines.append(f"  {'refused':<15} {when}: {printable(event['actor'] or '?', 64)} "
                         f"({printable(body.get('reason') or '?', 40)}; nobody was asked)")
        elif event["type"] in ("join_abandoned", "pairing_failed") and seat:
            lines.append(f"  {'join failed':<15} {when}: {printable(event['actor'] or '?', 64)}"
                         f" ({printable(body.get('reason') or '?', 40)}){seat}")
        elif event["type"] in ("session_ended", "join_abandoned", "pairing_failed"):
            line = f"  {'ended':<15} {when}: {printable(body.get('reason') or '?', 40)}"
            if "duration_s" in body:
                line += (f", after {printable(body['duration_s'], 20)} s; "
                         f"{_bytes(body.get('bytes_to_agent'))} to the agent, "
                         f"{_bytes(body.get('bytes_to_console'))} to the console"
                         + _chat(body.get("chat_lines")))
            lines.append(line)
    lines.append(f"  {'outcome':<15} {printable(report['outcome'], 40)}")
    lines.append("")
    lines.append("Timeline (oldest first)")
    for event in report["timeline"]:
        details = " ".join(
            f"{key}={printable(json.dumps(event['body'][key], ensure_ascii=False), 80)}"
            for key in _DETAIL_KEYS if key in event["body"])
        lines.append(f"  {event['seq']:>6} {printable(event['time'])} "
                     f"{printable(event['type'], 40):<20} {details}".rstrip())
    for consent in sorted(consents.values(), key=lambda c: c["seq"]):
        if consent.get("receipt") is not None:
            lines.append("")
            lines.append(f"Signed consent receipt (seq {consent['seq']}):")
            lines.append("  " + printable(json.dumps(consent["receipt"], sort_keys=True,
                                                     ensure_ascii=False), 2000))
        # As stored, base64: what anyone needs to check the signature again
        # (Ed25519 over the receipt's bytes, by the device key).
        for key, label in (("receipt", "receipt bytes"), ("receipt_signature", "signature"),
                           ("device_key", "device key")):
            value = consent.get("signed", {}).get(key)
            if isinstance(value, str):
                lines.append(f"  {label + ':':<15} {printable(value, 4000)}")
    return "\n".join(lines)


# A prefix shorter than this is not taken to mean one session: ids are
# random, so a few characters match by chance once the log holds many.
MIN_PREFIX = 4
_CANDIDATES_SHOWN = 10


class AmbiguousSession(AuditError):
    """A prefix that matches several sessions."""


async def resolve_session(audit: AuditStore, typed: str) -> str:
    """The session `typed` names: itself if the log has it, else the one
    session whose id starts with it (as `audit list` once printed them cut
    short). Raises AuditError naming the candidates when several match;
    returns `typed` unchanged when none does (the caller reports that)."""
    if len(typed) < MIN_PREFIX or await audit.session_events(typed, limit=1):
        return typed
    found = await audit.sessions_starting(typed, limit=_CANDIDATES_SHOWN + 1)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        shown = ", ".join(printable(s, 64) for s in found[:_CANDIDATES_SHOWN])
        count = f"over {_CANDIDATES_SHOWN}" if len(found) > _CANDIDATES_SHOWN else len(found)
        raise AmbiguousSession(f"{printable(typed, 64)!r} is the start of {count} session "
                               f"ids: {shown}; type more of it")
    return typed



async def _audit_show(args: argparse.Namespace) -> None:
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        try:
            session = await resolve_session(audit, args.session)
        except AmbiguousSession:
            await audit.append("audit_read", now=now(), actor=cli_actor(), body={
                "command": "show", "session": args.session[:128], "returned": 0})
            raise
        report = await load_session(audit, session)
        if report["events"]:
            try:
                if args.json:
                    print(json.dumps(report, ensure_ascii=True, sort_keys=True))
                else:
                    print(format_report(report))
                sys.stdout.flush()
            except BrokenPipeError:
                # `| head`: the reader had enough. The read still happened.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        # Recorded after the output, as `audit list` does, and also when
        # nothing was found: looking is a read too.
        body: dict[str, object] = {"command": "show", "session": session[:128],
                                   "returned": report["events"]}
        if session != args.session:
            body["asked"] = args.session[:128]  # what was typed: a prefix of it
        await audit.append("audit_read", now=now(), actor=cli_actor(), body=body)
    if not report["events"]:
        raise AuditError(f"no audit events for session {printable(args.session, 64)!r}: give "
                         f"its id as `audit list` prints it, or at least its first "
                         f"{MIN_PREFIX} characters")


def cmd_audit_show(args: argparse.Namespace) -> int:
    asyncio.run(_audit_show(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "show",
                   "one session: its timeline, consent receipts (signature checked), rights, "
                   "end, duration and bytes; for a shared session each engineer's join, "
                   "receipts, rights, departure and bytes (this read is logged)")
    p.add_argument("session", metavar="SESSION",
                   help="the session id, as in `audit list`, or enough of its start "
                        f"(at least {MIN_PREFIX} characters) to name one session")
    p.add_argument("--json", action="store_true", help="one JSON object")
    add_database_url(p, "read the session from")
    p.set_defaults(func=cmd_audit_show)
