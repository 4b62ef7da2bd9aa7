"""The privacy lifecycle: `audit purge` (retention, once) and `audit erase`
(a data subject's erasure request). `audit export --subject` is with the
review commands and calls `broker.audit.subjects.export_subject`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from broker.audit.retention import (
    DEFAULT_EVENT_DAYS,
    DEFAULT_PII_DAYS,
    PurgeReport,
    check_retention,
    purge,
)
from broker.audit.signing import load_or_create_signing_key
from broker.audit.subjects import EraseReport, erase_subject
from broker.audit_cli.common import add_database_url, add_parser, cli_actor, now, open_log
from broker.errors import ConfigError
from broker.wire.text import printable

_WAL_WARNING = ("warning: another process was reading the log, so older copies of the "
                "removed data may remain in audit.db-wal until the next purge "
                "(the broker runs one every hour)")


def purge_lines(report: PurgeReport) -> list[str]:
    """What a purge removed, for the operator and the data-protection officer."""
    lines = [
        f"personal data recorded before {report.pii_cutoff}: "
        f"{report.personal_rows} record(s) deleted",
        f"device keys destroyed (no personal data left to protect): "
        f"{report.subjects_shredded}",
    ]
    if report.through_seq is None:
        lines.append(f"events dated before {report.events_before}: none held")
    else:
        lines.append(
            f"events dated before {report.events_before}: {report.events_purged} deleted "
            f"(up to seq {report.through_seq}, with {report.purged_personal_rows} personal "
            f"record(s)); signed purge record is event {report.purge_record_seq}"
        )
    if report.subjects_removed:
        lines.append(f"devices with nothing left in the log, pseudonym dropped: "
                     f"{report.subjects_removed}")
    lines.append(f"recorded as retention_run, event {report.run_seq}")
    return lines


# On PostgreSQL a destroyed key is not gone from every copy at once.
_PG_COPIES_NOTE = ("note: on PostgreSQL the destroyed key stays in old row versions until "
                   "VACUUM, and in the WAL, its archives and base backups taken before, "
                   "wrapped by the key ring: rotating the key ring makes those copies "
                   "unopenable (README, \"The audit log in PostgreSQL\")")


async def _purge(args: argparse.Namespace) -> PurgeReport:
    # Loaded once the log is open: on PostgreSQL `open_log` refuses a data
    # directory without the nodes' key, as a key made here would sign a
    # purge record `audit verify` refuses.
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        key = load_or_create_signing_key(args.data_dir)
        return await purge(audit, now=now(), pii_days=args.pii_retention_days,
                           event_days=args.event_retention_days, signing_key=key,
                           actor=cli_actor())


def cmd_audit_purge(args: argparse.Namespace) -> int:
    check_retention(args.pii_retention_days, args.event_retention_days)
    report = asyncio.run(_purge(args))
    for line in purge_lines(report):
        print(line)
    if not report.wal_truncated:
        print(_WAL_WARNING, file=sys.stderr)
    return 0


def _confirmed(args: argparse.Namespace) -> bool:
    """--yes, or a person at a terminal typing 'erase'."""
    if args.yes:
        return True
    if not sys.stdin.isatty():
        raise ConfigError("refusing to erase without --yes: there is no terminal to "
                          "confirm on (stdin is not a TTY)")
    device = "" if args.device is None else f", device {printable(args.device)}"
    print(f"This destroys all personal data held about the device called "
          f"{printable(args.subject)!r}{device}: its alias, IP addresses, hostname, OS user "
          f"and signed consent receipts. It cannot be undone. Its events stay in the log "
          f"under a pseudonym, and the erasure itself is recorded.")
    try:
        answer = input("Type 'erase' to confirm: ")
    except EOFError:
        answer = ""
    return answer.strip().lower() == "erase"


async def _erase(args: argparse.Namespace) -> EraseReport:
    # Sealed before this returns: the erasure is proven only once a signed
    # checkpoint covers its record (see `open_log`).
    async with open_log(args.data_dir, database_url=args.database_url) as audit:
        return await erase_subject(audit, args.subject, args.device, now=now(),
                                   actor=cli_actor())


def cmd_audit_erase(args: argparse.Namespace) -> int:
    if not _confirmed(args):
        print("not confirmed; nothing was erased", file=sys.stderr)
        return 1
    report = asyncio.run(_erase(args))
    before = " (its key had already been destroyed)" if report.already_erased else ""
    print(f"erased device {report.pseudonym}{before}: {report.personal_rows} personal "
          f"record(s) deleted and its key destroyed; recorded as subject_erased, "
          f"event {report.event_seq}")
    print("its events stay in the log under the pseudonym; the hash chain is unchanged")
    if args.database_url is not None:
        print(_PG_COPIES_NOTE, file=sys.stderr)
    if not report.wal_truncated:
        print(_WAL_WARNING, file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "purge",
                   "apply the retention periods now (the broker also does, hourly)")
    p.add_argument("--pii-retention-days", type=int, default=DEFAULT_PII_DAYS, metavar="N",
                   help=f"delete personal data older than N days (default {DEFAULT_PII_DAYS})")
    p.add_argument("--event-retention-days", type=int, default=DEFAULT_EVENT_DAYS,
                   metavar="N", help="delete events from whole UTC days older than N days, "
                                     f"with a signed purge record (default {DEFAULT_EVENT_DAYS})")
    add_database_url(p, "purge")
    p.set_defaults(func=cmd_audit_purge)

    p = add_parser(sub, common, "erase",
                   "erase one device's personal data (a data subject's request)")
    p.add_argument("--subject", required=True, metavar="ALIAS",
                   help="the device's alias (exact, any case)")
    p.add_argument("--device", metavar="P",
                   help="which device, when several have the alias: its pseudonym as "
                        "listed, or the agent's device id")
    p.add_argument("--yes", action="store_true",
                   help="do not ask for confirmation (required when not at a terminal)")
    add_database_url(p, "erase in")
    p.set_defaults(func=cmd_audit_erase)
