"""Reading the log: `audit list` (filters, JSON Lines)."""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys

from broker.audit.interface import AuditEvent, AuditStore
from broker.audit_cli.common import (
    add_database_url,
    add_parser,
    cli_actor,
    now,
    open_log,
    parse_flag_time,
)
from broker.errors import ConfigError
from broker.wire.text import printable

# -- audit --------------------------------------------------------------------


# Personal fields of a consent event: the signed receipt (~900 characters of
# base64 with its signature and the device key). `audit show` and --json give
# them whole; a listing says only that they are held.
_SIGNED_FIELDS = frozenset({"receipt", "receipt_signature", "device_key"})
# Body fields of a consent event left to `audit show`: checksums and times of
# the receipt, and what the line already says (the actor, the type).
_CONSENT_DETAIL = frozenset({"key_fingerprint", "receipt_time", "receipt_sha256"})
_PLAIN = re.compile(r"[A-Za-z0-9_.:@/+-]{1,64}")
# Longer values are cut on a listing line (whole in --json and `audit show`).
_MAX_VALUE = 64


def _value(value: object) -> str:
    """A body value as a person reads it: bare words, lists of them joined by
    commas, anything else as JSON; inert and bounded either way."""
    if isinstance(value, str) and _PLAIN.fullmatch(value):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    if (isinstance(value, list) and value
            and all(isinstance(v, str) and _PLAIN.fullmatch(v) for v in value)):
        text = ",".join(value)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if len(text) > _MAX_VALUE:
        text = text[:_MAX_VALUE - 1] + "…"
    return printable(text, _MAX_VALUE + 16)


# Said first on a line, when an event has them: what happened, before counts.
_FIRST = ("reason", "wants", "asked", "granted", "by")


def _body_items(event: AuditEvent) -> list[tuple[str, object]]:
    items = [(k, v) for k, v in event.body.items() if v not in ([], {}, "", None)]
    items.sort(key=lambda item: _FIRST.index(item[0]) if item[0] in _FIRST else len(_FIRST))
    if event.type.startswith("consent_"):
        items = [(k, v) for k, v in items if k not in _CONSENT_DETAIL
                 and not (k == "engineer" and v == event.actor)
                 and not (k == "decision" and event.type == f"consent_{v}")]
    return items


def format_event(event: AuditEvent) -> str:
    """One line for a terminal, everything from the network made inert.

    Ids are whole, as `audit show` and the filters take them. A session's
    events name the session (its device is in `audit show SESSION`); other
    events name their subject, the device's pseudonym. The time is cut to
    the second (seq orders the events; --json has the microseconds).
    """
    parts = [f"{event.seq:>6}", printable(event.time[:19] + "Z"), printable(event.type)]
    if event.session is not None:
        parts.append(f"session={printable(event.session)}")
    if event.actor is not None:
        parts.append(f"actor={printable(event.actor)}")
    if event.subject is not None and event.session is None:
        parts.append(f"subject={printable(event.subject)}")
    parts += [f"{printable(key, 64)}={_value(value)}" for key, value in _body_items(event)]
    personal = event.personal or {}
    for key, value in sorted(personal.items()):
        if key not in _SIGNED_FIELDS:
            text = json.dumps(value, ensure_ascii=False)
            parts.append(f"{printable(key, 64)}={printable(text, _MAX_VALUE + 16)}")
    if "receipt" in personal:
        parts.append("receipt=signed")
    return " ".join(parts)


def _event_json(event: AuditEvent) -> str:
    # ensure_ascii: every control or non-ASCII character becomes a \u escape,
    # so the line is inert on a terminal and still exact for a program.
    return json.dumps({
        "seq": event.seq, "time": event.time, "type": event.type, "session": event.session,
        "actor": event.actor, "subject": event.subject, "body": event.body,
        "personal": event.personal, "prev_hash": event.prev_hash, "hash": event.hash,
    }, ensure_ascii=True, sort_keys=True)


# Events fetched per query while listing: the same keyset-paged query as the
# console's audit browser, so a long log is never read in one piece.
_LIST_PAGE = 500


async def _matching(audit: AuditStore, args: argparse.Namespace) -> list[AuditEvent]:
    """The newest `--limit` events matching the filters, oldest first."""
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must not be negative")
    since = parse_flag_time("--since", args.since)
    until = parse_flag_time("--until", args.until)
    events: list[AuditEvent] = []
    before: int | None = None
    while args.limit is None or len(events) < args.limit:
        want = _LIST_PAGE if args.limit is None else min(_LIST_PAGE, args.limit - len(events))
        page, more = await audit.query(
            since=since, until=until, actor=args.engineer, alias=args.subject,
            type=args.type, session=args.session, before_seq=before, limit=want,
        )
        events += page
        if not more:
            break
        before = page[-1].seq
    events.reverse()
    return events


async def _audit_list(args: argparse.Namespace) -> None:
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        events = await _matching(audit, args)
        for event in events:
            print(_event_json(event) if args.json else format_event(event))
        if not events and not args.json:
            print("no audit events", file=sys.stderr)
        sys.stdout.flush()
        # Every read of the log is itself an event; recorded after the listing
        # so a failure to write is reported, not hidden behind the output.
        body: dict[str, object] = {"command": "list"}
        filters: dict[str, object] = {
            k: v for k, v in (("since", args.since), ("until", args.until),
                              ("engineer", args.engineer), ("session", args.session),
                              ("type", args.type), ("limit", args.limit)) if v is not None
        }
        if args.subject is not None:
            # An alias is personal data: the log keeps that one was searched for.
            filters["subject"] = True
        if filters:
            body["filters"] = filters
        await audit.append("audit_read", now=now(), actor=cli_actor(), body=body)


def cmd_audit_list(args: argparse.Namespace) -> int:
    asyncio.run(_audit_list(args))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "list",
                   "list events, one line each, oldest first (this read is logged)")
    p.description = ("One line per event: seq, time (UTC, to the second), type, the "
                     "session (or, outside a session, the device's pseudonym), the actor and "
                     "what the event records. Signed consent receipts and checksums are "
                     "shown by `audit show SESSION` and --json.")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", metavar="TIME",
                   help="events at or after TIME (ISO 8601, e.g. 2025-03-01T09:00Z; UTC if "
                        "no offset)")
    p.add_argument("--until", metavar="TIME", help="events before TIME")
    p.add_argument("--engineer", metavar="NAME", help="events by this engineer or admin")
    p.add_argument("--subject", metavar="ALIAS",
                   help="events of the device(s) with this alias (exact, any case)")
    p.add_argument("--type", metavar="TYPE", help="events of this type, e.g. consent_granted")
    p.add_argument("--session", metavar="ID", help="events of this session (its whole id)")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N events")
    add_database_url(p, "list")
    p.set_defaults(func=cmd_audit_list)
