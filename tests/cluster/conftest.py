"""Fixtures of the cluster tests: one PostgreSQL for the whole test session
(a fresh database per test, copied from a template), and HAProxy in front
of brokers, per test. See tests/cluster/harness.py."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.cluster.harness import HAProxy, Postgres, start_haproxy, start_postgres, stop_postgres
from tests.e2e.conftest import deployment, running

__all__ = ["deployment", "running"]  # the e2e fixtures, for the brokers behind HAProxy

# Each test's database is a copy of this one: the place for a schema every
# test needs, so that it is installed once and copied cheaply.
TEMPLATE = "consentry_template"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = start_postgres()
    try:
        pg.psql(f"CREATE DATABASE {TEMPLATE}")
        yield pg
    finally:
        stop_postgres(pg)


@pytest.fixture
def database_url(postgres: Postgres) -> Iterator[str]:
    """A database of the test's own (dropped after it), as a URL for asyncpg."""
    name = f"test_{secrets.token_hex(6)}"
    postgres.psql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    try:
        yield postgres.url(name)
    finally:
        postgres.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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
