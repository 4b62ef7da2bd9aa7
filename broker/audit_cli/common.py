"""What every audit sub-command shares: the time, who is acting, how the log
is opened (and sealed), and how an administrative action is itself recorded.

A command that reads or acts on the log takes ``--database-url`` (or
``database_url`` from broker.toml, CONSENTRY_DATABASE_URL) for a cluster's
PostgreSQL log; given one, it never opens the local audit.db."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import pwd
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from broker.audit.checkpoints import Checkpointer, checkpoint_path
from broker.audit.interface import AuditStore
from broker.audit.signing import AUDIT_KEY_FILE
from broker.audit.store import AuditLog
from broker.errors import AuditError, ConfigError
from broker.wire.errors import ProtocolError
from broker.wire.messages import parse_time

Subparsers = "argparse._SubParsersAction[argparse.ArgumentParser]"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cli_actor() -> str:
    # The effective uid's name, not $USER: the environment is the caller's to set.
    try:
        return "cli:" + pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"cli:uid{os.geteuid()}"


def add_database_url(parser: argparse.ArgumentParser, what: str = "work on") -> None:
    """The ``--database-url`` of a command that reads or acts on the log."""
    parser.add_argument("--database-url", metavar="URL",
                        help=f"{what} a cluster's PostgreSQL log (as given to `serve "
                             "--database-url`, password in PGPASSWORD; DIR holds its "
                             "master.key) instead of DIR/audit.db")


@contextlib.asynccontextmanager
async def open_log(data_dir: Path, *, checkpoint_file: Path | None = None,
                   database_url: str | None = None) -> AsyncIterator[AuditStore]:
    """The audit log for one admin command, sealed on the way out.

    Every event this process appends (an erasure, a read, an export, an
    engineer added) is covered by a signed checkpoint before the command can
    report success: an erasure is proof of deletion only once it is sealed,
    and rows cut from the end of the log are then caught by `audit verify`
    and refused by the broker at its next start. The checkpoint goes into
    the broker's checkpoint file (`checkpoint_path`), chained on whatever the
    broker wrote there last — both take the database's write lock for it.
    A failure to seal raises AuditError (the command fails); if the command
    failed already, its own error is the one reported.

    With `database_url`, the cluster's PostgreSQL log (`stores.open_store`):
    nothing is read from ``data_dir`` but its keys, and the checkpoint goes
    into the log's ``checkpoints`` table, chained on the leader's under the
    chain head's lock (`broker.audit.pg_checkpoints`), and a copy into this
    directory's PostgreSQL checkpoint file. It is signed with the audit key
    the nodes share, so that key must be here: one made here would sign a
    checkpoint every node then refuses.
    """
    audit: AuditStore
    if database_url is None:
        audit = await AuditLog.open(data_dir)
    else:
        if not (data_dir / AUDIT_KEY_FILE).is_file():
            raise ConfigError(
                f"no audit signing key at {data_dir / AUDIT_KEY_FILE}: the cluster's log is "
                "sealed with the key its nodes share; copy audit.key from a node into this "
                "data directory, with master.key and audit-ratchet.key")
        from broker.audit.stores import open_store

        audit = await open_store(data_dir, database_url=database_url)
    # The SQLite log's checkpoints go where its broker writes them; the
    # PostgreSQL log's file is chosen by its storage unless one is given.
    seal_file = checkpoint_path(data_dir, checkpoint_file) if database_url is None else (
        checkpoint_file)
    appended: list[int] = []
    audit.add_append_listener(lambda seq, _hash: appended.append(seq))
    try:
        yield audit
    except BaseException:
        if appended:
            try:
                await _seal(audit, data_dir, seal_file)
            except AuditError as exc:
                print(f"consentry-broker: error: the events this command recorded are not "
                      f"sealed by a checkpoint: {exc}", file=sys.stderr)
        raise
    else:
        if appended:
            await _seal(audit, data_dir, seal_file)
    finally:
        await audit.close()


async def _seal(audit: AuditStore, data_dir: Path, checkpoint_file: Path | None) -> None:
    await Checkpointer(audit, data_dir, checkpoint_file=checkpoint_file).checkpoint()


async def log_admin_action(data_dir: Path, type: str, body: dict[str, object],
                           *, checkpoint_file: Path | None = None) -> None:
    async with open_log(data_dir, checkpoint_file=checkpoint_file) as audit:
        await audit.append(type, now=now(), actor=cli_actor(), body=body)


def parse_flag_time(flag: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ProtocolError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: argparse.ArgumentParser, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help)
    return parser
