"""Integrity of the log: `audit verify` (chain, checkpoints, purge records) and
`audit pubkey` (the public half of the audit signing key, for auditors)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import nacl.signing

from broker.audit.checkpoints import CHECKPOINT_FILE, PG_CHECKPOINT_FILE, checkpoint_path
from broker.audit.signing import (
    AUDIT_KEY_FILE,
    load_or_create_signing_key,
    parse_public_key,
    public_key_text,
)
from broker.audit.verify import VerifyReport, verify_log
from broker.audit_cli.common import add_parser, cli_actor, log_admin_action, now
from broker.errors import AuditError, ConfigError

__all__ = ["EXIT_NOT_INTACT", "register"]

# Distinct from AuditError's 4 ("could not check"), so a monitoring job can
# tell "the log was tampered with" from "the check did not run".
EXIT_NOT_INTACT = 9

_VERIFY_EPILOG = f"""\
exit status:
  0  the log is intact
  {EXIT_NOT_INTACT}  the log is NOT intact: edited, inserted, reordered, deleted or
     truncated events, or forged, removed or re-signed checkpoints, or a
     --witness checkpoint the log no longer matches (each problem is
     printed, the first bad seq first)
  4  the check could not run (no database, unreadable files, no public key)

The summary line says how many events lie after the newest checkpoint (not
yet sealed: a cut of the log's end could still remove those unseen; the
broker seals within seconds, every admin command before it exits).

