"""`audit migrate --to postgresql://…`: a single node's SQLite log moved into
the PostgreSQL log a cluster shares (`broker.audit.migrate` does the copy)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from broker.audit.checkpoints import CHECKPOINT_FILE, checkpoint_path
from broker.audit.stores import CLUSTER_KEY_FILES, check_database_url
from broker.audit_cli.common import add_parser, cli_actor, now
from broker.audit_cli.integrity import public_key_for

_HELP = """\
Copy this data directory's SQLite audit log (audit.db) into an empty
PostgreSQL audit log, exactly: the same seq, hashes, purge records, signed
checkpoints, subjects and encrypted personal data. Stop the broker first.

The SQLite log is verified first and not copied if it is not intact. The
target must hold no audit log yet (its schema is installed if absent, so
use the database owner's URL); the copy is one transaction, so on any
failure the target stays empty. The migration is recorded in the new log
as an audit_migrated event. audit.db is left as it was.

Subject keys are wrapped anew under the cluster's wrapping key
(audit-ratchet.key, made in this data directory by the migration).
Afterwards, copy master.key, audit.key and audit-ratchet.key to the data
directory of every node, and check the new log with
`consentry-broker audit verify --database-url URL`."""


class Progress:
    """`copied/total events` on stderr, every few percent of a big log."""

    def __init__(self) -> None:
        self._shown = 0

    def __call__(self, copied: int, total: int) -> None:
        step = max(10_000, total // 20)
        if total > step and (copied // step > self._shown // step or copied == total):
            print(f"copied {copied}/{total} events", file=sys.stderr, flush=True)
            self._shown = copied


def cmd_audit_migrate(args: argparse.Namespace) -> int:
    from broker.audit.migrate import check_source, migrate_to_postgres

    url = check_database_url(args.to)
    data_dir: Path = args.data_dir
    key, _notes = public_key_for(args)
    check_source(data_dir, public_key=key,
                 checkpoint_file=checkpoint_path(data_dir, args.checkpoint_file))
    report = asyncio.run(migrate_to_postgres(data_dir, url, now=now(), actor=cli_actor(),
                                             progress=Progress()))
    from broker.audit.pg_store import redacted_url

    where = redacted_url(url)
    span = ("no events" if report.first_seq is None
            else f"{report.events} events (seq {report.first_seq}-{report.through_seq})")
    print(f"copied {span}, {report.subjects} subject(s), {report.personal_rows} personal "
          f"record(s) and {report.checkpoints} checkpoint(s) from {data_dir / 'audit.db'} "
          f"into {where}; recorded as audit_migrated, event {report.record_seq}")
    kept = (f" ({report.kept} the cluster already had, kept as it has them)"
            if report.kept else "")
    print(f"registry: {report.engineers} engineer(s) and {report.devices} device "
          f"binding(s) copied into the cluster's{kept}")
    keys = ", ".join(name for name in CLUSTER_KEY_FILES if (data_dir / name).exists())
    print(f"next: copy {keys} from {data_dir} to the data directory of every node (a node "
          "with another master key or wrapping key is refused), then check the new log "
          f"with `consentry-broker audit verify --database-url URL --data-dir {data_dir}`; "
          f"{data_dir / 'audit.db'} is left as it was")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser],
             common: argparse.ArgumentParser) -> None:
    p = add_parser(sub, common, "migrate",
                   "copy this data directory's SQLite audit log into an empty PostgreSQL "
                   "one (for a cluster); verified first, one transaction")
    p.description = _HELP
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("--to", required=True, metavar="URL",
                   help="the PostgreSQL database, postgresql://OWNER@HOST:PORT/DATABASE "
                        "(the password in PGPASSWORD keeps it out of the process list)")
    p.add_argument("--pubkey", type=Path, metavar="FILE",
                   help="check the SQLite log with this audit public key (as printed by "
                        "`audit pubkey`) instead of the one derived from DIR/audit.key")
    p.add_argument("--checkpoint-file", type=Path, metavar="FILE",
                   help="the SQLite log's signed checkpoint file (default: where the broker "
                        f"writes it, DIR/{CHECKPOINT_FILE} unless serve was given "
                        "--checkpoint-file)")
    p.set_defaults(func=cmd_audit_migrate)
