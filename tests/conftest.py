"""Fixtures every test directory may use: a real PostgreSQL for the whole
test session, started only when a test asks for it (the cluster tests, and
the audit tests run against both backends), and a fresh database per test
copied from a template. See tests/cluster/harness.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from tests.cluster.harness import Postgres, start_postgres, stop_postgres

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
