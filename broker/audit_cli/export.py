"""`audit export`: the event log for SIEM tools (JSON Lines, CSV), streamed;
or, with ``--subject``, everything held about one device (an access request).

Every export is itself recorded (`audit_exported`). An export to a file is
written beside it under a temporary name and moved into place only once it
is complete *and* recorded, so a file that exists is a whole, logged export.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from broker.audit.export import ExportFilters, csv_writer, jsonl_line, stream_events
from broker.audit.interface import AuditEvent, AuditStore
from broker.audit_cli.common import (
    add_database_url,
    add_parser,
    cli_actor,
    now,
    open_log,
    parse_flag_time,
)
from broker.errors import AuditError, ConfigError

_HELP = """\
Export the audit log.

Without --subject: the event log for a SIEM, oldest first, as JSON Lines
(one object per line: seq, time, type, session, actor, subject, body,
prev_hash, hash) or CSV (seq,time,type,session,actor,subject,body_json).
It is streamed, so any size of log exports in little memory, and it covers
the log up to its newest event when the export starts.

Personal fields (device alias, IP address, hostname, OS user, signed consent
receipts) are NOT included: a device appears only as its pseudonym. Use
--subject for what is held about one device, decrypted.

Values are untrusted. JSON Lines are pure ASCII (\\u escapes). In CSV, a cell
beginning with = + - @ (or a tab or carriage return) is prefixed with an
apostrophe so that spreadsheets show it as text instead of running it as a
formula; nothing else is ever changed.

With --subject ALIAS [--device PSEUDONYM]: a data-subject access export,
everything held about the device with that alias (personal data decrypted),
as one JSON document. If several devices used the alias, name one with
--device (its pseudonym, as shown by `audit list`).

