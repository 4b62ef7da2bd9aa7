"""The broker seals within seconds, and checkpoints held elsewhere (witness
files: a copy shipped off the machine, a customer's agent's copy) hold the
log to what it once was: at start-up and in `audit verify --witness`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from broker.audit.checkpoints import CHECKPOINT_FILE, MAX_UNSEALED_SECONDS, Checkpointer
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.audit.verify import verify_log
from broker.errors import AuditError

from .test_audit_integrity import FakeClock, build, checkpoint_lines, tamper, wait_for


async def test_an_uncovered_event_is_sealed_within_seconds(tmp_path: Path) -> None:
    clock = FakeClock()
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, every_events=100, every_seconds=60, clock=clock,
                      poll=0.01)
    try:
        await cp.start()
        seq = await audit.append("session_started", now=clock(), session="s")
        clock.advance(MAX_UNSEALED_SECONDS - 0.5)
        await asyncio.sleep(0.05)
        assert cp.last is not None and cp.last.seq == 0
        clock.advance(0.5)
        await wait_for(lambda: cp.last is not None and cp.last.seq == seq, "the seal")
    finally:
        await cp.stop()
        await audit.close()


async def test_covering_seals_at_once(tmp_path: Path) -> None:
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, clock=FakeClock(), poll=0.01)
    try:
        await cp.start()
        seqs = [await audit.append("consent_granted", now=FakeClock()()) for _ in range(3)]
        found = await asyncio.gather(*(cp.covering(s) for s in seqs))
        assert all(c is not None and c.seq >= s for c, s in zip(found, seqs, strict=True))
    finally:
        await cp.stop()
        await audit.close()


def witness_of(tmp_path: Path, *numbers: int) -> Path:
    """Some lines of the checkpoint file, as a customer or a remote store keeps them."""
    lines = checkpoint_lines(tmp_path)
    path = tmp_path / "witness.jsonl"
    path.write_text("".join(lines[n - 1] + "\n" for n in numbers))
    return path


async def test_start_refuses_a_log_shorter_than_a_witness(tmp_path: Path) -> None:
    await build(tmp_path)  # checkpoints of seq 0, 10, 20, 30
    witness = witness_of(tmp_path, 4)
    lines = checkpoint_lines(tmp_path)
    with tamper(tmp_path) as conn:  # the cut hidden from the local file and table too
        conn.execute("DELETE FROM events WHERE seq > 20")
        conn.execute("DELETE FROM checkpoints WHERE seq > 20")
    (tmp_path / CHECKPOINT_FILE).write_text("".join(x + "\n" for x in lines[:3]))
    audit = await AuditLog.open(tmp_path)
    try:
        with pytest.raises(AuditError, match=r"ends at seq 20 but the checkpoint .* in "
                                             r".*witness.jsonl covers seq 30"):
            await Checkpointer(audit, tmp_path, witnesses=[witness]).start()
        await Checkpointer(audit, tmp_path).checkpoint()  # without it: fooled
    finally:
        await audit.close()


async def test_verify_witness(tmp_path: Path) -> None:
    key = await build(tmp_path)
    witness = witness_of(tmp_path, 2, 4)

    def check() -> list[str]:
        report = verify_log(tmp_path / "audit.db", public_key=key, checkpoint_file=None,
                            witnesses=[witness])
        return [p.message for p in report.ordered_problems()]

    report = verify_log(tmp_path / "audit.db", public_key=key, checkpoint_file=None,
                        witnesses=[witness])
    assert report.ok and report.witness_checkpoints == 2
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE seq > 25")
        conn.execute("DELETE FROM checkpoints WHERE seq > 25")
    assert any("witness.jsonl line 2: the checkpoint of" in m and "covers seq 30 but the "
               "log ends at seq 25: the log was cut" in m for m in check())
    with tamper(tmp_path) as conn:
        conn.execute("UPDATE events SET hash = ? WHERE seq = 10", ("e" * 64,))
    assert any("line 1: the checkpoint of" in m and "for seq 10, which the log no longer "
               "holds: the log was altered" in m for m in check())
    forged = json.loads(witness.read_text().splitlines()[0])
    forged["payload"]["seq"] = 11
    witness.write_text(json.dumps(forged) + "\n")
    assert any("not a checkpoint signed by the audit key" in m for m in check())


async def test_verify_witness_of_purged_events_needs_the_purge_record(tmp_path: Path) -> None:
    from .test_audit_integrity import purge_by_hand

    key = await build(tmp_path)
    witness = witness_of(tmp_path, 2)  # seq 10
    await purge_by_hand(tmp_path, 10)
    report = verify_log(tmp_path / "audit.db", public_key=key,
                        checkpoint_file=tmp_path / CHECKPOINT_FILE, witnesses=[witness])
    assert report.ok, report.problems
    with tamper(tmp_path) as conn:
        conn.execute("DELETE FROM events WHERE type = 'events_purged' OR seq <= 12")
    report = verify_log(tmp_path / "audit.db", public_key=key, checkpoint_file=None,
                        witnesses=[witness])
    assert any("seq 10 (checkpoint of" in p.message and "no signed purge record covers it"
               in p.message for p in report.problems)


def test_unsealed_events_are_counted(tmp_path: Path) -> None:
    key = asyncio.run(build(tmp_path))

    async def more() -> None:
        audit = await AuditLog.open(tmp_path)
        try:
            for _ in range(3):
                await audit.append("tick", now=FakeClock()())
        finally:
            await audit.close()
    asyncio.run(more())
    report = verify_log(tmp_path / "audit.db", public_key=key,
                        checkpoint_file=tmp_path / CHECKPOINT_FILE)
    assert report.ok and report.unsealed == 3
    assert report.summary().endswith("3 events after the newest checkpoint")
    assert report.as_dict()["unsealed"] == 3
    assert load_or_create_signing_key(tmp_path)