Each run is itself recorded in the log as an `audit_verified` event.
"""


def _signing_key(data_dir: Path) -> nacl.signing.SigningKey:
    try:
        return load_or_create_signing_key(data_dir)
    except OSError as exc:
        raise AuditError(f"cannot read or create the audit signing key "
                         f"{data_dir / AUDIT_KEY_FILE}: {exc}") from exc


def public_key_for(args: argparse.Namespace) -> tuple[nacl.signing.VerifyKey | None, list[str]]:
    """The key to check signatures with, and notes for the reader about it."""
    key_path = args.data_dir / AUDIT_KEY_FILE
    if args.pubkey is not None:
        try:
            text = args.pubkey.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the public key file {args.pubkey}: {exc}") from exc
        key = parse_public_key(text)
        notes = []
        try:
            replaced = key_path.exists() and _signing_key(args.data_dir).verify_key != key
        except AuditError:
            replaced = False  # unreadable here; the check itself does not need it
        if replaced:
            notes.append(f"{key_path} is not the key in {args.pubkey}: the broker's audit key "
                         "was replaced, so what it signed since will not verify")
        return key, notes
    if not key_path.exists():
        return None, []
    return _signing_key(args.data_dir).verify_key, [
        f"checked with the public key derived from {key_path}; a copy kept elsewhere is "
        "stronger (whoever can replace audit.key can re-sign every checkpoint): save the "
        "output of `consentry-broker audit pubkey` away from the broker and pass "
        "--pubkey FILE"]


def _print_report(report: VerifyReport, notes: list[str], as_json: bool) -> None:
    if as_json:
        data = report.as_dict()
        data["notes"] = notes + data["notes"]
        print(json.dumps(data, ensure_ascii=True, sort_keys=True))
        return
    for problem in report.ordered_problems():
        print(problem.message)
    print(report.summary())
    for note in notes + report.notes:
        print(f"note: {note}", file=sys.stderr)


async def _verify_database(args: argparse.Namespace) -> int:
    """`audit verify --database-url`: the chain of a PostgreSQL log, through
    the store (`broker.audit.verify_store`); recorded in that log as on SQLite."""
    from broker.audit.stores import open_store
    from broker.audit.verify_store import verify_store

    # This directory's own checkpoints (a node's while it led, an admin's
    # reads) are witnesses like any other file of them.
    own = args.checkpoint_file or args.data_dir / PG_CHECKPOINT_FILE
    witnesses = [*([own] if own.exists() else []), *(args.witness or [])]
    key, notes = public_key_for(args)
    store = await open_store(args.data_dir, database_url=args.database_url)
    try:
        report = await verify_store(store, public_key=key, witnesses=witnesses)
        _print_report(report, notes, args.json)
        sys.stdout.flush()
        try:
            body: dict[str, object] = {"ok": report.ok, "first_bad_seq": report.first_bad_seq,
                                       "independent_key": args.pubkey is not None}
            if witnesses:
                body["witnesses"] = len(witnesses)
            await store.append("audit_verified", now=now(), actor=cli_actor(), body=body)
        except AuditError as exc:
            if report.ok:
                raise
            print(f"consentry-broker: error: could not record this check in the log: {exc}",
                  file=sys.stderr)
    finally:
        await store.close()
    return 0 if report.ok else EXIT_NOT_INTACT


def cmd_audit_verify(args: argparse.Namespace) -> int:
    if getattr(args, "database_url", None) is not None:
        return asyncio.run(_verify_database(args))
    data_dir: Path = args.data_dir
    db_path = data_dir / "audit.db"
    checkpoint_file = checkpoint_path(data_dir, args.checkpoint_file)
    independent = args.pubkey is not None
    witnesses: list[Path] = args.witness or []
    try:
        key, notes = public_key_for(args)
        report = verify_log(db_path, public_key=key, checkpoint_file=checkpoint_file,
                            witnesses=witnesses)
    except AuditError as exc:
        if db_path.is_file():
            # A check that could not run is still a read of the log.
            try:
                asyncio.run(log_admin_action(data_dir, "audit_verified", {
                    "ok": False, "first_bad_seq": None, "independent_key": independent,
                    "error": str(exc)[:200]}, checkpoint_file=checkpoint_file))
            except AuditError as log_exc:
                print(f"consentry-broker: error: could not record this check in the log: "
                      f"{log_exc}", file=sys.stderr)
        raise
    _print_report(report, notes, args.json)
    sys.stdout.flush()
    body: dict[str, object] = {"ok": report.ok, "first_bad_seq": report.first_bad_seq,
                               "independent_key": independent}
    if witnesses:
        body["witnesses"] = len(witnesses)
    try:
        # After the check, so the event does not change what was checked.
        asyncio.run(log_admin_action(data_dir, "audit_verified", body,
                                     checkpoint_file=checkpoint_file))
    except AuditError as exc:
        if report.ok:
            raise
        # The finding matters more than the failure to record it.
        print(f"consentry-broker: error: could not record this check in the log: {exc}",
              file=sys.stderr)
    return 0 if report.ok else EXIT_NOT_INTACT


def cmd_audit_pubkey(args: argparse.Namespace) -> int:
    key_path = args.data_dir / AUDIT_KEY_FILE
    existed = key_path.exists()
    key = _signing_key(args.data_dir)
    if not existed:
        print(f"created a new audit signing key at {key_path} (mode 0600); the broker signs "
              "checkpoints and purge records with it", file=sys.stderr)
    print(public_key_text(key))
    print("keep a copy of this line away from the broker; check the log against it with "
          "`consentry-broker audit verify --pubkey FILE`", file=sys.stderr)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "verify",
                   "check the hash chain and signed checkpoints; name the first bad seq")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = _VERIFY_EPILOG
    p.add_argument("--pubkey", type=Path, metavar="FILE",
                   help="the audit public key, as printed by `audit pubkey` and kept "
                        "elsewhere (default: derived from DIR/audit.key, which is weaker)")
    p.add_argument("--checkpoint-file", type=Path, metavar="FILE",
                   help="the signed checkpoint file (default: where the broker writes it, "
                        f"DIR/{CHECKPOINT_FILE} unless serve was given --checkpoint-file)")
    p.add_argument("--witness", type=Path, action="append", metavar="FILE",
                   help="also check the log against the signed checkpoints in FILE, kept "
                        "elsewhere (a copy from --checkpoint-command, a customer's "
                        "checkpoints.jsonl); repeatable")
    p.add_argument("--database-url", metavar="URL",
                   help="verify the PostgreSQL log of a cluster (as given to `serve "
                        "--database-url`; DIR holds its master.key and audit.key) instead "
                        "of DIR/audit.db")
    p.add_argument("--json", action="store_true", help="the report as one JSON object")
    p.set_defaults(func=cmd_audit_verify)

    p = add_parser(sub, common, "pubkey",
                   "print the public half of the audit signing key (made if missing)")
    p.set_defaults(func=cmd_audit_pubkey)
