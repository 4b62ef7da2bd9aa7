"""Fixtures shared by the broker's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.audit.interface import AuditStore
from broker.audit.pg_store import PgAuditLog
from broker.audit.store import AuditLog


@pytest.fixture
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AuditStore]:
    """An empty audit log in `tmp_path` (a test module may define its own,
    pre-filled, under the same name). SQLite unless the test is marked
    `helpers.both_backends`, which runs it on PostgreSQL too (a database
    of the test's own, the master key in `tmp_path`)."""
    audit: AuditStore
    if getattr(request, "param", "sqlite") == "postgresql":
        audit = await PgAuditLog.open(request.getfixturevalue("database_url"), tmp_path)
    else:
        audit = await AuditLog.open(tmp_path)
    yield audit
    await audit.close()
