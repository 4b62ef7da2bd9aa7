"""Every process that appends seals what it appended: the admin commands
write a signed checkpoint before they exit, so rows cut from the end of the
log afterwards are caught by `audit verify` and refused by the broker.

The attack of issue 9 is reproduced here on a real sqlite file: the broker
stopped, `audit erase`, the delete trigger dropped, the `subject_erased` row
deleted, the trigger restored."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import asyncssh
import pytest

from broker.audit.checkpoints import (
    CHECKPOINT_FILE,
    CHECKPOINT_LOCATION,
    Checkpointer,
    checkpoint_path,
)
from broker.audit.schema import NO_DELETE_TRIGGER
from broker.audit.signing import load_or_create_signing_key
from broker.audit.store import AuditLog
from broker.audit.verify import verify_log
from broker.audit_cli.integrity import EXIT_NOT_INTACT
from broker.cli import main
from broker.errors import AuditError
from tests.broker.helpers import raw

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "dev-11111111-0000-4000-8000-000000000001"


async def broker_run(data: Path, *, alias: str = "Laptop") -> None:
    """What a broker's run leaves: a device, a session, checkpoints from start to stop."""
    audit = await AuditLog.open(data)
    cp = Checkpointer(audit, data)
    try:
        await cp.start()
        now = dt.datetime.now(dt.UTC)
        await audit.append("agent_connected", now=now, subject=DEVICE, body={"shared": []},
                           personal={"alias": alias, "ip": "192.0.2.7"})
        await audit.append("session_started", now=now, session="s-1", actor="alice",
                           subject=DEVICE, body={"granted": ["view"]})
        await audit.append("session_ended", now=now, session="s-1", actor="alice",
                           subject=DEVICE, body={"reason": "engineer_left"})
    finally:
        await cp.stop()
        await audit.close()


def newest_checkpoint_seq(data: Path) -> int:
    last = checkpoint_path(data).read_text().splitlines()[-1]
    return int(json.loads(last)["payload"]["seq"])


def newest_event_seq(data: Path) -> int:
    conn = raw(data)
    try:
        return int(conn.execute("SELECT max(seq) FROM events").fetchone()[0])
    finally:
        conn.close()


def test_cut_erasure_is_detected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    asyncio.run(broker_run(data))
    assert main(["audit", "erase", "--subject", "laptop", "--yes",
                 "--data-dir", str(data)]) == 0
    erased = newest_event_seq(data)
    capsys.readouterr()
    # The attack: someone with the file removes the proof of the erasure.
    conn = raw(data)
    try:
        (kind,) = conn.execute("SELECT type FROM events WHERE seq = ?", (erased,)).fetchone()
        assert kind == "subject_erased"
        conn.execute("DROP TRIGGER events_no_delete")
        conn.execute("DELETE FROM events WHERE seq = ?", (erased,))
        conn.execute(NO_DELETE_TRIGGER)
    finally:
        conn.close()

    assert main(["audit", "verify", "--data-dir", str(data)]) == EXIT_NOT_INTACT
    out = capsys.readouterr().out
    assert re.search(rf"log ends at seq {erased - 1} but checkpoint of .* covers seq "
                     rf"{erased}: events were deleted from the end", out), out
    assert f"first bad seq {erased}" in out

    async def restart() -> None:
        audit = await AuditLog.open(data)
        try:
            # (verify recorded its run as the next seq, so that event differs now)
            with pytest.raises(AuditError, match=r"deleted from the end|the log was changed"):
                await Checkpointer(audit, data).start()
        finally:
            await audit.close()
    asyncio.run(restart())


