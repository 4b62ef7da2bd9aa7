"""Fixtures shared by the broker's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from broker.audit.store import AuditLog


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[AuditLog]:
    """An empty audit log in `tmp_path` (a test module may define its own,
    pre-filled, under the same name)."""
    audit = await AuditLog.open(tmp_path)
    yield audit
    await audit.close()
