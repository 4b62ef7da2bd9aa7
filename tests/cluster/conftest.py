"""Fixtures of the cluster tests: HAProxy in front of brokers, per test
(`postgres` and `database_url` are in tests/conftest.py, for the audit
tests that run on both backends too). See tests/cluster/harness.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from broker.audit.pg_schema import BROKER_ROLE
from tests.cluster.harness import HAProxy, Postgres, start_haproxy
from tests.e2e.conftest import deployment, running

__all__ = ["deployment", "running"]  # the e2e fixtures, for the brokers behind HAProxy


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., HAProxy]]:
    """Starts HAProxy in front of the given (host, port) backends; stops every
    one it started when the test ends."""
    started: list[HAProxy] = []

    def start(backends: Sequence[tuple[str, int]], *, check_ca: Path | None = None,
              healthz: bool = False, source: str | None = None) -> HAProxy:
        proxy = start_haproxy(tmp_path / f"haproxy{len(started)}", backends, check_ca=check_ca,
                              healthz=healthz, source=source)
        started.append(proxy)
        return proxy

    try:
        yield start
    finally:
        for proxy in started:
            proxy.stop()


@pytest.fixture
def broker_role_url(postgres: Postgres, database_url: str) -> Iterator[str]:
    """A login role with only `consentry_broker`'s rights on the test's
    database (the role made here if no schema install has made it yet)."""
    postgres.psql(f"DO $$ BEGIN CREATE ROLE {BROKER_ROLE} NOLOGIN; "
                  "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    name, password = f"admin_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    postgres.psql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    try:
        postgres.psql(f"GRANT {BROKER_ROLE} TO {name}")
        yield database_url.replace(f"postgres:{postgres.password}@", f"{name}:{password}@")
    finally:
        postgres.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      f"WHERE usename = '{name}'")
        postgres.psql(f"DROP ROLE {name}")