Every export is itself recorded in the log (audit_exported)."""


def _filters(args: argparse.Namespace) -> ExportFilters:
    return ExportFilters(
        since=parse_flag_time("--since", args.since), until=parse_flag_time("--until", args.until),
        engineer=args.engineer, type=args.type, session=args.session,
    )


@contextlib.contextmanager
def _output(path: Path | None, publish: Callable[[], None] | None = None) -> Iterator[TextIO]:
    """Where the export goes: stdout, or `path` written atomically.

    A regular file is written as ``.NAME.partial-PID`` (mode 0600: the export
    is audit data) and renamed over `path` only after the block succeeds,
    so a failed export leaves no file behind. Anything else that exists
    (a FIFO, ``/dev/stdout``) is written directly.
    """
    if path is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    if path.exists() and not path.is_file():
        with path.open("w", encoding="utf-8", newline="") as out:
            yield out
        return
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        raise ConfigError(f"cannot write the export next to {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(partial)


def _used_filters(args: argparse.Namespace) -> dict[str, object]:
    return {k: v for k, v in (("since", args.since), ("until", args.until),
                              ("engineer", args.engineer), ("type", args.type),
                              ("session", args.session)) if v is not None}


async def _record(audit: AuditStore, body: dict[str, object]) -> None:
    await audit.append("audit_exported", now=now(), actor=cli_actor(), body=body)


class _Progress:
    """How far an export got: recorded even when it is cut short."""

    def __init__(self) -> None:
        self.events = 0
        self.last_seq = 0

    def counting(self, write: Callable[[AuditEvent], None]) -> Callable[[AuditEvent], None]:
        def counted(event: AuditEvent) -> None:
            write(event)
            self.events += 1
            self.last_seq = event.seq
        return counted


def _writer(fmt: str, out: TextIO) -> Callable[[AuditEvent], None]:
    if fmt == "csv":
        return csv_writer(out)

    def write(event: AuditEvent) -> None:
        out.write(jsonl_line(event))
    return write


async def _export_log(args: argparse.Namespace, fmt: str) -> None:
    filters = _filters(args)
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        events, through = await _export_log_to(audit, args, fmt, filters)
    # Only now, sealed (see `open_log`), is the export reported done.
    if args.output is not None:
        print(f"exported {events} events (through seq {through}) to {args.output}",
              file=sys.stderr)


async def _export_log_to(audit: AuditStore, args: argparse.Namespace, fmt: str,
                         filters: ExportFilters) -> tuple[int, int]:
    body: dict[str, object] = {
        "kind": "events", "format": fmt, "filters": _used_filters(args),
        "output": "stdout" if args.output is None else str(args.output)[:200],
    }
    progress, through, recorded = _Progress(), 0, False
    try:
        with _output(args.output) as out:
            try:
                _, through = await stream_events(
                    audit, progress.counting(_writer(fmt, out)), filters)
                out.flush()
            except BrokenPipeError:
                # The reader went away (`| head`): stop quietly on stdout.
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                raise AuditError("the output was closed before the export finished; "
                                 "it is incomplete") from None
            # Recorded before a file is moved into place: an export the log
            # does not know about is never delivered.
            await _record(audit, {**body, "events": progress.events, "through_seq": through,
                                  "complete": True})
            recorded = True
    finally:
        if not recorded:
            # A failed export read the log too, as far as it got.
            with contextlib.suppress(AuditError):
                await _record(audit, {**body, "events": progress.events,
                                      "through_seq": progress.last_seq, "complete": False})
    return progress.events, through


async def _export_subject(args: argparse.Namespace) -> None:
    try:
        # Lazily: the privacy lifecycle module is separate from the log reader.
        from broker.audit.subjects import export_subject
    except ImportError:
        raise ConfigError("export --subject (a data-subject access export) is not available "
                          "in this version of consentry yet") from None
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        # It records the export itself (`subject_exported`, pseudonym only),
        # in the transaction that read the data: nothing more to log here.
        data = await export_subject(audit, args.subject, args.device, actor=cli_actor())
    with _output(args.output) as out:
        out.write(json.dumps(data, ensure_ascii=True, indent=2, sort_keys=True) + "\n")
    if args.output is not None:
        print(f"exported what is held about that device to {args.output}", file=sys.stderr)


def cmd_audit_export(args: argparse.Namespace) -> int:
    if args.subject is not None:
        if args.format not in (None, "json"):
            raise ConfigError("--subject exports one JSON document; use --format json")
        for flag in ("since", "until", "engineer", "type", "session"):
            if getattr(args, flag) is not None:
                raise ConfigError(f"--{flag} filters the event export; it does not combine "
                                  "with --subject")
        asyncio.run(_export_subject(args))
        return 0
    if args.device is not None:
        raise ConfigError("--device picks one of the devices found by --subject ALIAS")
    if args.format == "json":
        raise ConfigError("--format json is for --subject; the event log exports as "
                          "jsonl or csv")
    asyncio.run(_export_log(args, args.format or "jsonl"))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "export",
                   "export events for a SIEM (jsonl, csv; no personal data), or everything "
                   "about one device with --subject (this export is logged)")
    p.description = _HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--format", choices=("jsonl", "csv", "json"),
                   help="jsonl (default) or csv for the event log; json for --subject")
    p.add_argument("--output", type=Path, metavar="FILE",
                   help="write to FILE (mode 0600, replaced only by a complete export) "
                        "instead of standard output")
    p.add_argument("--since", metavar="TIME",
                   help="events at or after TIME (ISO 8601; UTC if no offset)")
    p.add_argument("--until", metavar="TIME", help="events before TIME")
    p.add_argument("--engineer", metavar="NAME", help="events by this engineer or admin")
    p.add_argument("--type", metavar="TYPE", help="events of this type, e.g. consent_granted")
    p.add_argument("--session", metavar="ID", help="events of this session")
    p.add_argument("--subject", metavar="ALIAS",
                   help="instead: a data-subject access export of the device with this alias")
    p.add_argument("--device", metavar="PSEUDONYM",
                   help="with --subject: which device, when several used the alias")
    add_database_url(p, "export")
    p.set_defaults(func=cmd_audit_export)
