"""Rotating the key that wraps subject keys: live personal data stays
readable, the log still verifies, and a copy of the database taken before
the rotation can no longer open any subject key, nor do its wrapped keys
survive in the live files."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import stat
from pathlib import Path

import pytest

from broker.audit.keyring import KEYRING_NAME, WrapRing
from broker.audit.keys import AuditKeys
from broker.audit.retention import _rotate_if_due
from broker.audit.rotation import ROTATION_EVENT, rotate_wrapping, rotation_due
from broker.audit.store import AuditLog
from broker.audit.verify import verify_log
from broker.errors import AuditError

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


async def fill(audit: AuditLog) -> None:
    for device, alias in (("dev-1", "front desk"), ("dev-2", "Ana's laptop")):
        await audit.append("agent_connected", now=NOW, subject=device,
                           personal={"alias": alias, "ip": "198.51.100.7"})


async def wrapped_keys(audit: AuditLog) -> list[bytes]:
    async with audit.maintenance(write=False) as work:
        rows = await (await work.db.execute(
            "SELECT wrapped_key FROM subjects WHERE wrapped_key IS NOT NULL")).fetchall()
    return [bytes(row[0]) for row in rows]


async def aliases(audit: AuditLog) -> list[str]:
    events = await audit.events()
    return sorted((e.personal or {}).get("alias") or "-" for e in events
                  if e.type == "agent_connected")


async def test_a_fresh_log_wraps_under_its_ring_and_keeps_the_ring_private(
        tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        await fill(audit)
        ring = audit.key_ring
        assert ring is not None and ring.numbers == [1]
        assert {AuditKeys.generation_of(w) for w in await wrapped_keys(audit)} == {1}
        ring_file = tmp_path / KEYRING_NAME
        assert stat.S_IMODE(ring_file.stat().st_mode) == 0o600
    finally:
        await audit.close()


async def test_a_rotation_leaves_old_copies_unopenable(tmp_path: Path) -> None:
    live, old = tmp_path / "live", tmp_path / "old-backup"
    audit = await AuditLog.open(live)
    try:
        await fill(audit)
        before = await wrapped_keys(audit)
        await audit.truncate_wal()
        # A backup of the database taken now (the keys are backed up apart).
        old.mkdir()
        shutil.copy(live / "audit.db", old / "audit.db")

        report = await rotate_wrapping(audit, now=NOW + dt.timedelta(days=15))
        assert (report.generation, report.subjects, report.destroyed) == (2, 2, [1])
        assert audit.key_ring is not None and audit.key_ring.numbers == [2]
        # The live log: every alias still reads, every key on the new generation.
        assert await aliases(audit) == ["Ana's laptop", "front desk"]
        after = await wrapped_keys(audit)
        assert {AuditKeys.generation_of(w) for w in after} == {2}
        events = await audit.events()
        (rotated,) = [e for e in events if e.type == ROTATION_EVENT]
        assert rotated.body == {"generation": 2, "subjects": 2}
        assert rotated.personal is None
    finally:
        await audit.close()
    assert verify_log(live / "audit.db", public_key=None, checkpoint_file=None).ok
    # No old wrapped key is left in the live files (overwritten, WAL truncated).
    stored = b"".join(p.read_bytes() for p in live.iterdir() if p.name.startswith("audit.db"))
    assert not any(wrapped in stored for wrapped in before)
    # The old copy, opened with today's master key and ring: nothing opens.
    shutil.copy(live / "master.key", old / "master.key")
    shutil.copy(live / KEYRING_NAME, old / KEYRING_NAME)
    restored = await AuditLog.open(old)
    try:
        assert await aliases(restored) == ["-", "-"]
        # A device seen again gets a fresh key; what was shredded stays so.
        await restored.append("agent_connected", now=NOW, subject="dev-1",
                              personal={"alias": "front desk", "ip": "198.51.100.8"})
        assert (await aliases(restored)).count("front desk") == 1
    finally:
        await restored.close()


def test_rotation_is_due_once_the_generation_is_a_retention_period_old(
        tmp_path: Path) -> None:
    ring = WrapRing.load_or_create(tmp_path / KEYRING_NAME, now=NOW)
    assert not rotation_due(ring.current.created, NOW + dt.timedelta(days=13, hours=23), 14)
    assert rotation_due(ring.current.created, NOW + dt.timedelta(days=14), 14)


async def test_the_retention_loop_rotates_when_due(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    try:
        await fill(audit)
        ring = audit.key_ring
        assert ring is not None
        created = ring.current.created
        await _rotate_if_due(audit, created + dt.timedelta(days=3), 14)
        assert ring.numbers == [1]
        await _rotate_if_due(audit, created + dt.timedelta(days=14), 14)
        assert ring.numbers == [2]
        assert await aliases(audit) == ["Ana's laptop", "front desk"]
    finally:
        await audit.close()


def test_a_damaged_or_readable_ring_is_refused(tmp_path: Path) -> None:
    path = tmp_path / KEYRING_NAME
    WrapRing.load_or_create(path, now=NOW)
    data = json.loads(path.read_text())
    data["generations"][0]["key"] = "AAAA"
    path.write_text(json.dumps(data))
    with pytest.raises(AuditError, match="damaged"):
        WrapRing.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(AuditError, match="other users"):
        WrapRing.load_or_create(path)


def test_keys_from_before_the_ring_stop_opening_once_the_first_rotation_is_done(
        tmp_path: Path) -> None:
    # Generation 0 is derived from the master key, which never changes: an
    # old copy's key must not open with it once the first rotation re-wrapped
    # the live ones.
    master = bytes(range(32))
    ring = WrapRing.load_or_create(tmp_path / KEYRING_NAME, now=NOW)
    legacy = AuditKeys(master).new_wrapped_subject_key()
    keys = AuditKeys(master, ring)
    assert keys.opened(legacy) is not None
    ring.add(NOW)
    assert keys.opened(legacy) is not None  # during the rotation
    ring.forget_before(2)
    assert keys.opened(legacy) is None
