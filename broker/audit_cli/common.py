"""What every audit sub-command shares: the time, who is acting, and how an
administrative action is itself recorded."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pwd
from pathlib import Path

from broker.audit.store import AuditLog
from broker.errors import ConfigError
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


async def log_admin_action(data_dir: Path, type: str, body: dict[str, object]) -> None:
    audit = await AuditLog.open(data_dir)
    try:
        await audit.append(type, now=now(), actor=cli_actor(), body=body)
    finally:
        await audit.close()


def parse_flag_time(flag: str, value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ProtocolError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def add_parser(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
               common: argparse.ArgumentParser, name: str, help: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help)
    return parser
