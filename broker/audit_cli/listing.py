"""Reading the log: `audit list` (filters, JSON Lines)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from broker.audit.store import AuditEvent, AuditLog
from broker.audit_cli.common import add_parser, cli_actor, now, open_log, parse_flag_time
from broker.errors import ConfigError
from broker.wire.text import printable

# -- audit --------------------------------------------------------------------


def _short(value: str | None, length: int) -> str:
    return "-" if value is None else printable(value[:length])


def format_event(event: AuditEvent) -> str:
    """One line for a terminal: everything from the network made inert."""
    body = json.dumps(event.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    parts = [
        f"{event.seq:>6}", event.time, printable(event.type),
        f"session={_short(event.session, 8)}",
        f"actor={_short(event.actor, 64)}",
        f"subject={_short(event.subject, 64)}",
        printable(body, max_len=10_000),
    ]
    for key, value in sorted((event.personal or {}).items()):
        parts.append(f"{printable(key)}={printable(json.dumps(value, ensure_ascii=False))}")
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


async def _matching(audit: AuditLog, args: argparse.Namespace) -> list[AuditEvent]:
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
    async with open_log(args.data_dir) as audit:
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


def register(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "list", "list events (this read is logged)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--since", metavar="TIME",
                   help="events at or after TIME (ISO 8601, e.g. 2025-03-01T09:00Z; UTC if "
                        "no offset)")
    p.add_argument("--until", metavar="TIME", help="events before TIME")
    p.add_argument("--engineer", metavar="NAME", help="events by this engineer or admin")
    p.add_argument("--subject", metavar="ALIAS",
                   help="events of the device(s) with this alias (exact, any case)")
    p.add_argument("--type", metavar="TYPE", help="events of this type, e.g. consent_granted")
    p.add_argument("--session", metavar="ID")
    p.add_argument("--limit", type=int, metavar="N", help="only the newest N events")
    p.set_defaults(func=cmd_audit_list)