def test_every_admin_command_seals_what_it_appended(tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(broker_run(data))
    key = asyncssh.generate_private_key("ssh-ed25519")
    pub = tmp_path / "bob.pub"
    pub.write_bytes(key.export_public_key("openssh"))
    commands = [
        ["audit", "list"],
        ["audit", "show", "s-1"],
        ["audit", "export", "--output", str(tmp_path / "log.jsonl")],
        ["audit", "export", "--subject", "laptop", "--output", str(tmp_path / "dsar.json")],
        ["audit", "erase", "--subject", "laptop", "--yes"],
        ["audit", "erase", "--subject", "nobody", "--yes"],  # a lookup, recorded
        ["audit", "purge"],
        ["audit", "verify"],
        ["engineer", "add", "bob", "--key", str(pub)],
        ["engineer", "remove", "bob"],
    ]
    for argv in commands:
        before = newest_event_seq(data)
        main([*argv, "--data-dir", str(data)])
        after = newest_event_seq(data)
        assert after > before, argv  # it appended ...
        assert newest_checkpoint_seq(data) == after, argv  # ... and sealed it
    report = verify_log(data / "audit.db", public_key=load_or_create_signing_key(data).verify_key,
                        checkpoint_file=data / CHECKPOINT_FILE)
    assert report.ok, report.problems
    assert report.unsealed == 0


def test_admin_commands_open_the_log_only_through_open_log() -> None:
    """Sealing is structural: no command opens the log any other way."""
    sources = [*sorted((ROOT / "broker" / "audit_cli").glob("*.py")), ROOT / "broker" / "cli.py"]
    offenders = [p.name for p in sources
                 if "AuditLog.open(" in p.read_text() and p.name != "common.py"]
    assert offenders == []


def test_commands_seal_into_the_brokers_checkpoint_file(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "offsite" / "cp.jsonl"
    elsewhere.parent.mkdir()

    async def run_elsewhere() -> None:
        audit = await AuditLog.open(data)
        cp = Checkpointer(audit, data, checkpoint_file=elsewhere)
        try:
            await cp.start()
            await audit.append("tick", now=dt.datetime.now(dt.UTC))
        finally:
            await cp.stop()
            await audit.close()

    asyncio.run(run_elsewhere())
    assert (data / CHECKPOINT_LOCATION).read_text().strip() == str(elsewhere)
    assert main(["audit", "list", "--data-dir", str(data)]) == 0
    assert not (data / CHECKPOINT_FILE).exists()
    assert newest_checkpoint_seq(data) == newest_event_seq(data)
    assert main(["audit", "verify", "--data-dir", str(data)]) == 0


_CLI_LOOP = """
import asyncio, sys
from pathlib import Path
from broker.audit_cli.common import log_admin_action
async def main() -> None:
    for n in range(int(sys.argv[2])):
        await log_admin_action(Path(sys.argv[1]), "audit_read", {"n": n, "by": sys.argv[3]})
asyncio.run(main())
"""


async def test_cli_and_broker_checkpoint_concurrently(tmp_path: Path) -> None:
    """Admin commands in other processes and a running broker's checkpointer
    seal the same log at once: one chain, the file and the table agreeing."""
    audit = await AuditLog.open(tmp_path)
    cp = Checkpointer(audit, tmp_path, every_events=2, poll=0.01)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        await cp.start()
        procs = [subprocess.Popen([sys.executable, "-c", _CLI_LOOP, str(tmp_path), "8",
                                   f"p{n}"], cwd=ROOT, stderr=subprocess.PIPE)
                 for n in range(3)]
        n = 0
        while any(p.poll() is None for p in procs):
            n += 1
            await audit.append("tick", now=dt.datetime.now(dt.UTC), body={"n": n})
            if n % 5 == 0:
                await cp.checkpoint()
            await asyncio.sleep(0.005)
        for proc in procs:
            _, err = proc.communicate()
            assert proc.returncode == 0, err.decode()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        await cp.stop()
        await audit.close()
    report = verify_log(tmp_path / "audit.db",
                        public_key=load_or_create_signing_key(tmp_path).verify_key,
                        checkpoint_file=tmp_path / CHECKPOINT_FILE)
    assert report.ok, report.problems
    conn = sqlite3.connect(tmp_path / "audit.db")
    try:
        rows = [r[0] for r in conn.execute("SELECT record FROM checkpoints ORDER BY id")]
        by_cli = conn.execute("SELECT count(*) FROM events WHERE type = 'audit_read'").fetchone()
    finally:
        conn.close()
    assert rows == (tmp_path / CHECKPOINT_FILE).read_text().splitlines()
    assert by_cli == (24,)
    # Each of the 24 admin appends was sealed by its own process, besides the broker's.
    assert report.checkpoints >= 24 + 2
